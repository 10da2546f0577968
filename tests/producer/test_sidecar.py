"""spawn_consumer and Emitter(spawn_consumer=...): a real `simic-consumer` process started by the trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from simic.producer import Emitter, NullEmitter, spawn_consumer
from simic.producer.sidecar import is_listening

from .dying_trainer import SIDECAR_WAIT_S

WAIT_S = 60.0
"""Hang guard for subprocesses (not a timing assertion)."""


def inspect(log_dir: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(log_dir), "--json"],
                            capture_output=True, text=True, timeout=WAIT_S, check=True)
    return json.loads(result.stdout)


class TestSpawnConsumer:
    def test_starts_a_private_consumer_and_stops_it_on_close(self, tmp_path):
        """Without an endpoint it starts a consumer on a private ipc socket, and close() stops it with exit 0."""
        sidecar = spawn_consumer(log_dir=tmp_path / "logs")
        try:
            assert sidecar.spawned and sidecar.pid is not None and sidecar.returncode is None
            assert sidecar.endpoint.startswith("ipc://") and is_listening(sidecar.endpoint)
            assert sidecar.alerts_endpoint and sidecar.alerts_endpoint.endswith("consumer-alerts.ipc")
            assert any("listening on" in line for line in sidecar.lines)
            socket_dir = Path(sidecar.endpoint[len("ipc://"):]).parent
            assert oct(socket_dir.stat().st_mode & 0o777) == "0o700"
        finally:
            code = sidecar.close()
        assert code == 0
        assert not socket_dir.exists()
        assert sidecar.close() is None

    def test_reuses_a_consumer_that_already_listens(self, tmp_path):
        """A second call for the same endpoint starts nothing, and closing it leaves the first consumer running."""
        endpoint = f"ipc://{tmp_path}/c.ipc"
        first = spawn_consumer(endpoint, log_dir=tmp_path / "logs")
        try:
            second = spawn_consumer(endpoint, log_dir=tmp_path / "other")
            assert not second.spawned and second.endpoint == endpoint
            assert second.close() is None
            assert first.returncode is None
            assert not (tmp_path / "other").exists()
        finally:
            assert first.close() == 0

    def test_two_trainers_starting_at_once_share_one_consumer(self, tmp_path):
        """Two spawn_consumer calls for one endpoint at the same moment: one starts the consumer, the other uses it
        (directly, or after its own consumer was refused the endpoint), and nothing else is left running."""
        endpoint = f"ipc://{tmp_path}/c.ipc"
        start = threading.Barrier(2)
        results: dict[str, object] = {}

        def trainer(name: str) -> None:
            start.wait()
            try:
                results[name] = spawn_consumer(endpoint, log_dir=tmp_path / name)
            except Exception as error:  # reported by the assertion below
                results[name] = error

        threads = [threading.Thread(target=trainer, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        sidecars = [results["a"], results["b"]]
        assert all(not isinstance(s, Exception) for s in sidecars), sidecars
        try:
            assert sorted(s.spawned for s in sidecars) == [False, True]
            assert all(s.endpoint == endpoint for s in sidecars) and is_listening(endpoint)
            user = next(s for s in sidecars if not s.spawned)
            assert not (tmp_path / ("a" if user is results["a"] else "b")).exists()
        finally:
            codes = [s.close() for s in sidecars]
        assert sorted(codes, key=str) == [0, None]

    def test_runs_in_its_own_session(self, tmp_path):
        """The consumer is in a session of its own, so a terminal's Ctrl-C reaches the trainer, not the sidecar."""
        with spawn_consumer(log_dir=tmp_path / "logs") as sidecar:
            assert os.getsid(sidecar.pid) != os.getsid(0)

    def test_a_consumer_that_cannot_start_raises_with_its_output(self, tmp_path):
        """A consumer that exits during startup (here: an invalid configuration file) raises RuntimeError with its output."""
        config = tmp_path / "bad.toml"
        config.write_text("[rules.no_such_rule]\nenabled = true\n")
        with pytest.raises(RuntimeError, match="no_such_rule"):
            spawn_consumer(log_dir=tmp_path / "logs", args=["--config", str(config)])

    def test_echo_receives_the_consumer_output(self, tmp_path):
        """Every output line also goes to ``echo``."""
        seen: list[str] = []
        with spawn_consumer(log_dir=tmp_path / "logs", echo=seen.append):
            pass
        assert any("listening on" in line for line in seen) and any("stopped:" in line for line in seen)


