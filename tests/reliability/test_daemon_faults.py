"""The daemon under faults and load: SIGKILL mid-stream, a torn tail, a stalled or swamped daemon,
a full disk, many producers.

Real ``simic-consumer run`` processes (the ``daemons`` fixture) and real producer processes
(``bench/daemon_load.py``'s :class:`ProducerGroup`: forked processes, one ``Emitter`` each, identity
from ``SIMIC_RUN_ID`` / ``RANK``). Producers *settle* before they close: a NaN marker the daemon
alerts on says it has processed everything they sent, so ``run_end`` with their counts arrives and
the accounting can be checked exactly: for every producer, produced == logged + counted lost, and
counted lost == dropped at its high-water mark + lost in transit.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from simic.consumer import load_config, replay
from simic.producer import Emitter, EmitterSettings
from simic.schemas.eventlog import COMPRESSED_SUFFIX, LogReader, segment_paths
from bench.daemon_load import ProducerGroup, RssSampler, log_bytes, logged_events, rss_bound, write_config

from .conftest import WAIT_S, wait_until

# -- helpers ----------------------------------------------------------------------------------------


def wait_lines(daemon, fragments) -> None:
    """Wait until the daemon has printed a line containing each fragment, in any order."""
    pending = set(fragments)
    deadline = time.monotonic() + WAIT_S
    while pending:
        pending = {f for f in pending if not any(f in line for line in daemon.output)}
        if pending:
            left = deadline - time.monotonic()
            assert left > 0, f"no {sorted(pending)} from the consumer; output so far:\n{''.join(daemon.output)}"
            daemon.wait_for("", timeout=left)  # the next line, whatever it says


def overflow_target(log_dir: Path, idle: int, *, queue: int, producers: int) -> int:
    """Events the producers must drop before the load exceeds what the daemon may hold: the memory its
    queues allow over idle (:func:`rss_bound`), in events of the size logged so far, half as much again
    for margin. The faults below last until the producers have dropped that many (their live count)."""
    wait_until(lambda: logged_events(log_dir)[1] > 1000, "traffic in the log")
    events, largest = logged_events(log_dir)[1:]
    bound = rss_bound(idle, queue_messages=queue, receive_hwm=queue, producers=producers, message_bytes=largest)
    return int(1.5 * (bound - idle) / (log_bytes(log_dir) / events))


def drift_updates(state: Path) -> list[int]:
    """Updates each producer's live ``gradient_drift`` EMA has taken in, as the daemon last checkpointed them."""
    if not state.exists():
        return []
    return [run["total"]["update_count"] for run in json.loads(state.read_text())["stages"]["gradient_drift"]["extra"].values()]


def sessions_of(summary: dict) -> dict:
    return {(s["run_id"], s["rank"], s["session"]): s for run in summary["runs"].values() for s in run}


def assert_accounted(results, summary: dict) -> None:
    """Every producer: produced == logged + counted lost, and the loss is where it was counted."""
    sessions = sessions_of(summary)
    for r in results:
        s = sessions[(r.run_id, r.rank, r.session)]
        assert s["status"] == "ok", s
        assert s["received"] + s["lost"] == r.produced, (r, s)
        assert s["dropped_by_producer"] == r.dropped, (r, s)
        assert s["lost"] == r.dropped + s["lost_in_transit"], (r, s)
        assert s["duplicates"] == 0
        assert s["pid"] == r.pid


def settle(daemon, group: ProducerGroup) -> list:
    """Once the producers have finished: wait until the daemon has processed all they sent, let them close."""
    wait_lines(daemon, group.settled())
    group.close()
    results = group.results()
    wait_lines(daemon, [f"run {r.run_id} rank {r.rank} session {r.session} ended (ok)" for r in results])
    return results


def alert_roundtrip(emitter: Emitter, daemon, step: int) -> int:
    """Emit NaN and finite steps until an alert about this run comes back through ``poll_alerts``;
    returns the next step.

    Each pair fires and clears ``non_finite`` (so the condition ends as it began); the console
    lines say the daemon processed them. The subscription becomes live asynchronously (ZeroMQ's slow
    joiner), so the first pairs may publish to nobody.
    """
    first = step
    while True:
        assert step - first < 1000, "no alert reached the producer"
        for approx_kl in (float("nan"), 0.01):
            emitter.emit("ppo_update", step=step, approx_kl=approx_kl)
            emitter.flush()
            wait_lines(daemon, [f"non_finite run={emitter.run_id} rank={emitter.rank} step={step}:"])
            step += 1
        if emitter.poll_alerts():
            return step


