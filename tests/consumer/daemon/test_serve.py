"""End to end: a real trainer-side Emitter, the real `simic-consumer` process, the real log."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import msgpack
import zmq

from simic.consumer import ConsumerConfig, replay
from simic.producer import Emitter, EmitterSettings
from simic.schemas import SCHEMA_VERSION, encode_message
from simic.schemas.eventlog import FRAME_MESSAGE, LogReader

from ..conftest import WAIT_S, consumer_command

HEADS = ["slot", "blueprint", "blend", "op", "value"]


def train(emitter: Emitter, steps: int, *, start: int = 0, nan_at: int | None = None) -> None:
    """A few events per step, flushed once per step, like a trainer would."""
    for step in range(start, start + steps):
        emitter.emit("step_timing", step=step, phases_ms={"rollout": 10.0, "update": 5.0})
        total = float("nan") if step == nan_at else 1.5
        emitter.emit("head_grad_norms", step=step, norms={head: 0.5 for head in HEADS}, total=total)
        emitter.emit("ppo_update", step=step, approx_kl=0.01, entropy={"slot": 1.0})
        emitter.flush()


class TestRunRecordReplay:
    def test_every_event_is_logged_and_replay_gives_the_live_alerts(self, tmp_path, ipc_endpoint, daemons, cli):
        """N events in -> N events in the log -> the same N and the same alerts out of replay."""
        log_dir = tmp_path / "logs"
        daemon = daemons(ipc_endpoint, log_dir)
        with Emitter(daemon.endpoint, run_id="e2e", heads=HEADS) as emitter:
            train(emitter, 200, nan_at=120)
        daemon.wait_for("ended (ok)")
        assert daemon.stop() == 0
        assert any("stopped:" in line for line in daemon.output)

        produced = emitter.stats.produced
        assert emitter.stats.dropped == 0
        summary = cli.inspect_json(log_dir)
        assert summary["events"] == produced
        assert summary["lost"] == 0
        (session,) = summary["runs"]["e2e"]
        assert session["status"] == "ok" and session["received"] == produced
        assert session["events_by_kind"]["head_grad_norms"] == 200

        live = [json.loads(line) for line in (log_dir / "alerts.jsonl").read_text().splitlines()]
        replayed, replay_summary = cli.replay_json(log_dir)
        assert [a["rule"] for a in live] == ["non_finite", "non_finite"]
        assert live[0]["step"] == 120 and live[1]["cleared"] is True
        assert replayed == live
        assert replay_summary["events"] == produced

    def test_alerts_carry_the_time_their_evidence_arrived_live_and_in_replay(self, tmp_path, ipc_endpoint, daemons, cli):
        """received_at is the consumer's wall clock when the message that fired the alert arrived: between
        the moment before sending and the moment the alert was seen, and replay reports the same value
        from the log (not the time of the replay)."""
        log_dir = tmp_path / "logs"
        daemon = daemons(ipc_endpoint, log_dir)
        with Emitter(daemon.endpoint, run_id="received", heads=HEADS) as emitter:
            train(emitter, 5)
            before = time.time()
            train(emitter, 1, start=5, nan_at=5)
            daemon.wait_for("[CRITICAL] non_finite")
            after = time.time()
            train(emitter, 5, start=6)
        daemon.wait_for("ended (ok)")
        assert daemon.stop() == 0
        live = [json.loads(line) for line in (log_dir / "alerts.jsonl").read_text().splitlines()]
        fired = live[0]
        assert fired["rule"] == "non_finite" and fired["step"] == 5 and not fired["cleared"]
        assert before <= fired["received_at"] <= after
        assert all(a["received_at"] is not None for a in live)
        replayed, _ = cli.replay_json(log_dir)
        assert [a["received_at"] for a in replayed] == [a["received_at"] for a in live]
        assert replayed == live

    def test_tcp_loopback_with_a_port_chosen_by_the_system(self, tmp_path, daemons, cli):
        """Binding tcp://127.0.0.1:* prints the real port, and producers reach it."""
        daemon = daemons("tcp://127.0.0.1:*", tmp_path / "logs")
        assert daemon.endpoint.startswith("tcp://127.0.0.1:") and not daemon.endpoint.endswith("*")
        with Emitter(daemon.endpoint, run_id="tcp") as emitter:
            train(emitter, 10)
        daemon.wait_for("ended (ok)")
        assert daemon.stop(signal.SIGINT) == 0
        assert cli.inspect_json(tmp_path / "logs")["events"] == emitter.stats.produced


