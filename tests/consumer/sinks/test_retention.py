"""Logs that do not fill the disk: a real daemon compresses closed segments and removes the oldest ones;
replay, inspect and report read what is left, compressed or plain, and say what was removed."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from simic.consumer import ConsumerConfig
from simic.consumer.config import ConfigError, load_config
from simic.consumer.sinks.retention import RETENTION_FILE, LogMaintenance, RetentionPolicy
from simic.producer import Emitter
from simic.schemas import LogReader, LogWriter
from simic.schemas.eventlog import compress_segment, segment_index, segment_paths

HEADS = ["slot", "blueprint", "blend", "op", "value"]
HOUR_NS = 3600 * 10**9


def train(emitter: Emitter, steps: int, *, nan_at: int | None = None) -> None:
    for step in range(steps):
        emitter.emit("step_timing", step=step, phases_ms={"rollout": 10.0 + step % 7, "update": 5.0})
        total = float("nan") if step == nan_at else 1.5 + (step % 5) / 10
        emitter.emit("head_grad_norms", step=step, norms={head: 0.5 + step % 3 / 10 for head in HEADS}, total=total)
        emitter.emit("ppo_update", step=step, approx_kl=0.01, entropy={"slot": 1.0})
        emitter.flush()


def write_config(path: Path, **log: object) -> Path:
    lines = ["[log]"] + [f"{key} = {json.dumps(value)}" for key, value in log.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_all(daemon, *texts: str) -> None:
    """Block until the daemon has printed a line containing each of ``texts``, in any order (its own signals)."""
    missing = [text for text in texts if not any(text in line for line in daemon.output)]
    while missing:
        line = daemon.wait_for("")
        missing = [text for text in missing if text not in line]


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("simic_log_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


class TestRetentionInTheDaemon:
    def test_the_oldest_closed_segments_go_when_the_log_is_too_big_and_nothing_is_counted_lost(self, tmp_path, ipc_endpoint, daemons, cli):
        """With 4 KiB segments and a 16 KiB budget, a run of 600 steps: closed segments are compressed, the oldest are
        removed and recorded, the live one stays plain; the metrics count the removals; inspect says what was removed
        and counts the session's earlier events as removed by retention, not lost."""
        log_dir = tmp_path / "logs"
        config = write_config(tmp_path / "c.toml", max_segment_bytes=4096, max_total_bytes=16384)
        daemon = daemons(ipc_endpoint, log_dir, "--config", str(config), "--metrics-port", "0")
        url = daemon.wait_for("serving metrics on").rsplit(" ", 1)[1].strip()
        with Emitter(daemon.endpoint, run_id="long", heads=HEADS) as emitter:
            train(emitter, 600)
        wait_for_all(daemon, "ended (ok)", "event log: removed segment-", "event log: compressed segment-")
        metrics = scrape(url)
        assert daemon.stop() == 0

        records = [json.loads(line) for line in (log_dir / RETENTION_FILE).read_text().splitlines()]
        assert records and {r["reason"] for r in records} == {"max_total_bytes"}
        removed = [r["index"] for r in records]
        kept = [segment_index(p) for p in segment_paths(log_dir)]
        assert removed == list(range(1, len(removed) + 1)) and kept == list(range(len(removed) + 1, len(removed) + 1 + len(kept)))
        assert not any((log_dir / r["segment"]).exists() for r in records)
        *closed, live = segment_paths(log_dir)
        assert live.suffix == ".simlog"  # the segment last written is never compressed by the daemon that writes it
        compressed = [line.split("event log: compressed ", 1)[1].split(" ", 1)[0] for line in daemon.output if "event log: compressed " in line]
        for name in compressed:  # each compressed segment replaced its plain file, unless retention removed it since
            assert not (log_dir / name).exists() and ((log_dir / f"{name}.zst").exists() or f"{name}.zst" in [r["segment"] for r in records])
        assert metrics['simic_log_segments_removed_total{reason="max_total_bytes"}'] >= 1
        assert metrics['simic_log_segments_removed_total{reason="max_age"}'] == 0
        assert metrics["simic_log_segments_compressed_total"] >= 1

        summary = cli.inspect_json(log_dir)
        assert summary["retention"]["removed_segments"] == len(records)
        assert summary["retention"]["removed_bytes"] == sum(r["bytes"] for r in records)
        (session,) = summary["runs"]["long"]
        produced = emitter.stats.produced
        assert session["removed_by_retention"] > 0 and session["lost"] == emitter.stats.dropped
        assert session["received"] + session["removed_by_retention"] + session["lost"] == produced
        text = cli.run("inspect", str(log_dir)).stdout
        assert f"removed by retention: {len(records)} segments (segment-000001.simlog" in text and "(max_total_bytes " in text

    def test_segments_older_than_max_age_are_removed_at_start_and_the_others_compressed(self, tmp_path, ipc_endpoint, daemons, cli):
        """Segments an earlier daemon left, two of them last written three hours ago and one a minute ago: a daemon
        with max_age 1h removes the two old ones (recorded as max_age) and compresses the young one; replay reads it."""
        log_dir = tmp_path / "logs"
        for segment in range(3):
            with LogWriter(log_dir) as writer:
                writer.write(b"not an event, but a message all the same", 1_700_000_000_000_000_000 + segment)
        now = time.time_ns()
        for path, age_ns in zip(segment_paths(log_dir), (3 * HOUR_NS, 3 * HOUR_NS, 60 * 10**9)):
            os.utime(path, ns=(now - age_ns, now - age_ns))
        config = write_config(tmp_path / "c.toml", max_age="1h")
        daemon = daemons(ipc_endpoint, log_dir, "--config", str(config))
        wait_for_all(daemon, "event log: removed segment-000001.simlog", "event log: removed segment-000002.simlog",
                     "event log: compressed segment-000003.simlog")
        assert daemon.stop() == 0
        assert [json.loads(line)["reason"] for line in (log_dir / RETENTION_FILE).read_text().splitlines()] == ["max_age", "max_age"]
        assert [p.name for p in segment_paths(log_dir)] == ["segment-000003.simlog.zst"]
        summary = cli.inspect_json(log_dir)
        assert summary["messages"] == 1 and summary["retention"]["by_reason"] == {"max_age": 2}

    def test_a_restarted_daemon_compresses_what_the_last_one_wrote_and_replay_gives_its_alerts(self, tmp_path, ipc_endpoint, daemons, cli):
        """A daemon without compression stopped after a run with a NaN, one with compression started on the same log:
        it compresses every segment of the first (the one the first's final checkpoint points into too: offsets are
        those of the plain bytes); replay of the compressed directory gives exactly the alerts of alerts.jsonl."""
        log_dir = tmp_path / "logs"
        plain = write_config(tmp_path / "plain.toml", max_segment_bytes=8192, compression="none")
        config = write_config(tmp_path / "c.toml", max_segment_bytes=8192)
        first = daemons(ipc_endpoint, log_dir, "--config", str(plain))
        with Emitter(first.endpoint, run_id="restarted", heads=HEADS) as emitter:
            train(emitter, 150, nan_at=100)
        first.wait_for("ended (ok)")
        assert first.stop() == 0
        written = [p.name for p in segment_paths(log_dir)]
        assert len(written) > 2 and not any(name.endswith(".zst") for name in written)
        second = daemons(ipc_endpoint, log_dir, "--config", str(config))
        wait_for_all(second, *(f"event log: compressed {name} " for name in written))
        assert [p.name for p in segment_paths(log_dir)][: len(written)] == [name + ".zst" for name in written]
        live = [json.loads(line) for line in (log_dir / "alerts.jsonl").read_text().splitlines()]
        replayed, summary = cli.replay_json(log_dir)
        assert [(a["rule"], a["step"], a["cleared"]) for a in replayed] == [(a["rule"], a["step"], a["cleared"]) for a in live]
        assert any(a["rule"] == "non_finite" for a in live)
        assert summary["events"] == emitter.stats.produced and summary["log_problems"] == []
        assert second.stop() == 0


