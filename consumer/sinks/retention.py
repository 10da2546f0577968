"""Logs that do not fill the disk: compression of closed segments, removal of the oldest ones.

::

    segment-000001.simlog.zst   closed, compressed      <- removed first (max_total_bytes, max_age)
    segment-000002.simlog.zst   closed, compressed
    segment-000003.simlog       closed                  <- compressed next (log.compression)
    segment-000004.simlog       live: being written     <- never compressed, never removed
    retention.jsonl             one line per removed segment: what, when, why

:class:`LogMaintenance` is a background thread of the daemon (``EventLogSink`` wakes it at start,
when a segment is closed and once a minute): it compresses every closed plain segment, then
removes the oldest closed segments while the log is over ``log.max_total_bytes`` or older than
``log.max_age``. Segments from the one a checkpoint points into onward are never removed, so a
daemon restarted after a crash still re-reads everything after its checkpoint (the daemon
checkpoints as soon as a segment is closed, so that is the live segment and at most the one just
closed); they may be compressed (a checkpoint's offset is one in the plain bytes, read through).

Removals are written to ``retention.jsonl`` in the log directory before the file goes, so
``simic-consumer inspect`` and ``replay`` can say what the log no longer holds (see
:func:`removed_segments`), and the accounting does not call the events of removed segments lost
(:func:`first_kept_segments`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from simic.schemas.eventlog import COMPRESSED_SUFFIX, compress_segment, segment_index, segment_paths

__all__ = ["RETENTION_FILE", "RetentionPolicy", "LogMaintenance", "removed_segments", "retention_summary", "first_kept_segments"]

log = logging.getLogger("simic.consumer")

RETENTION_FILE = "retention.jsonl"
"""In the log directory: one JSON object per segment removed by retention."""


@dataclass(frozen=True)
class RetentionPolicy:
    """What :class:`LogMaintenance` does with closed segments (``[log]`` in the configuration)."""

    max_total_bytes: int | None = None
    max_age_s: float | None = None
    compression: str = "zstd"
    compression_level: int = 3


@dataclass
class MaintenanceCounts:
    """What maintenance did since the daemon started (read by the metrics stage)."""

    segments_removed: Counter[str] = field(default_factory=Counter)
    """Segments removed, by reason (``max_total_bytes``, ``max_age``)."""
    bytes_removed: Counter[str] = field(default_factory=Counter)
    segments_compressed: int = 0
    bytes_before_compression: int = 0
    bytes_after_compression: int = 0
    log_bytes: int = 0
    """Bytes the segments took on disk after the last pass."""
    failures: int = 0


class LogMaintenance:
    """The background thread that compresses closed segments and applies retention in one log directory.

    :meth:`wake` asks for a pass (never blocks); :meth:`bounds` says which segment is live (never
    compressed or removed, nor any later one) and which is the oldest that must stay (the one a
    checkpoint points into: never removed); :meth:`close` stops the thread, cutting short a
    compression in progress (the segment stays plain, and is compressed at the next start).
    """

    def __init__(self, directory: Path, policy: RetentionPolicy) -> None:
        self.directory = directory
        self.policy = policy
        self.counts = MaintenanceCounts()
        self._live: int | None = None
        self._keep_from: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, live: int, keep_from: int) -> None:
        self.bounds(live, keep_from)
        self._thread = threading.Thread(target=self._run, name="simic-log-maintenance", daemon=True)
        self._thread.start()
        self.wake()

    def bounds(self, live: int, keep_from: int) -> None:
        """Segment ``live`` and later ones are left alone; segments from ``keep_from`` on (at most ``live``)
        are never removed. A pass runs when either moves on."""
        moved = self._live is not None and (live > self._live or keep_from > (self._keep_from or 0))
        self._live, self._keep_from = live, min(keep_from, live)
        if moved and self._thread is not None:
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception as error:  # a failed pass costs nothing but disk: the next wake tries again
                self.counts.failures += 1
                log.warning("event log maintenance failed: %r", error)

    def run_once(self) -> None:
        """One pass: compress the closed plain segments, then remove what retention says (oldest first)."""
        live, keep_from = self._live, self._keep_from
        if live is None or keep_from is None:
            return
        if self.policy.max_age_s is not None:
            self._apply_retention(keep_from, by_size=False)  # what is too old goes before it costs a compression
        closed = [p for p in segment_paths(self.directory) if (segment_index(p) or 0) < live]
        if self.policy.compression == "zstd":
            for path in closed:
                if self._stop.is_set():
                    return
                if not path.name.endswith(COMPRESSED_SUFFIX):
                    self._compress(path)
        self._apply_retention(keep_from, by_size=True)

    def _compress(self, path: Path) -> None:
        stale = path.with_name(path.name + COMPRESSED_SUFFIX)
        stale.unlink(missing_ok=True)  # left beside its plain segment by an interrupted compression: made again
        try:
            before = path.stat().st_size
            done = compress_segment(path, level=self.policy.compression_level, stop=self._stop.is_set)
        except FileNotFoundError:  # removed meanwhile (by hand, or an older daemon's retention)
            return
        except OSError as error:  # disk full: the plain segment stays, tried again at the next pass
            self.counts.failures += 1
            log.warning("event log: cannot compress %s: %s", path, error)
            return
        if done is not None:
            after = done.stat().st_size
            self.counts.segments_compressed += 1
            self.counts.bytes_before_compression += before
            self.counts.bytes_after_compression += after
            log.info("event log: compressed %s (%d -> %d bytes)", path.name, before, after)

    def _apply_retention(self, keep_from: int, *, by_size: bool) -> None:
        sizes = {}
        for path in segment_paths(self.directory):
            try:
                sizes[path] = path.stat()
            except FileNotFoundError:
                continue
        total = sum(info.st_size for info in sizes.values())
        now_ns = time.time_ns()
        for path, info in sizes.items():  # oldest first
            if (segment_index(path) or 0) >= keep_from:
                break
            age_s = (now_ns - info.st_mtime_ns) / 1e9
            if self.policy.max_age_s is not None and age_s > self.policy.max_age_s:
                reason = "max_age"
            elif by_size and self.policy.max_total_bytes is not None and total > self.policy.max_total_bytes:
                reason = "max_total_bytes"
            else:
                break
            _record(self.directory, {"removed_ns": now_ns, "segment": path.name, "index": segment_index(path), "bytes": info.st_size,
                                     "last_write_ns": info.st_mtime_ns, "reason": reason})
            path.unlink(missing_ok=True)
            total -= info.st_size
            self.counts.segments_removed[reason] += 1
            self.counts.bytes_removed[reason] += info.st_size
            log.info("event log: removed %s (%d bytes, %s)", path.name, info.st_size, reason)
        self.counts.log_bytes = total


def _record(directory: Path, entry: dict[str, Any]) -> None:
    """Append one removal to the record, durably, before the segment goes."""
    with open(directory / RETENTION_FILE, "a", encoding="utf-8") as file:
        file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        file.flush()
        os.fsync(file.fileno())


def removed_segments(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The removals recorded in a log directory (none for a file or a directory without a record).

    Lines that are not a removal (a torn last line after a crash, junk) are skipped."""
    path = Path(directory) / RETENTION_FILE
    if not Path(directory).is_dir() or not path.is_file():
        return []
    entries = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("segment"), str) and isinstance(entry.get("bytes"), int):
                entries.append(entry)
    return entries


def retention_summary(targets: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """What retention removed from these logs: segments and bytes in all and by reason, first and last segment."""
    entries = [entry for target in targets for entry in removed_segments(target)]
    by_reason: Counter[str] = Counter(str(entry.get("reason", "?")) for entry in entries)
    return {
        "removed_segments": len(entries),
        "removed_bytes": sum(entry["bytes"] for entry in entries),
        "by_reason": dict(by_reason),
        "first_removed": entries[0]["segment"] if entries else None,
        "last_removed": entries[-1]["segment"] if entries else None,
        "last_write_ns": max((entry.get("last_write_ns") or 0 for entry in entries), default=None),
    }


def first_kept_segments(targets: Sequence[str | os.PathLike[str]]) -> set[Path]:
    """The oldest remaining segment of every log directory that retention has cut: the events of a
    session first seen there may have had predecessors in the removed segments."""
    heads = set()
    for target in targets:
        if removed_segments(target):
            paths = segment_paths(target)
            if paths:
                heads.add(paths[0])
    return heads