class TestLossAccounting:
    def test_consumer_killed_and_restarted_loss_equals_the_counted_gaps(self, tmp_path, ipc_endpoint, daemons, cli):
        """SIGKILL mid-stream, restart on the same endpoint and log: produced = logged + lost, exactly."""
        log_dir = tmp_path / "logs"
        first = daemons(ipc_endpoint, log_dir)
        emitter = Emitter(first.endpoint, run_id="restart", settings=EmitterSettings(send_hwm=50))
        train(emitter, 100)
        first.kill()  # SIGKILL: whatever it had not written is gone
        train(emitter, 300, start=100)  # consumer down: up to send_hwm messages queue, the rest are dropped
        second = daemons(ipc_endpoint, log_dir)
        train(emitter, 100, start=400)
        emitter.close()
        second.wait_for("ended (ok)")
        assert second.stop() == 0

        stats = emitter.stats
        assert stats.dropped > 0, "the outage should have overflowed the send queue"
        summary = cli.inspect_json(log_dir)
        (session,) = summary["runs"]["restart"]
        logged = sum(len(msgpack.unpackb(frame.payload)[4]) for frame in LogReader(log_dir) if frame.type == FRAME_MESSAGE)
        assert session["received"] == logged
        assert stats.produced == logged + session["lost"]
        assert session["dropped_by_producer"] == stats.dropped
        assert session["status"] == "ok"
        assert all(p["kind"] == "torn_tail" for p in summary["log_problems"])
        # The restarted daemon caught up on the log, so its own live counts are the whole log's.
        ended = next(line for line in second.output if "ended (ok)" in line)
        assert f"received {logged}, lost {session['lost']} (dropped by producer {stats.dropped})" in ended

    def test_restarted_daemon_continues_its_state_exactly(self, tmp_path, ipc_endpoint, daemons):
        """After SIGKILL and restart, the checkpointed analysis state equals an uninterrupted replay of the log."""
        log_dir = tmp_path / "logs"
        first = daemons(ipc_endpoint, log_dir)
        emitter = Emitter(first.endpoint, run_id="ema")
        rng = random.Random(1)

        def updates(start: int, count: int) -> None:
            for step in range(start, start + count):
                norms = {head: rng.uniform(0.5, 1.5) for head in HEADS}
                emitter.emit("head_grad_norms", step=step, norms=norms, total=sum(norms.values()), stage="pre_clip")
                emitter.emit("step_timing", step=step, phases_ms={"update": rng.uniform(5, 6)})
                emitter.flush()

        updates(0, 60)
        emitter.emit("lstm_health", step=59, h_norm=float("nan"))
        emitter.flush()
        first.wait_for("non_finite run=ema")  # the first daemon has processed everything up to here
        first.kill()
        second = daemons(ipc_endpoint, log_dir)
        updates(60, 60)
        emitter.close()
        second.wait_for("ended (ok)")
        assert second.stop() == 0

        checkpoint = json.loads((log_dir / "consumer-state.json").read_text())
        replayed = asyncio.run(replay([log_dir], ConsumerConfig()))
        assert checkpoint["stages"] == json.loads(json.dumps(replayed.state))
        (producer,) = checkpoint["stages"]["accounting"]["producers"]
        assert producer["received"] + producer["lost"] == emitter.stats.produced

    def test_a_daemon_that_only_caught_up_checkpoints_the_end_of_the_log(self, tmp_path, ipc_endpoint, daemons):
        """A daemon that finds no checkpoint (lost or damaged) catches up on the whole log; stopped
        before a new frame arrives, its checkpoint covers the log it read, so the next start does not
        read it (and count every event) a second time."""
        log_dir = tmp_path / "logs"
        first = daemons(ipc_endpoint, log_dir)
        emitter = Emitter(first.endpoint, run_id="twice", settings=EmitterSettings(exit_hooks=False))
        train(emitter, 50)
        emitter.close()
        first.wait_for("ended (ok)")
        assert first.stop() == 0
        (log_dir / "consumer-state.json").unlink()  # lost: the next daemon rebuilds its state from the whole log
        second = daemons(ipc_endpoint, log_dir)  # catches up, receives nothing
        assert second.stop() == 0
        third = daemons(ipc_endpoint, log_dir)
        assert third.stop() == 0
        checkpoint = json.loads((log_dir / "consumer-state.json").read_text())
        (producer,) = checkpoint["stages"]["accounting"]["producers"]
        assert (producer["received"], producer["duplicates"]) == (emitter.stats.sent, 0)