class TestReadersTakeBothForms:
    @pytest.fixture
    def recorded(self, tmp_path, ipc_endpoint, daemons) -> Path:
        """A real daemon's log of a run with a NaN, in small segments, left plain (compression off)."""
        log_dir = tmp_path / "plain"
        config = write_config(tmp_path / "c.toml", max_segment_bytes=4096, compression="none")
        daemon = daemons(ipc_endpoint, log_dir, "--config", str(config))
        with Emitter(daemon.endpoint, run_id="both", heads=HEADS) as emitter:
            train(emitter, 200, nan_at=120)
        daemon.wait_for("ended (ok)")
        assert daemon.stop() == 0
        assert len(segment_paths(log_dir)) > 3 and not any(p.name.endswith(".zst") for p in log_dir.iterdir())
        return log_dir

    def test_replay_inspect_and_report_agree_on_compressed_and_plain(self, recorded, tmp_path, cli):
        """Every segment but the last compressed: replay gives the same alerts and summary, inspect the same summary,
        and the report the same runs, events and alerts, as from the plain log."""
        compressed = tmp_path / "compressed"
        shutil.copytree(recorded, compressed)
        for path in segment_paths(compressed)[:-1]:
            compress_segment(path)
        assert sum(p.name.endswith(".zst") for p in compressed.iterdir()) == len(segment_paths(compressed)) - 1
        plain_alerts, plain_summary = cli.replay_json(recorded)
        packed_alerts, packed_summary = cli.replay_json(compressed)
        assert packed_alerts == plain_alerts and any(a["rule"] == "non_finite" for a in plain_alerts)

        def without_paths(summary: dict) -> dict:
            return {key: value for key, value in summary.items() if key != "log_problems"} | {"problems": len(summary["log_problems"])}

        assert without_paths(packed_summary) == without_paths(plain_summary)
        assert without_paths(cli.inspect_json(compressed)) == without_paths(cli.inspect_json(recorded))
        lines = [cli.run("report", str(log), "-o", str(tmp_path / f"{log.name}.html")).stdout for log in (recorded, compressed)]
        assert re.sub(r"wrote \S+ \([\d.]+ MB\)", "", lines[0]) == re.sub(r"wrote \S+ \([\d.]+ MB\)", "", lines[1])