def emit_steps(emitter: Emitter, start: int, count: int) -> int:
    for step in range(start, start + count):
        emitter.emit("step_timing", step=step, phases_ms={"rollout": 10.0, "update": 5.0})
        emitter.emit("head_grad_norms", step=step, norms={"slot": 0.5, "op": 0.7}, total=0.86, stage="pre_clip")
        emitter.flush()
    return start + count


def fresh_producer_is_all_logged(daemon, run_id: str) -> Emitter:
    """Recovery: a producer started after the fault, whose events must all be logged (50 messages:
    fewer than the daemon's receive_hwm, so closing at once cannot cut them off)."""
    with Emitter(daemon.endpoint, run_id=run_id, settings=EmitterSettings(exit_hooks=False)) as fresh:
        emit_steps(fresh, 0, 50)
    wait_lines(daemon, [f"run {run_id} rank 0 session {fresh.session} ended (ok)"])
    return fresh


# -- SIGKILL mid-stream and torn tails --------------------------------------------------------------


class TestKillMidStream:
    def run_kills(self, tmp_path, ipc_endpoint, daemons, cli, kills: int, **group_args) -> None:
        """SIGKILL the daemon ``kills`` times while a ProducerGroup emits, each time once it has a
        checkpoint and frames logged after it; restart it on the same endpoint and log."""
        log_dir = tmp_path / "logs"
        config = write_config(tmp_path / "simic.toml", checkpoint_interval_s=0.2)
        state = log_dir / "consumer-state.json"
        daemon = daemons(ipc_endpoint, log_dir, "--config", str(config))
        group = ProducerGroup(daemon.endpoint, **group_args).start()
        restarted = []

        def frames_after_checkpoint() -> bool:
            """The running daemon has checkpointed, and logged more since, in its own segment."""
            if not state.exists():
                return False
            name, offset = json.loads(state.read_text())["log_position"] or ("", 0)
            segments = segment_paths(log_dir)
            return len(segments) == len(restarted) + 1 and name == segments[-1].name and segments[-1].stat().st_size > offset + 16_384

        try:
            group.go()
            for _ in range(kills):
                wait_until(frames_after_checkpoint, "a checkpoint with frames logged after it")
                dropped = group.dropped()
                daemon.kill()  # SIGKILL, mid-stream: the producers keep emitting
                # Down until the producers' queues have overflowed (their own count says so), however slow the machine.
                wait_until(lambda: group.dropped() > dropped, "the producers dropping while the daemon is down")
                name, offset = json.loads(state.read_text())["log_position"]
                after_checkpoint = len(list(LogReader(log_dir / name, start_offset=offset)))
                daemon = daemons(ipc_endpoint, log_dir, "--config", str(config))
                restarted.append(daemon)
                # It resumed from the checkpoint and re-read exactly the whole frames logged after it.
                restored = f"restored state from consumer-state.json, caught up on {after_checkpoint} logged frames"
                assert any(restored in line for line in daemon.output), daemon.output
            # Emitting on until the checkpoint shows every producer's EMA well past its warm-up, however slow the machine.
            wait_until(lambda: len(updates := drift_updates(state)) == len(group.identities) and min(updates) > 100,
                       "a checkpoint with over 100 updates of every producer")
            group.stop()
            results = settle(daemon, group)
        finally:
            group.kill()
        assert daemon.stop() == 0

        assert sum(r.dropped for r in results) > 0, "the outages should have overflowed the producers' queues"
        summary = cli.inspect_json(log_dir)
        assert_accounted(results, summary)
        assert len(segment_paths(log_dir)) == kills + 1  # a restarted daemon never appends to a killed one's segment
        reported = [line for restart in restarted for line in restart.output]
        for problem in summary["log_problems"]:  # a kill mid-write can leave a torn tail: reported at restart, never data
            assert problem["kind"] == "torn_tail"
            # The restart names the segment as it found it, plain; once closed, the restarted daemon compresses it (same
            # plain offsets), so the log may name it with the compressed suffix by now.
            found = problem["path"].removesuffix(COMPRESSED_SUFFIX)
            assert any(f"{found}: torn_tail at offset {problem['offset']}" in line for line in reported), problem
        # The live state (restored from checkpoints, caught up, continued) equals a replay of the log:
        # the EMAs of gradient_drift went on from each checkpoint as if there had been no kill.
        checkpoint = json.loads(state.read_text())
        replayed = json.loads(json.dumps(asyncio.run(replay([log_dir], load_config(config))).state))
        drift = checkpoint["stages"]["gradient_drift"]["extra"]
        assert len(drift) == len(results) and all(run["total"]["update_count"] > 100 for run in drift.values()), drift
        assert checkpoint["stages"] == replayed

    def test_sigkill_while_producers_emit_then_restart(self, tmp_path, ipc_endpoint, daemons, cli):
        """Killed while two producers emit: the restart resumes from the checkpoint (EMAs included),
        and loses only what the producers and the daemon's gaps count: produced == logged + counted lost."""
        # Paced below the daemon's capacity; a small send queue, so the outage overflows it.
        self.run_kills(tmp_path, ipc_endpoint, daemons, cli, 1, identities=[("killed", 0), ("killed", 1)], pace_s=0.001, send_hwm=50)

    def test_three_sigkills_during_a_burst(self, tmp_path, ipc_endpoint, daemons, cli):
        """Killed three times while four producers emit back to back, far above its capacity."""
        self.run_kills(tmp_path, ipc_endpoint, daemons, cli, 3, identities=[("burst", r) for r in range(4)])

    def test_torn_tail_on_the_live_segment_is_reported_and_appended_after(self, tmp_path, ipc_endpoint, daemons, cli):
        """A partial frame at the end of the killed daemon's segment: the restart names it (file, offset,
        length), never reads it as data, and writes on in a new segment; nothing else is lost."""
        log_dir = tmp_path / "logs"
        first = daemons(ipc_endpoint, log_dir)
        emitter = Emitter(first.endpoint, run_id="torn", settings=EmitterSettings(exit_hooks=False))
        step = alert_roundtrip(emitter, first, emit_steps(emitter, 0, 50))
        wait_until(lambda: logged_events(log_dir)[1] == emitter.stats.sent, "every event sent on disk")
        first.kill()
        (live,) = segment_paths(log_dir)
        frames = list(LogReader(live))
        last = frames[-1]
        whole = live.read_bytes()[last.offset:]
        torn_at = live.stat().st_size
        with open(live, "ab") as segment:  # what a kill in the middle of a write leaves
            segment.write(whole[: len(whole) // 2])

        second = daemons(ipc_endpoint, log_dir)
        report = f"{live}: torn_tail at offset {torn_at} ({len(whole) // 2} bytes)"
        assert any(report in line and "not read as data" in line for line in second.output), second.output
        emit_steps(emitter, step, 50)
        emitter.close()
        second.wait_for("ended (ok)")
        assert second.stop() == 0

        killed, *newer = segment_paths(log_dir)  # the killed daemon's segment may be compressed by now
        assert killed.name in (live.name, live.name + ".zst")
        assert [(f.offset, f.recv_ns, f.payload) for f in LogReader(killed)] == [(f.offset, f.recv_ns, f.payload) for f in frames]
        assert len(newer) == 1 and all(not LogReader(p).problems for p in newer)  # the torn bytes are not a frame
        summary = cli.inspect_json(log_dir)
        assert [(p["path"], p["offset"], p["length"], p["kind"]) for p in summary["log_problems"]] == [
            (str(killed), torn_at, len(whole) // 2, "torn_tail")
        ]
        (session,) = summary["runs"]["torn"]
        assert (session["received"], session["lost"], session["status"]) == (emitter.stats.produced, 0, "ok")


# -- a stalled and a swamped daemon -----------------------------------------------------------------


class TestOverload:
    QUEUE = 100
    """daemon.queue_messages and receive_hwm for these tests: small, so the memory bound is tight."""

    def run_overload(self, tmp_path, ipc_endpoint, daemons, cli, identities, fault=None, **group_args):
        """Producers far above the daemon's capacity: until they have dropped more than the daemon may hold
        (:func:`overflow_target`; ``fault(daemon, group, target)`` meanwhile, if given), or for ``duration_s``."""
        log_dir = tmp_path / "logs"
        config = write_config(tmp_path / "simic.toml", queue_messages=self.QUEUE, receive_hwm=self.QUEUE)
        daemon = daemons(ipc_endpoint, log_dir, "--config", str(config))
        group = ProducerGroup(daemon.endpoint, identities, **group_args).start()
        try:
            with RssSampler(daemon.proc.pid, log_dir) as rss:
                idle = rss.samples[0].rss
                group.go()
                if "duration_s" not in group_args:
                    target = overflow_target(log_dir, idle, queue=self.QUEUE, producers=len(identities) + 1)
                    if fault is not None:
                        fault(daemon, group, target)
                    else:
                        wait_until(lambda: group.dropped() > target, f"the producers dropping {target} events")
                    group.stop()
                results = settle(daemon, group)
                fresh = fresh_producer_is_all_logged(daemon, "after")
        finally:
            group.kill()
        assert daemon.stop() == 0

        summary = cli.inspect_json(log_dir)
        assert_accounted(results, summary)
        assert sum(r.dropped for r in results) > 0, "the load should have been far above the daemon's capacity"
        logged, largest = logged_events(log_dir)[1:]
        bound = rss_bound(idle, queue_messages=self.QUEUE, receive_hwm=self.QUEUE, producers=len(identities) + 1, message_bytes=largest)
        peak = max(s.rss for s in rss.samples)
        assert peak <= bound, f"daemon RSS {peak / 2**20:.1f} MiB above its bound {bound / 2**20:.1f} MiB"
        dropped_bytes = sum(r.dropped for r in results) * log_bytes(log_dir) / logged
        assert dropped_bytes > bound - idle, "the producers should have sent more than the daemon may hold"
        (after,) = summary["runs"]["after"]
        assert (after["received"], after["lost"], fresh.stats.dropped) == (fresh.stats.produced, 0, 0)
        return results, summary

    def test_burst_far_above_capacity_bounded_memory_counted_drops_recovery(self, tmp_path, ipc_endpoint, daemons, cli):
        """Four producers back to back until they have dropped more than the daemon may hold: its memory
        stays within what its queues allow, every drop is counted where it happened, and a producer after
        the burst loses nothing."""
        self.run_overload(tmp_path, ipc_endpoint, daemons, cli, [("burst", r) for r in range(4)])

    def test_sigstop_stall_then_catch_up_without_growth(self, tmp_path, ipc_endpoint, daemons, cli):
        """The whole daemon frozen (SIGSTOP) while two producers emit, until they have dropped more than it
        may hold, then SIGCONT: producers drop and count at their high-water mark, the daemon catches up
        within its memory bound and loses nothing itself."""

        def stall(daemon, group, target):
            os.kill(daemon.proc.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: group.dropped() > target, f"the producers dropping {target} events")  # the stall itself
            finally:
                os.kill(daemon.proc.pid, signal.SIGCONT)

        results, summary = self.run_overload(tmp_path, ipc_endpoint, daemons, cli, [("stall", 0), ("stall", 1)], fault=stall)
        assert all(s["lost_in_transit"] == 0 for s in sessions_of(summary).values())  # a stall loses nothing on the way

    @pytest.mark.slow
    def test_long_burst_of_sixteen_producers(self, tmp_path, ipc_endpoint, daemons, cli):
        """Sixteen producers back to back for 20 s: the same guarantees, and no creeping growth over time."""
        self.run_overload(tmp_path, ipc_endpoint, daemons, cli, [(f"long-{r // 8}", r % 8) for r in range(16)], duration_s=20.0)


# -- a full disk ------------------------------------------------------------------------------------


def _sigxfsz_ignored(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        mask = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
    return bool(mask & (1 << (signal.SIGXFSZ - 1)))


class FileSizeLimit:
    """The daemon's files may not grow: ``RLIMIT_FSIZE`` set on the daemon process (never on this one),
    so a write past it fails with EFBIG (Python ignores SIGXFSZ, which would otherwise kill it)."""

    code = "EFBIG"

    def __init__(self, tmp_path: Path) -> None:
        self.log_dir = tmp_path / "logs"
        self.pid: int | None = None

    def attach(self, pid: int) -> None:
        assert _sigxfsz_ignored(pid), "the daemon must ignore SIGXFSZ, or a full file kills it"
        self.pid = pid
        self.hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]

    def fill(self) -> None:
        live = segment_paths(self.log_dir)[-1]
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (live.stat().st_size, self.hard))

    def free(self) -> None:
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (self.hard, self.hard))


class SmallTmpfs:
    """The log directory on a 2 MiB tmpfs filled by another file: a real ENOSPC (needs mount rights)."""

    code = "ENOSPC"

    def __init__(self, tmp_path: Path) -> None:
        self.log_dir = tmp_path / "logs"
        self.log_dir.mkdir()
        self.filler = self.log_dir / "filler"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "simic-test", str(self.log_dir)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")

    def attach(self, pid: int) -> None:
        pass

    def fill(self) -> None:
        with open(self.filler, "wb", buffering=0) as filler:
            for chunk in (65536, 4096, 512, 1):
                try:
                    while True:
                        filler.write(b"\0" * chunk)
                except OSError as error:
                    assert error.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.log_dir)], check=False)


