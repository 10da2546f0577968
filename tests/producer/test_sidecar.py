"""spawn_consumer and Emitter(spawn_consumer=...): a real `simic-consumer` process started by the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simic.producer import Emitter, NullEmitter, spawn_consumer
from simic.producer.sidecar import is_listening

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
