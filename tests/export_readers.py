"""Reading back what the exporters wrote, with the tools' own readers.

TensorBoard: its ``EventAccumulator`` (what ``tensorboard --logdir`` serves from). wandb: an offline
run is one transaction log (``run-<id>.wandb``) of the SDK's own protobuf ``Record`` messages in
LevelDB's log format (the file ``wandb sync`` uploads); wandb 0.31 ships no Python reader for it, so
:func:`wandb_records` reads the format (32 KiB blocks of checksummed chunks) and parses each record
with ``wandb.proto.wandb_internal_pb2``.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


def tensorboard_run(run_dir: Path):
    """An ``EventAccumulator`` of one run directory, loaded in full (no sampling)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag to its ``(step, value)`` points, in the order written."""
    accumulator = tensorboard_run(run_dir)
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def tensorboard_texts(run_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Text tag (without tensorboardX's ``/text_summary`` suffix) to its ``(step, text)`` entries."""
    accumulator = tensorboard_run(run_dir)
    texts: dict[str, list[tuple[int, str]]] = {}
    for tag in accumulator.Tags()["tensors"]:
        if tag.endswith("/text_summary"):
            texts[tag.removesuffix("/text_summary")] = [
                (e.step, b"".join(e.tensor_proto.string_val).decode()) for e in accumulator.Tensors(tag)
            ]
    return texts


def tensorboard_hparams(run_dir: Path) -> dict[str, Any]:
    """The hyperparameters of the run as the HPARAMS tab reads them (session start info)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = tensorboard_run(run_dir).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values: dict[str, Any] = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return values


_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"not a wandb transaction log: {data[:7]!r}"
    pos, parts = _HEADER, []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the rest of a block too small for a chunk header is padding
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"bad checksum at offset {pos}"
        pos += _HEADER + length
        parts.append(chunk)
        if kind in (_FULL, _LAST):
            yield b"".join(parts)
            parts = []


@dataclass
class WandbRun:
    """What one offline run holds: its id, name, group and project, its config and its history rows."""

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False

    def series(self, key: str, step_key: str = "step") -> list[tuple[int, Any]]:
        """``(step, value)`` of every row holding ``key``."""
        return [(row[step_key], row[key]) for row in self.history if key in row]


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of one ``.wandb`` transaction log, in order."""
    from wandb.proto import wandb_internal_pb2

    for chunk in _chunks(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        yield record


def _config_items(items) -> dict[str, Any]:
    return {item.key: json.loads(item.value_json) for item in items if item.key != "_wandb"}


def wandb_run(run_dir: Path) -> WandbRun:
    """Read an offline run directory (``.../wandb/offline-run-*``)."""
    (log,) = run_dir.glob("*.wandb")
    run = WandbRun(run_dir)
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.group, run.project = record.run.run_id, record.run.display_name, record.run.run_group, record.run.project
            run.config.update(_config_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_config_items(record.config.update))
        elif kind == "history":
            run.history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "exit":
            run.finished = True
    return run


def wandb_runs(directory: Path, wait_s: float = 60.0) -> dict[str, WandbRun]:
    """Every offline run under ``directory`` (``directory/wandb/offline-run-*``), by display name. wandb's
    service process may still be writing a run's file after ``finish()`` returned in the exporter: each
    file is read again until it holds its ``exit`` record (the run's own end), ``wait_s`` at most (a hang
    guard; an unfinished run is returned as read, ``finished`` False)."""
    runs = []
    for path in sorted((directory / "wandb").glob("offline-run-*")):
        deadline = time.monotonic() + wait_s
        while True:
            try:
                run = wandb_run(path)
            except (AssertionError, ValueError):  # a chunk still being written
                if time.monotonic() > deadline:
                    raise
                run = None
            if (run is not None and run.finished) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        runs.append(run)
    return {run.name: run for run in runs}
