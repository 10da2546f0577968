"""One daemon per endpoint: two real `simic-consumer run` processes on one endpoint, stale sockets, strangers."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from simic.producer import Emitter

from ..conftest import Cli


def emit_run(endpoint: str, run_id: str, steps: int = 20) -> int:
    """A short run into ``endpoint``; returns the events produced."""
    with Emitter(endpoint, run_id=run_id) as emitter:
        for step in range(steps):
            emitter.emit("step_timing", step=step, phases_ms={"rollout": 1.0})
            emitter.flush()
    assert emitter.stats.dropped == 0
    return emitter.stats.produced


def refused(cli: Cli, endpoint: str, log_dir: Path, *extra: str) -> str:
    """Start a second daemon that must be refused; returns its error output."""
    result = cli.run("run", "--bind", endpoint, "--log-dir", str(log_dir), *extra, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not log_dir.exists()  # refused before anything was created
    return result.stderr


class TestOneDaemonPerEndpoint:
    def test_a_second_daemon_on_a_live_ipc_endpoint_is_refused_and_the_first_keeps_receiving(self, tmp_path, ipc_endpoint, daemons, cli):
        """The second daemon exits 1 naming the endpoint and the first daemon's pid; the first then receives every event
        of a run sent to that endpoint."""
        first = daemons(ipc_endpoint, tmp_path / "first")
        error = refused(cli, ipc_endpoint, tmp_path / "second")
        assert f"endpoint {ipc_endpoint} is in use by process {first.proc.pid} (" in error
        assert "simic.consumer run" in error and "one daemon per endpoint" in error
        produced = emit_run(ipc_endpoint, "after-refusal")
        first.wait_for("ended (ok)")
        assert first.stop() == 0
        (session,) = cli.inspect_json(tmp_path / "first")["runs"]["after-refusal"]
        assert session["received"] == produced and session["lost"] == 0

    def test_a_live_alerts_endpoint_is_refused_naming_its_holder(self, tmp_path, ipc_endpoint, daemons, cli):
        """Two daemons on different event endpoints but one alerts endpoint: the second is refused, naming the alerts
        endpoint and the first daemon's pid."""
        directory = ipc_endpoint[: -len("/c.ipc")]
        alerts = f"{directory}/shared-alerts.ipc"
        first = daemons(f"{directory}/a.ipc", tmp_path / "first", "--alerts-bind", alerts)
        error = refused(cli, f"{directory}/b.ipc", tmp_path / "second", "--alerts-bind", alerts)
        assert f"alerts endpoint {alerts} is in use by process {first.proc.pid}" in error

    def test_a_second_daemon_on_a_live_tcp_port_is_refused_naming_the_first(self, tmp_path, daemons, cli):
        """On loopback TCP the second daemon is refused too, naming the first daemon's pid found through /proc."""
        first = daemons("tcp://127.0.0.1:*", tmp_path / "first")
        error = refused(cli, first.endpoint, tmp_path / "second", "--alerts-bind", "none")
        assert f"endpoint {first.endpoint} is in use by process {first.proc.pid} (" in error
        produced = emit_run(first.endpoint, "tcp-after-refusal")
        first.wait_for("ended (ok)")
        assert first.stop() == 0
        (session,) = cli.inspect_json(tmp_path / "first")["runs"]["tcp-after-refusal"]
        assert session["received"] == produced

    def test_the_stale_socket_of_a_killed_daemon_is_reclaimed(self, tmp_path, ipc_endpoint, daemons, cli):
        """A daemon killed with SIGKILL leaves its socket and lock files; the next daemon on that endpoint removes the
        stale socket, says whose it was, and receives."""
        killed = daemons(ipc_endpoint, tmp_path / "killed")
        killed.kill()
        path = Path(ipc_endpoint[len("ipc://"):])
        assert stat.S_ISSOCK(path.lstat().st_mode) and path.with_name(path.name + ".lock").exists()
        second = daemons(ipc_endpoint, tmp_path / "second")
        assert any(f"removed the stale socket {path} (left by process {killed.proc.pid}, no longer running)" in line
                   for line in second.output)
        produced = emit_run(ipc_endpoint, "after-reclaim")
        second.wait_for("ended (ok)")
        assert second.stop() == 0
        (session,) = cli.inspect_json(tmp_path / "second")["runs"]["after-reclaim"]
        assert session["received"] == produced

    def test_a_daemon_that_exits_leaves_neither_socket_nor_lock_file(self, tmp_path, ipc_endpoint, daemons):
        """After a SIGTERM shutdown the socket directory holds nothing of the daemon's."""
        daemon = daemons(ipc_endpoint, tmp_path / "logs")
        directory = Path(ipc_endpoint[len("ipc://"):]).parent
        assert {p.name for p in directory.iterdir()} == {"c.ipc", "c.ipc.lock", "c-alerts.ipc", "c-alerts.ipc.lock"}
        assert daemon.stop() == 0
        assert list(directory.iterdir()) == []

    def test_a_listener_that_holds_no_lock_is_refused_too(self, tmp_path, ipc_endpoint, cli):
        """Something else listening on the socket path (an older daemon, another program) is not taken over: the daemon
        is refused, naming the listener's pid."""
        path = ipc_endpoint[len("ipc://"):]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stranger:
            stranger.bind(path)
            stranger.listen()
            error = refused(cli, ipc_endpoint, tmp_path / "logs")
        assert f"endpoint {ipc_endpoint} is in use by process {os.getpid()}" in error and "it holds no lock file" in error

    def test_a_file_at_the_socket_path_is_never_bound_over(self, tmp_path, cli):
        """A regular file where the socket should be is left as it is, and the daemon says why it does not start."""
        target = tmp_path / "notes.txt"
        target.write_text("mine")
        result = cli.run("run", "--bind", f"ipc://{target}", "--log-dir", str(tmp_path / "logs"), check=False)
        assert result.returncode == 1
        assert f"{target} exists and is not a socket" in result.stderr
        assert target.read_text() == "mine"