@pytest.fixture(params=["file_size_limit", "tmpfs"])
def full_disk(request, tmp_path):
    if request.param == "file_size_limit":
        yield FileSizeLimit(tmp_path)
        return
    disk = SmallTmpfs(tmp_path)
    yield disk
    disk.unmount()


class TestDiskFull:
    def test_disk_full_one_clear_line_alerts_flow_no_corrupt_frame_writing_resumes(self, full_disk, ipc_endpoint, daemons, cli):
        """While the log cannot grow: one line naming the file and the errno, alerts still reach the
        console, the PUB socket and ``poll_alerts``, the log holds only whole frames; when space returns,
        writing resumes, and the frames lost in between are the counted loss."""
        daemon = daemons(ipc_endpoint, full_disk.log_dir)
        full_disk.attach(daemon.proc.pid)
        emitter = Emitter(daemon.endpoint, run_id="disk", settings=EmitterSettings(exit_hooks=False))
        step = alert_roundtrip(emitter, daemon, emit_steps(emitter, 0, 20))  # the alert subscription is live
        live = segment_paths(full_disk.log_dir)[-1]

        full_disk.fill()
        step = emit_steps(emitter, step, 200)
        step = alert_roundtrip(emitter, daemon, step)  # alerts flow with the disk full
        wait_lines(daemon, ["event log: write failed"])
        failed = [line for line in daemon.output if "event log: write failed" in line]
        assert len(failed) == 1 and full_disk.code in failed[0] and f"{live}" in failed[0] and "[Errno" in failed[0], failed
        assert not any("Traceback" in line for line in daemon.output)
        full_disk.free()
        step = emit_steps(emitter, step, 20)
        emitter.close()
        wait_lines(daemon, ["event log: writing again", "ended (ok)"])
        assert daemon.proc.poll() is None, "the daemon must keep running"
        assert daemon.stop() == 0
        stopped = next(line for line in daemon.output if "stopped:" in line)
        assert "log frames not written" in stopped

        summary = cli.inspect_json(full_disk.log_dir)
        assert summary["log_problems"] == []
        (session,) = summary["runs"]["disk"]
        assert session["status"] == "ok" and session["dropped_by_producer"] == 0
        assert session["lost"] > 0  # the frames the disk refused: gaps in the log, counted
        assert session["received"] + session["lost"] == emitter.stats.produced