class TestLogMaintenance:
    def test_the_live_segment_and_those_after_a_checkpoint_are_never_touched(self, tmp_path):
        """The live segment and every later one are never touched; the one a checkpoint points into is compressed but
        never removed, however old and however far over the budget; the older ones are compressed, then removed oldest
        first while the log is over budget or too old, and each removal is recorded before the file goes."""
        for segment in range(5):
            with LogWriter(tmp_path) as writer:
                for i in range(200):
                    writer.write(bytes([segment]) * 50, i)
        maintenance = LogMaintenance(tmp_path, RetentionPolicy())
        maintenance.bounds(live=5, keep_from=4)  # segment 4: a checkpoint points into it; 5: the live one
        maintenance.run_once()
        names = [p.name for p in segment_paths(tmp_path)]
        assert names == [f"segment-00000{i}.simlog.zst" for i in (1, 2, 3, 4)] + ["segment-000005.simlog"]
        assert maintenance.counts.segments_compressed == 4 and not (tmp_path / RETENTION_FILE).exists()

        sizes = [p.stat().st_size for p in segment_paths(tmp_path)]
        maintenance.policy = RetentionPolicy(max_total_bytes=sum(sizes) - sizes[0])  # one segment too many
        maintenance.run_once()
        assert [p.name for p in segment_paths(tmp_path)] == names[1:]
        (record,) = [json.loads(line) for line in (tmp_path / RETENTION_FILE).read_text().splitlines()]
        assert (record["segment"], record["index"], record["bytes"], record["reason"]) == (names[0], 1, sizes[0], "max_total_bytes")

        old = time.time_ns() - 10 * HOUR_NS
        for path in segment_paths(tmp_path):
            os.utime(path, ns=(old, old))
        maintenance.policy = RetentionPolicy(max_age_s=3600)
        maintenance.run_once()
        assert [p.name for p in segment_paths(tmp_path)] == ["segment-000004.simlog.zst", "segment-000005.simlog"]
        assert dict(maintenance.counts.segments_removed) == {"max_total_bytes": 1, "max_age": 2}

    def test_a_damaged_record_line_costs_that_line_only(self, tmp_path, cli):
        """A torn or junk line in the retention record is skipped; the other removals are still stated."""
        with LogWriter(tmp_path) as writer:
            writer.write(b"x", 1)
        (tmp_path / RETENTION_FILE).write_text('{"segment": "segment-000000.simlog", "bytes": 10, "reason": "max_age"}\n{"segm')
        assert cli.inspect_json(tmp_path)["retention"]["removed_segments"] == 1


class TestConfiguration:
    def test_a_budget_smaller_than_a_segment_is_refused_naming_both(self, tmp_path):
        """max_total_bytes below max_segment_bytes can never hold: the config is refused with both values."""
        with pytest.raises(ConfigError, match=r"max_total_bytes \(1000\) must be at least max_segment_bytes \(4096\)"):
            load_config(write_config(tmp_path / "c.toml", max_segment_bytes=4096, max_total_bytes=1000))

    @pytest.mark.parametrize(("given", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), (60, 60)])
    def test_max_age_takes_seconds_or_a_unit(self, tmp_path, given, seconds):
        """max_age is seconds, or a number with s, m, h or d."""
        assert load_config(write_config(tmp_path / "c.toml", max_age=given)).log.max_age == seconds

    def test_defaults_compress_and_keep_everything(self):
        """By default closed segments are compressed and nothing is removed."""
        log = ConsumerConfig().log
        assert (log.compression, log.max_total_bytes, log.max_age) == ("zstd", None, None)