class TestHostileInput:
    def test_garbage_is_counted_by_reason_and_good_events_around_it_are_kept(self, tmp_path, ipc_endpoint, daemons, cli):
        """Malformed, unversioned, unknown and invalid input is refused and counted; nothing good is lost."""
        log_dir = tmp_path / "logs"
        daemon = daemons(ipc_endpoint, log_dir, "--dead-letter")
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 5000)
        sock.connect(daemon.endpoint)
        seq = 0

        def good(step: int) -> bytes:
            nonlocal seq
            row = [2, seq, 1000 + step, step, {"rollout": 1.0}]
            seq += 1
            return encode_message("hostile", 0, 7, [row])

        garbage = [
            b"\xc1\xc1\xc1",  # never-used msgpack byte
            b"not msgpack at all",
            msgpack.packb({"a": 1}),  # not an envelope
            msgpack.packb([SCHEMA_VERSION + 1, "r", 0, 1, []]),  # from the future
            msgpack.packb([SCHEMA_VERSION, "r", 0, 1, [[250, 0, 0, 0]]]),  # unknown kind (event-level)
            msgpack.packb([SCHEMA_VERSION, "r", 0, 1, [[2, 0, 0, 0, {"rollout": "fast"}]]]),  # invalid field
            msgpack.packb([SCHEMA_VERSION, "r", 0, 1, [[2, 0, 0, 0, {"x" * 5000: 1.0}]]]),  # name too long
            b"\x91" * 100_000,  # nesting far too deep
        ]
        for index, bad in enumerate(garbage):
            sock.send(good(index))
            sock.send(bad)
        # One message mixing a good and a bad event: only the bad one is refused.
        sock.send(encode_message("hostile", 0, 7, [[2, seq, 1, 99, {"rollout": 2.0}], [2, seq + 1, 1, 99, {"rollout": None}]]))
        seq += 2
        sock.send(encode_message("hostile", 0, 7, [[8, seq, 1, 100, "ok", seq]]))  # run_end
        daemon.wait_for("ended (ok)")
        sock.close()
        ctx.term()
        assert daemon.stop() == 0

        summary = cli.inspect_json(log_dir)
        assert summary["rejected_messages"] == {"bad_envelope": 1, "malformed_msgpack": 3, "unsupported_version": 1}
        assert summary["rejected_events"] == {"invalid_event": 3, "unknown_kind": 1}
        (session,) = summary["runs"]["hostile"]
        assert session["received"] == len(garbage) + 2  # the good ones, the good half, run_end
        assert session["lost"] == 1  # the refused half of the mixed message is a counted gap
        dead = cli.inspect_json(log_dir / "dead-letter")
        assert dead["messages"] == len(garbage) + 1