# -- many producers ---------------------------------------------------------------------------------


class TestManyProducers:
    def run_many(self, tmp_path, ipc_endpoint, daemons, cli, **group_args) -> None:
        log_dir = tmp_path / "logs"
        daemon = daemons(ipc_endpoint, log_dir, "--config", str(write_config(tmp_path / "simic.toml")))
        identities = [(f"run-{run}", rank) for run in "abc" for rank in range(8)]
        group = ProducerGroup(daemon.endpoint, identities, **group_args).start()
        try:
            group.go()
            results = settle(daemon, group)
        finally:
            group.kill()
        assert daemon.stop() == 0

        summary = cli.inspect_json(log_dir)
        assert {(r.run_id, r.rank) for r in results} == set(identities)
        assert len(sessions_of(summary)) == len(identities)  # one session per producer, under its own (run, rank)
        assert_accounted(results, summary)
        for run_id, sessions in summary["runs"].items():
            assert sorted(s["rank"] for s in sessions) == list(range(8)), run_id
        # Message by message: the envelope names the producer that sent it.
        sessions = {r.session: (r.run_id, r.rank) for r in results}
        checkpoint = json.loads((log_dir / "consumer-state.json").read_text())
        live = {(p["run_id"], p["rank"], p["session"]): (p["received"], p["lost"]) for p in checkpoint["stages"]["accounting"]["producers"]}
        for (run_id, rank, session), s in sessions_of(summary).items():
            assert sessions[session] == (run_id, rank)
            assert live[(run_id, rank, session)] == (s["received"], s["lost"])  # the daemon's live counts, the log's

    def test_eight_ranks_of_three_runs(self, tmp_path, ipc_endpoint, daemons, cli):
        """24 producer processes (8 ranks x 3 runs) into one daemon, small send queues so some drop:
        per (run, rank) received + lost == that producer's produced, nothing attributed elsewhere."""
        self.run_many(tmp_path, ipc_endpoint, daemons, cli, steps=200, send_hwm=100)

    @pytest.mark.slow
    def test_eight_ranks_of_three_runs_at_full_speed_for_ten_seconds(self, tmp_path, ipc_endpoint, daemons, cli):
        """The same 24 producers back to back for 10 s, default queues."""
        self.run_many(tmp_path, ipc_endpoint, daemons, cli, duration_s=10.0)
