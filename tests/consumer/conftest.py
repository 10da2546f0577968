"""Fixtures for consumer tests: the real `simic-consumer` process, real sockets, real files."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

WAIT_S = 60.0
"""Hang guard for waiting on a signal from the daemon (not a timing assertion)."""


def consumer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "simic.consumer", *args]


class Daemon:
    """A running `simic-consumer run` subprocess whose output lines can be awaited."""

    def __init__(self, endpoint: str, log_dir: Path, *extra: str) -> None:
        self.log_dir = log_dir
        self.proc = subprocess.Popen(
            consumer_command("run", "--bind", endpoint, "--log-dir", str(log_dir), *extra),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        line = self.wait_for("listening on")
        self.endpoint = line.rsplit("listening on ", 1)[1].strip()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, text: str, timeout: float = WAIT_S) -> str:
        """Block until a line containing ``text`` is printed (the daemon's own signal)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r} from the consumer; output so far:\n{''.join(self.output)}") from None
            if not line:
                raise AssertionError(f"consumer exited before {text!r}:\n{''.join(self.output)}")
            if text in line:
                return line

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=WAIT_S)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=WAIT_S)


@pytest.fixture
def ipc_endpoint():
    """A short ipc endpoint in a private temporary directory (socket paths are limited to ~107 bytes)."""
    directory = tempfile.mkdtemp(prefix="simic-t-", dir="/tmp")
    yield f"ipc://{directory}/c.ipc"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemons():
    """Start daemons with ``daemons(endpoint, log_dir, *args)``; all are stopped at the end."""
    started: list[Daemon] = []

    def start(endpoint: str, log_dir: Path, *extra: str) -> Daemon:
        daemon = Daemon(endpoint, log_dir, *extra)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.kill()


class Cli:
    """Runs `simic-consumer` subcommands as subprocesses."""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(consumer_command(*args), capture_output=True, text=True, timeout=WAIT_S)
        if check and result.returncode != 0:
            raise AssertionError(f"simic-consumer {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def inspect_json(self, log: Path) -> dict:
        return json.loads(self.run("inspect", str(log), "--json").stdout)

    def replay_json(self, log: Path, *extra: str) -> tuple[list[dict], dict]:
        lines = [json.loads(line) for line in self.run("replay", str(log), "--json", *extra).stdout.splitlines()]
        alerts = [line for line in lines if line["type"] == "alert"]
        summary = [line for line in lines if line["type"] == "summary"]
        assert len(summary) == 1 and lines[-1]["type"] == "summary"
        return alerts, summary[0]


@pytest.fixture
def cli() -> Cli:
    return Cli()