class TestDaemonLifecycle:
    def test_public_tcp_bind_is_refused_with_an_explanation(self, tmp_path, cli):
        """Binding beyond loopback without keys fails fast, says why and gives both ways out:
        CurveZMQ keys (the commands) or the explicit opt-out."""
        result = cli.run("run", "--bind", "tcp://0.0.0.0:5599", "--log-dir", str(tmp_path), check=False)
        assert result.returncode == 2
        assert "refusing to bind tcp://0.0.0.0:5599" in result.stderr and "--insecure-bind" in result.stderr
        assert "simic-consumer keygen" in result.stderr and "--curve-secret" in result.stderr and "--curve-allow" in result.stderr
        assert list(tmp_path.iterdir()) == []  # nothing was started

    def test_unknown_config_key_is_an_error_naming_the_key(self, tmp_path, cli):
        """A typo in the config file stops the daemon before it starts, naming the key."""
        config = tmp_path / "simic.toml"
        config.write_text("[rules.non_finite]\nseverty = 'warning'\n")
        result = cli.run("run", "--config", str(config), "--log-dir", str(tmp_path), check=False)
        assert result.returncode == 2
        assert "rules.non_finite.severty: unknown key" in result.stderr

    def test_defaults_need_no_flags(self, tmp_path):
        """With no flags the daemon binds a private ipc socket and logs under the current directory."""
        env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "run"))
        env.pop("SIMIC_ENDPOINT", None)
        proc = subprocess.Popen(consumer_command("run"), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            lines = [proc.stdout.readline().strip() for _ in range(4)]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=WAIT_S)
        assert lines == [
            f"simic-consumer: pid {proc.pid}",
            f"simic-consumer: listening on ipc://{tmp_path}/run/simic/consumer.ipc",
            f"simic-consumer: publishing alerts on ipc://{tmp_path}/run/simic/consumer-alerts.ipc",
            f"simic-consumer: logging to {tmp_path}/simic-logs",
        ]
        assert oct((tmp_path / "run" / "simic").stat().st_mode & 0o777) == "0o700"
        assert code == 0

    def test_exit_with_a_pid_that_is_not_running_refuses_to_start(self, tmp_path, ipc_endpoint, cli):
        """--exit-with-pid naming a process that has already exited: a clear error at once, nothing bound or
        created; the directory given to --remove-dir-at-exit is removed all the same."""
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait(timeout=WAIT_S)
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        result = cli.run("run", "--bind", ipc_endpoint, "--log-dir", str(tmp_path / "logs"), "--exit-with-pid", str(gone.pid),
                         "--remove-dir-at-exit", str(private), check=False)
        assert result.returncode == 1
        assert f"--exit-with-pid {gone.pid}: process {gone.pid} is not running; not starting" in result.stderr
        assert not (tmp_path / "logs").exists() and not private.exists()

    def test_remove_dir_at_exit_refuses_a_directory_with_files(self, tmp_path, cli):
        """Only a directory of sockets is removed at exit: one holding a file is refused before anything starts."""
        (tmp_path / "keep.txt").write_text("mine")
        result = cli.run("run", "--log-dir", str(tmp_path / "logs"), "--remove-dir-at-exit", str(tmp_path), check=False)
        assert result.returncode == 2 and "'keep.txt'" in result.stderr
        assert (tmp_path / "keep.txt").exists()

    def test_sigterm_with_no_traffic_exits_zero(self, tmp_path, ipc_endpoint, daemons):
        """An idle daemon stops cleanly on SIGTERM and reports zero traffic."""
        daemon = daemons(ipc_endpoint, tmp_path / "logs")
        assert daemon.stop() == 0
        assert any("stopped: 0 messages, 0 events" in line for line in daemon.output)


class TestImports:
    def test_consumer_never_imports_torch(self):
        """`import simic.consumer` (and the daemon, CLI and replay modules) leave torch unloaded."""
        code = (
            "import sys, simic.consumer, simic.consumer.cli, simic.consumer.daemon.serve, simic.consumer.offline.replay, simic.schemas;"
            "import simic.consumer.sources.zmq_pull;"
            "assert 'torch' not in sys.modules, 'torch was imported'"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT_S)


class TestAlertsReachTheTrainer:
    def test_poll_alerts_delivers_this_runs_alerts_without_blocking(self, tmp_path, ipc_endpoint, daemons):
        """A trainer polling its Emitter receives the consumer's alerts about its own run, and only those."""
        daemon = daemons(ipc_endpoint, tmp_path / "logs")
        daemon.wait_for("publishing alerts on")
        mine = Emitter(daemon.endpoint, run_id="mine")
        other = Emitter(daemon.endpoint, run_id="other")
        assert mine.poll_alerts() == []  # nothing yet, and it returns at once
        received = []
        step = 0
        # The subscription becomes live asynchronously (ZeroMQ's slow joiner): keep training, one
        # NaN per step, until the first alert arrives; the loop bound is a hang guard.
        while not received and step < 5000:
            for emitter in (mine, other):
                emitter.emit("ppo_update", step=step, approx_kl=float("nan") if step % 2 == 0 else 0.01)
                emitter.flush()
            daemon_alerts = mine.poll_alerts()
            received.extend(daemon_alerts)
            if not received:
                daemon.wait_for("non_finite run=mine", timeout=WAIT_S)
            step += 1
        mine.close()
        other.close()
        assert received, "no alert reached the trainer"
        assert {a.run_id for a in received} == {"mine"}
        assert received[0].rule == "non_finite"
