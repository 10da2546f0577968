"""The pieces a sidecar uses to die with its trainer: the process watch, the exit note, the private directory."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from simic.consumer.daemon.lifecycle import ProcessGone, ProcessWatch, check_private_dir, exit_note, parse_note, remove_private_dir

WAIT_S = 60.0
"""Hang guard (not a timing assertion)."""


@pytest.fixture(params=["pidfd", "polled"])
def how(request, monkeypatch):
    """The watch with a pidfd, and with the poll used where the kernel has none."""
    if request.param == "pidfd" and not hasattr(os, "pidfd_open"):
        pytest.skip("no os.pidfd_open here")
    if request.param == "polled":
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    return request.param


class TestProcessWatch:
    async def test_wait_returns_when_the_process_exits(self, how):
        """A live child is alive; once it is killed (and still a zombie, not reaped) wait() returns."""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        try:
            watch = ProcessWatch(child.pid, poll_interval_s=0.05)
            assert watch.how.startswith("pidfd" if how == "pidfd" else "polling") and watch.alive()
            child.kill()
            await asyncio.wait_for(watch.wait(), WAIT_S)  # before child.wait(): a zombie counts as exited
            assert not watch.alive()
            watch.close()
        finally:
            child.kill()
            child.wait()

    def test_a_process_that_is_gone_or_a_zombie_is_refused(self, how):
        """A reaped pid and an unreaped zombie are both 'not running'."""
        zombie = subprocess.Popen([sys.executable, "-c", "pass"])
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
        with pytest.raises(ProcessGone, match=f"process {zombie.pid} is not running"):
            ProcessWatch(zombie.pid)
        zombie.wait()
        with pytest.raises(ProcessGone):
            ProcessWatch(zombie.pid)


class TestExitNote:
    def test_round_trip_and_anything_else_is_no_note(self):
        assert parse_note(exit_note(42, "h")) == ("h", 42)
        for junk in (b"", b"\xc1", b"\x90", exit_note(0, "h"), b"\x81\xa6exited\x81\xa3pid\x01", b"x" * 5000):
            assert parse_note(junk) is None


class TestPrivateDir:
    def test_a_directory_of_sockets_is_removed(self, tmp_path):
        private = tmp_path / "p"
        private.mkdir(mode=0o700)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(private / "consumer.ipc"))
        assert check_private_dir(private) is None
        assert remove_private_dir(private) and not private.exists()
        assert remove_private_dir(private)  # already gone: fine

    def test_a_directory_holding_a_file_is_left_alone(self, tmp_path):
        (tmp_path / "notes.txt").write_text("mine")
        assert "notes.txt" in check_private_dir(tmp_path)
        assert not remove_private_dir(tmp_path) and (tmp_path / "notes.txt").exists()
        assert "not a directory" in check_private_dir(tmp_path / "notes.txt")