class TestEmitterSpawnConsumer:
    def test_events_are_recorded_and_the_sidecar_stops_after_run_end(self, tmp_path):
        """Emitter(None, spawn_consumer=...) sends to its own sidecar; close() stops it once the run's end is logged."""
        log_dir = tmp_path / "logs"
        with Emitter(None, run_id="sidecar-run", heads=["slot"], spawn_consumer={"log_dir": log_dir}) as emitter:
            sidecar = emitter.sidecar
            for step in range(50):
                emitter.emit("step_timing", step=step, phases_ms={"rollout": 2.0})
                emitter.flush()
        assert sidecar.returncode == 0
        assert sidecar.wait_for_line("ended (ok)", timeout_s=0) is not None
        summary = inspect(log_dir)
        (session,) = summary["runs"]["sidecar-run"]
        assert session["status"] == "ok" and session["received"] == emitter.stats.produced and session["lost"] == 0

    def test_from_env_with_spawn_consumer_needs_no_endpoint(self, tmp_path, monkeypatch):
        """from_env(spawn_consumer=...) without SIMIC_ENDPOINT starts a sidecar instead of turning telemetry off."""
        monkeypatch.delenv("SIMIC_ENDPOINT", raising=False)
        assert isinstance(Emitter.from_env(run_id="off"), NullEmitter)
        emitter = Emitter.from_env(run_id="env-run", spawn_consumer={"log_dir": tmp_path / "logs"})
        try:
            assert isinstance(emitter, Emitter) and emitter.sidecar is not None and emitter.sidecar.spawned
        finally:
            emitter.close()
        assert emitter.sidecar.returncode == 0

    def test_a_bad_run_id_starts_no_sidecar(self, tmp_path):
        """Arguments are checked before anything is started."""
        with pytest.raises(ValueError):
            Emitter(None, run_id="", spawn_consumer={"log_dir": tmp_path / "logs"})
        assert not (tmp_path / "logs").exists()

    def test_null_emitter_has_no_sidecar(self):
        """Telemetry off: ``sidecar`` is None, as on an emitter that did not spawn one."""
        assert NullEmitter().sidecar is None


DYING_TRAINER = Path(__file__).with_name("dying_trainer.py")

EXIT_BOUND_S = 10.0
"""Longest a sidecar may take to exit after its trainer died (typically 0.3-0.5 s: 0.2 s for what the
trainer sent to settle, then drain, checkpoint and close); the silent_producer rule alone would need
10 s of silence just to notice."""


def alerts_jsonl(log_dir: Path) -> list[dict]:
    path = log_dir / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def replay_json(log_dir: Path) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "simic.consumer", "replay", str(log_dir), "--json"],
                            capture_output=True, text=True, timeout=WAIT_S, check=True)
    return [record for record in map(json.loads, result.stdout.splitlines()) if record["type"] == "alert"]


def pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def run_dying_trainer(mode: str, log_dir: Path, *, kill: bool = False) -> tuple[dict, dict, dict]:
    """Run dying_trainer.py MODE under its supervisor; SIGKILL the trainer once it has reported when ``kill``.
    Returns the trainer's report, the trainer's exit and the sidecar's exit as the supervisor saw them."""
    # Unbuffered: readline() takes the first line and nothing after it. A buffered one could take the
    # supervisor's next line too, when it came soon enough, and communicate() never sees what is buffered.
    supervisor = subprocess.Popen([sys.executable, str(DYING_TRAINER), "supervise", mode, str(log_dir)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        info = json.loads(supervisor.stdout.readline() or b"{}")
        assert "sidecar_pid" in info, info
        if kill:
            os.kill(info["trainer_pid"], signal.SIGKILL)
        out, err = supervisor.communicate(timeout=WAIT_S + SIDECAR_WAIT_S)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert supervisor.returncode == 0, err.decode()
    trainer_exit, sidecar_exit = map(json.loads, out.decode().splitlines())
    return info, trainer_exit, sidecar_exit


class TestSidecarDiesWithItsTrainer:
    @pytest.mark.parametrize("how", ["os_exit", "sigkill"])
    def test_a_dead_trainer_is_reported_and_its_sidecar_exits_leaving_nothing(self, tmp_path, how):
        """A trainer that dies without a word (``os._exit(1)``, or SIGKILL from outside): its sidecar raises
        producer_exited (alerts.jsonl, and the log: replay gives the same alert), drains, checkpoints and
        exits 0 within EXIT_BOUND_S, and neither its process nor its private socket directory is left."""
        log_dir = tmp_path / "logs"
        mode = "exit" if how == "os_exit" else "wait"
        info, trainer_exit, sidecar_exit = run_dying_trainer(mode, log_dir, kill=how == "sigkill")

        assert trainer_exit["trainer_status"] == (1 if how == "os_exit" else -signal.SIGKILL)
        assert sidecar_exit["sidecar_status"] == 0, sidecar_exit
        assert sidecar_exit["sidecar_after_s"] < EXIT_BOUND_S
        assert pid_is_gone(info["sidecar_pid"])
        assert not Path(info["private_dir"]).exists()
        assert (log_dir / "consumer-state.json").is_file()

        live = alerts_jsonl(log_dir)
        exited = [a for a in live if a["rule"] == "producer_exited"]
        assert len(exited) == 1, live
        (alert,) = exited
        assert alert["severity"] == "critical" and not alert["cleared"]
        assert (alert["run_id"], alert["rank"], alert["session"], alert["step"]) == (info["run_id"], 0, info["session"], 5)
        assert f"pid {info['trainer_pid']}" in alert["message"] and "without ending run" in alert["message"]
        assert alert["message"].endswith("at step 5")
        assert alert["values"]["pid"] == info["trainer_pid"] and alert["values"]["last_step"] == 5
        assert [a["rule"] for a in live] == ["non_finite", "producer_exited"]  # no silent_producer: it was told sooner
        assert replay_json(log_dir) == live  # the exit is in the log: the same alerts, the same received_at

        (session,) = inspect(log_dir)["runs"][info["run_id"]]
        assert session["status"] == "open" and session["pid"] == info["trainer_pid"] and session["lost"] == 0

    def test_a_trainer_that_ended_its_run_and_exited_leaves_no_alert_and_nothing_behind(self, tmp_path):
        """spawn_consumer's trainer closes its emitter (run_end) but never the sidecar, and exits: the sidecar
        sees run_end before the exit, raises no producer_exited, and exits 0 leaving nothing."""
        log_dir = tmp_path / "logs"
        info, trainer_exit, sidecar_exit = run_dying_trainer("forget", log_dir)
        assert trainer_exit["trainer_status"] == 0
        assert sidecar_exit["sidecar_status"] == 0 and sidecar_exit["sidecar_after_s"] < EXIT_BOUND_S
        assert pid_is_gone(info["sidecar_pid"]) and not Path(info["private_dir"]).exists()
        assert [a["rule"] for a in alerts_jsonl(log_dir)] == ["non_finite"]
        assert [a["rule"] for a in replay_json(log_dir)] == ["non_finite"]
        (session,) = inspect(log_dir)["runs"][info["run_id"]]
        assert session["status"] == "ok"

    def test_close_stops_the_sidecar_with_no_alert_and_nothing_left(self, tmp_path):
        """The normal path: spawn, emit, close. Exit 0, no producer_exited, no process, no private directory."""
        log_dir = tmp_path / "logs"
        with Emitter(None, run_id="closed-run", spawn_consumer={"log_dir": log_dir}) as emitter:
            sidecar = emitter.sidecar
            private_dir = Path(sidecar.endpoint[len("ipc://"):]).parent
            assert private_dir.is_dir()
            for step in range(10):
                emitter.emit("step_timing", step=step, phases_ms={"rollout": 2.0})
                emitter.flush()
        assert sidecar.returncode == 0
        assert pid_is_gone(sidecar.pid)
        assert not private_dir.exists()
        assert all(a["rule"] != "producer_exited" for a in alerts_jsonl(log_dir) + replay_json(log_dir))
        assert (log_dir / "consumer-state.json").is_file()

    def test_the_sidecar_prints_its_pid_and_the_pid_it_follows(self, tmp_path):
        """The first startup line names the consumer's own pid and the trainer's (this process)."""
        with spawn_consumer(log_dir=tmp_path / "logs") as sidecar:
            line = sidecar.wait_for_line("simic-consumer: pid ", timeout_s=0)
            assert line is not None and line.startswith(f"simic-consumer: pid {sidecar.pid}, stopping when process {os.getpid()} exits")
