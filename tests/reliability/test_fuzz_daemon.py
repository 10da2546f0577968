"""The real daemon under hostile input at scale, through ``bench/fuzz_daemon.py`` (imported, not copied).

Mutated, random and crafted frames, oversize ones included, interleaved with good messages from two sender
processes: the daemon stays up and exits 0, counts every refused frame by reason (live, in its checkpoint,
and in ``inspect``/``replay`` of its log), logs exactly the frames sent, and keeps every good event once.
"""

from __future__ import annotations

import pytest

from bench import fuzz_daemon


def assert_clean(report: fuzz_daemon.Report) -> None:
    assert report.ok, "\n".join(report.failures)


class TestFuzzDaemon:
    def test_hostile_frames_are_counted_by_reason_and_every_good_event_is_kept(self, tmp_path):
        """20,000 frames of every category from two senders: every invariant of the benchmark holds."""
        report = fuzz_daemon.run(frames=fuzz_daemon.QUICK_FRAMES, seed=1, senders=2, workdir=tmp_path, replay=True)
        assert_clean(report)
        sent = report.sent
        assert set(sent["categories"]) == set(fuzz_daemon.WEIGHTS) | {"oversize", "at_limit", "deepest"}
        assert sent["oversize"] >= 2 and sent["frames"] == fuzz_daemon.QUICK_FRAMES
        assert sent["good_events"] > 1000 and sent["invalid_frames"] > sent["delivered"] // 2
        assert {"malformed_msgpack", "bad_envelope", "unsupported_version"} <= set(sent["rejected_messages"])
        assert {"invalid_event", "unknown_kind"} <= set(sent["rejected_events"])
        assert report.exit_code == 0 and report.replay["messages"] == sent["delivered"]

    def test_frames_are_a_function_of_the_seed(self):
        """The same seed and sender give the same frames; another seed gives others (a failure can be replayed)."""

        def frames(seed: int, sender: int) -> list:
            stream = fuzz_daemon.Frames(seed, sender, 3000, fuzz_daemon.good_run_id(seed), 1)
            return [stream.next(index) for index in range(1, 3000)]

        first = frames(5, 0)
        assert first == frames(5, 0)
        assert first != frames(6, 0) and first != frames(5, 1)

    @pytest.mark.slow
    def test_a_million_hostile_frames(self):
        """The benchmark's full run: 1,000,000 frames, every invariant holds."""
        assert_clean(fuzz_daemon.run(frames=1_000_000, seed=0, senders=1))  # its own temporary directory: 1 GiB of logs, removed
