"""Hostile input at scale: a million mutated, random and crafted frames into a running ``simic-consumer``.

A real ``simic-consumer run`` (ipc, a temporary log directory, ``--dead-letter``) receives frames
from sender processes pushing on raw ZeroMQ PUSH sockets, each from its own seeded generator:

- mutations of valid messages: bit flips, byte insertions and deletions, truncations, splices of
  two messages, values replaced by ones of the wrong type, NaN/Inf and huge integers in any place
  (map keys included), negative, duplicate and out-of-order sequence numbers, unknown kind codes
  and schema versions, floats sent as float32;
- random bytes;
- hostile msgpack: nesting up to 100,000 levels, strings, binaries, arrays and maps whose header
  declares gigabytes the frame does not hold, ext types, non-string map keys, more rows than a
  message may carry, frames of exactly ``MAX_MESSAGE_BYTES``, multipart messages, empty frames;
- frames over ``MAX_MESSAGE_BYTES``. ZeroMQ's ``MAXMSGSIZE`` refuses them by dropping the
  connection that carried them, and over TCP the frames that sender queued behind one are lost with
  it, uncounted. So each goes out alone on a connection of its own, and the sender waits (socket
  monitor) for that connection to be dropped: the daemon never sees these frames, and they are
  reported apart;
- good messages of a run id that no other frame contains (a mutant carrying it would be discarded
  and counted), one session per sender, sequence numbers 0, 1, 2, ..., some with a known-bad row
  among the good ones, ending with ``run_end``.

Each sender decodes every frame it sends with ``decode_message`` (the expected rejections by
reason) and checks the decoder against ``model_validate`` of every row (the decoder must agree
with the models' documented entry point). The daemon's ``run_end`` log line for every good session says
everything sent has been processed; then SIGTERM. Checked: the daemon stayed up and exits 0; its
message count, the checkpoint's rejection counts by reason and ``simic-consumer inspect --json``
of its log all equal what was sent; the log holds exactly the frames sent (count and an
order-free digest of their bytes) with no damage; the good events in the log are exactly those
sent, each once; the dead-letter log holds every refused frame. Frames/s counts from the first
send to the last ``run_end`` line; the senders share the machine with the daemon.

    .venv/bin/python bench/fuzz_daemon.py                  # 1,000,000 frames (several minutes on 2 cores)
    .venv/bin/python bench/fuzz_daemon.py --quick          # 20,000 frames, seconds
    .venv/bin/python bench/fuzz_daemon.py --frames 200000 --seed 7 --senders 2 --keep /tmp/fuzz
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import multiprocessing as mp
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as a script (python bench/fuzz_daemon.py): the repository root makes the `bench` package importable
    sys.path.insert(0, str(ROOT))
from bench._workload import STEP_EVENTS, positional  # noqa: E402
from bench.emit_cost import machine  # noqa: E402

from simic.schemas import SCHEMA_VERSION, DecodeError, decode_message  # noqa: E402
from simic.schemas.codec import KINDS, KINDS_BY_CODE, MAX_EVENTS_PER_MESSAGE, MAX_MESSAGE_BYTES, event_row  # noqa: E402
from simic.schemas.eventlog import FRAME_MESSAGE, LogReader  # noqa: E402
from simic.consumer.sinks.dead_letter import DeadLetterSink  # noqa: E402
from tests.consumer.conftest import WAIT_S, Cli, Daemon  # noqa: E402

QUICK_FRAMES = 20_000
CORPUS_RUN = "fuzz-corpus"
SEND_TIMEOUT_MS = 60_000
"""Hang guard: a blocking send that waits this long means the daemon stopped reading."""
WEIGHTS = {
    # category: relative weight (rare, scheduled categories are added on top)
    "good": 6,
    "bit_flip": 8, "insert_bytes": 5, "delete_bytes": 5, "truncate": 5, "splice": 5,
    "wrong_type": 10, "bad_key": 3, "non_finite": 6, "huge_int": 6, "seq_games": 6,
    "unknown_kind": 3, "unknown_version": 3, "float32": 2,
    "random_bytes": 10, "random_msgpackish": 5,
    "deep_nesting": 2, "declared_huge": 3, "ext_type": 3, "non_str_keys": 3, "too_many_rows": 0.05,
    "multipart": 1, "empty": 0.5, "long_strings": 2,
}
DEAD_LETTER_CAP = inspect.signature(DeadLetterSink).parameters["max_bytes"].default
OVERSIZE_SIZES = (MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES + 4096, 4 * MAX_MESSAGE_BYTES, 16 * MAX_MESSAGE_BYTES)


def good_run_id(seed: int) -> str:
    """The run id of the good messages: long and specific, so no mutant holds it by chance."""
    return f"fuzz-good-{hashlib.blake2b(str(seed).encode(), digest_size=8).hexdigest()}"


def frame_digest(frame: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(frame, digest_size=8).digest(), "little")


# -- the corpus: valid messages that mutations start from -----------------------------------------


def _extra_rows() -> list[list[Any]]:
    """A row of each kind the training step does not send."""
    envelope = dict(run_id=CORPUS_RUN, rank=0, session=1, clock_ns=5, step=3)
    return [event_row(KINDS[kind].model(**envelope, seq=seq, **fields)) for seq, (kind, fields) in enumerate([
        ("run_start", dict(host="node-7", pid=4242, world_size=2, torch_version="2.4.0", heads=["slot", "op"],
                           config={"lr": 3e-4, "nested": {"gamma": [0.99, None, True]}}, producer_version="0.1.0")),
        ("profiler_trace", dict(path="/tmp/trace.json")),
        ("heartbeat", dict(sent=10, dropped=1, readouts_dropped=0)),
        ("run_end", dict(status="error", sent=99, dropped=1, error="RuntimeError: boom")),
        ("alert", dict(rule="non_finite", severity="critical", message="NaN", values={"h": 1.5, "n": 3})),
    ], start=500)]


def corpus() -> list[bytes]:
    """Packed valid messages of ``CORPUS_RUN``: whole training steps, single events, every kind."""
    out, seq = [], 0
    for step, events in enumerate(STEP_EVENTS[:16]):
        rows = []
        for kind, fields in events:
            code, payload = positional(kind, fields)
            rows.append([code, seq, 1_000_000 + seq, step, *payload])
            seq += 1
        out.append(msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 0, 1, rows]))
        out.append(msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 1, 2, rows[-1:]]))
    extra = _extra_rows()
    out.append(msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 0, 1, extra]))
    out.extend(msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 0, 1, [row]]) for row in extra)
    for raw in out:
        assert not decode_message(raw).errors, "corpus messages must be valid"
    return out


# -- the generator ---------------------------------------------------------------------------------

WRONG_VALUES: list[Any] = [None, True, False, "", "text", b"", b"\x00bin", 0, -1, 1.5, -0.0, 2**64 - 1, -(2**63),
                           [], [1, "two"], {}, {"k": None}, "x" * 200, float("nan"), float("inf")]
NON_FINITE = [float("nan"), float("inf"), float("-inf")]
HUGE_INTS = [2**63, 2**64 - 1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 2**53 + 1]
BAD_KEYS: list[Any] = [0, -1, 2**64 - 1, None, True, 1.5, float("nan"), b"bin", ("tuple",)]
UNKNOWN_CODES: list[Any] = [0, 10, 11, 127, 128, 255, 256, 65535, 2**32, 2**64 - 1, -1, -128, "heartbeat", 3.0, True, None]
VERSIONS: list[Any] = [0, SCHEMA_VERSION + 1, 255, 2**64 - 1, -1, -(2**63), 1.0, "1", None, True, [1]]
BAD_ROWS: list[list[Any]] = [
    [200, 0, 1, 2],  # unknown kind
    [7, -1, 1, 2],  # negative seq
    [7, 0, 1],  # too short
    [7, 0, 1, 2, "ten"],  # wrong type
    [7, 0, 2**63, 2],  # clock beyond int64
    [3, 0, 1, 2, {"slot": "fast"}],  # a string norm
]
"""Rows mixed into good messages: refused, each costing only itself."""


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) place of a decoded message, depth first."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            out.append((node, index))
            _slots(item, out)
    elif isinstance(node, dict):
        for key, item in node.items():
            out.append((node, key))
            _slots(item, out)
    return out


def _dicts(node: Any, out: list[dict]) -> list[dict]:
    if isinstance(node, dict):
        out.append(node)
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            _dicts(item, out)
    return out


class Frames:
    """A deterministic stream of hostile frames (and good messages) for one sender."""

    def __init__(self, seed: int, sender: int, frames: int, good_run: str, session: int) -> None:
        self.rng = random.Random(f"simic-fuzz:{seed}:{sender}")
        self.corpus = corpus()
        self.bodies = [msgpack.unpackb(raw) for raw in self.corpus]
        self.good_run, self.rank, self.session = good_run, sender, session
        self.good_seq = 0
        self.good: list[tuple[int, str]] = []
        """(seq, kind) of every good event sent."""
        self.categories = list(WEIGHTS)
        self.weights = list(WEIGHTS.values())
        # Rare frames at fixed places, so even a short run has some: oversize, exactly at the limit, 100k deep.
        self.scheduled: dict[int, str] = {}
        for name, count in (("oversize", max(2, frames // 20_000)), ("at_limit", max(1, frames // 100_000)),
                            ("deepest", max(1, frames // 50_000))):
            for i in range(count):
                at = 1 + (2 * i + 1) * frames // (2 * count)
                while at in self.scheduled:
                    at += 1
                self.scheduled[at] = name
        self.makers: dict[str, Callable[[], Any]] = {name: getattr(self, f"_{name}") for name in (*WEIGHTS, "at_limit", "deepest")}

    def next(self, index: int) -> tuple[str, Any]:
        """``(category, frame)``: bytes, a list of parts (multipart), or ``("oversize", size)``."""
        category = self.scheduled.get(index)
        if category == "oversize":
            return category, OVERSIZE_SIZES[index % len(OVERSIZE_SIZES)]
        if category is None:
            category = self.rng.choices(self.categories, self.weights)[0]
        return category, self.makers[category]()

    # good messages
    def first_good(self) -> bytes:
        return self._good_rows([event_row(KINDS["run_start"].model(run_id=self.good_run, rank=self.rank, session=self.session,
                                                                   seq=0, clock_ns=1, step=0, host="fuzz", pid=os.getpid()))])

    def last_good(self) -> bytes:
        sent = self.good_seq
        return self._good_rows([[KINDS["run_end"].code, sent, 2, sent, "ok", sent]])

    def _good_rows(self, rows: list[list[Any]]) -> bytes:
        for row in rows:
            row[1] = self.good_seq
            self.good.append((self.good_seq, KINDS_BY_CODE[row[0]].kind))
            self.good_seq += 1
        return msgpack.packb([SCHEMA_VERSION, self.good_run, self.rank, self.session, rows])

    def _good(self) -> bytes:
        rng = self.rng
        step = rng.randrange(len(STEP_EVENTS))
        events = STEP_EVENTS[step][: rng.randint(1, len(STEP_EVENTS[step]))]
        rows = [[code, 0, 1_000 + step, step, *payload] for code, payload in (positional(kind, fields) for kind, fields in events)]
        data = self._good_rows(rows)
        if rng.random() < 0.2:  # a known-bad row among the good ones
            body = msgpack.unpackb(data)
            body[4].insert(rng.randint(0, len(rows)), list(rng.choice(BAD_ROWS)))
            data = msgpack.packb(body)
        return data

    # byte-level mutations of valid messages
    def _base(self) -> bytearray:
        return bytearray(self.rng.choice(self.corpus))

    def _bit_flip(self) -> bytes:
        data = self._base()
        for _ in range(self.rng.choice((1, 1, 2, 3, 8))):
            bit = self.rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        return bytes(data)

    def _insert_bytes(self) -> bytes:
        data = self._base()
        for _ in range(self.rng.randint(1, 3)):
            at = self.rng.randint(0, len(data))
            data[at:at] = self.rng.randbytes(self.rng.randint(1, 16))
        return bytes(data)

    def _delete_bytes(self) -> bytes:
        data = self._base()
        at = self.rng.randrange(len(data))
        del data[at : at + self.rng.randint(1, 16)]
        return bytes(data)

    def _truncate(self) -> bytes:
        data = self._base()
        return bytes(data[: self.rng.randrange(len(data))])

    def _splice(self) -> bytes:
        a, b = self._base(), self._base()
        return bytes(a[: self.rng.randint(0, len(a))] + b[self.rng.randint(0, len(b)) :])

    # structured mutations: decode a corpus message, change one thing, pack it again
    def _body(self) -> Any:
        return msgpack.unpackb(self.rng.choice(self.corpus))

    def _replace_one(self, values: list[Any], where: Callable[[Any], bool] = lambda value: True) -> bytes:
        body = self._body()
        slots = [(c, k) for c, k in _slots(body, []) if where(c[k])] or [(body, 0)]
        container, key = self.rng.choice(slots)
        container[key] = self.rng.choice(values)
        return msgpack.packb(body, use_bin_type=True)

    def _wrong_type(self) -> bytes:
        return self._replace_one(WRONG_VALUES)

    def _non_finite(self) -> bytes:
        if self.rng.random() < 0.5:  # in the envelope or a row's head: version, rank, session, code, seq, clock, step
            body = self._body()
            if self.rng.random() < 0.5:
                body[self.rng.randrange(4)] = self.rng.choice(NON_FINITE)
            else:
                self.rng.choice(body[4])[self.rng.randrange(4)] = self.rng.choice(NON_FINITE)
            return msgpack.packb(body)
        return self._replace_one(NON_FINITE)

    def _huge_int(self) -> bytes:
        return self._replace_one(HUGE_INTS, lambda value: type(value) in (int, float) or self.rng.random() < 0.1)

    def _bad_key(self) -> bytes:
        body = self._body()
        maps = _dicts(body, [])
        if not maps:
            return msgpack.packb(body)
        target = self.rng.choice(maps)
        if target:
            target.pop(next(iter(target)))
        target[self.rng.choice(BAD_KEYS)] = 1.0
        return msgpack.packb(body, use_bin_type=True)

    def _seq_games(self) -> bytes:
        body = self._body()
        rows = body[4]
        game = self.rng.randrange(6)
        if game == 0:
            for row in rows:
                row[1] = self.rng.choice((-1, -(2**63), -5))
        elif game == 1:
            for row in rows:
                row[1] = rows[0][1]  # duplicates inside one message
        elif game == 2:
            rows.reverse()  # out of order
        elif game == 3:
            for row in rows:
                row[1] += self.rng.choice((2**40, 2**63 - 1 - row[1]))  # a huge jump
        elif game == 4:
            for row in rows:
                row[1] = float(row[1])
        # game 5: the corpus message again, unchanged: a duplicate of an earlier message
        return msgpack.packb(body)

    def _unknown_kind(self) -> bytes:
        body = self._body()
        self.rng.choice(body[4])[0] = self.rng.choice(UNKNOWN_CODES)
        return msgpack.packb(body)

    def _unknown_version(self) -> bytes:
        body = self._body()
        body[0] = self.rng.choice(VERSIONS)
        return msgpack.packb(body)

    def _float32(self) -> bytes:
        return msgpack.packb(self._body(), use_single_float=True)

    # random bytes
    def _random_bytes(self) -> bytes:
        roll = self.rng.random()
        size = self.rng.randint(0, 64) if roll < 0.5 else self.rng.randint(64, 1024) if roll < 0.95 else self.rng.randint(1024, 65536)
        return self.rng.randbytes(size)

    def _random_msgpackish(self) -> bytes:
        head = self.rng.choice((b"\x95\x01", b"\x95\x01\xa3run\x00\x01\x91", b"\x95\x01\xa3run\x00\x01\x91\x94\x07", b"\xdd"))
        return head + self.rng.randbytes(self.rng.randint(0, 200))

    # hostile msgpack
    def _deep_nesting(self) -> bytes:
        depth = self.rng.choice((100, 1000, 1000, 10_000))
        return self._nest(depth)

    def _deepest(self) -> bytes:
        return self._nest(100_000)

    def _nest(self, depth: int) -> bytes:
        shape = self.rng.randrange(3)
        if shape == 0:
            return b"\x91" * depth + b"\xc0"  # [[[[...nil...]]]]
        if shape == 1:
            return b"\x81\xa1k" * depth + b"\xc0"  # {"k": {"k": ...}}
        envelope = msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 0, 1, []])[:-1]  # rows nested instead of listed
        return envelope + b"\x91" * depth + b"\x90"

    def _declared_huge(self) -> bytes:
        header = self.rng.choice((b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                                  b"\xc9\xff\xff\xff\xff\x01", b"\xda\xff\xff", b"\xc5\xff\xff", b"\xdc\xff\xff", b"\xde\xff\xff",
                                  b"\xd9\xff", b"\xc4\xff", b"\xdb\x00\x10\x00\x00"))
        where = self.rng.randrange(3)
        tail = self.rng.randbytes(self.rng.randint(0, 32))
        if where == 0:
            return header + tail
        if where == 1:
            return b"\x95\x01" + header + tail  # as the run id
        return b"\x95\x01\xa1r\x00\x01\x91\x95\x07\x00\x01\x02" + header + tail  # as a payload value

    def _ext_type(self) -> bytes:
        code = self.rng.choice((1, 5, 127, -1, -128))
        body = self.rng.choice([
            struct.pack(">bb", 0xD4 - 256, code) + b"\x00",  # fixext 1
            struct.pack(">bb", 0xD7 - 256, code) + b"\x00" * 8,  # fixext 8
            struct.pack(">bb", 0xD8 - 256, code) + b"\x00" * 16,  # fixext 16
            b"\xc7\x00" + struct.pack(">b", code),  # empty ext 8
            msgpack.packb(msgpack.Timestamp(self.rng.randrange(2**34), self.rng.randrange(10**9))),
            msgpack.packb(msgpack.ExtType(code % 128, self.rng.randbytes(self.rng.randint(0, 40)))),
        ])
        where = self.rng.randrange(3)
        if where == 0:
            return body
        if where == 1:
            return b"\x95\x01" + body + b"\x00\x01\x90"  # as the run id
        return b"\x95\x01\xa1r\x00\x01\x91\x95\x07\x00\x01\x02" + body  # as a payload value

    def _non_str_keys(self) -> bytes:
        key = self.rng.choice((b"\x01", b"\xc0", b"\xc3", b"\xcb" + struct.pack(">d", float("nan")), b"\xc4\x01k", b"\x91\x01", b"\x80"))
        bad_map = b"\x81" + key + b"\xcb" + struct.pack(">d", 1.0)
        # as step_timing.phases_ms, or as run_start.config nested one level
        if self.rng.random() < 0.5:
            return b"\x95\x01\xa1r\x00\x01\x91\x95\x02\x00\x01\x02" + bad_map
        return b"\x95\x01\xa1r\x00\x01\x91\x9b\x01\x00\x01\x02\xa1h\x01\x01\xc0\xc0\xc0\x81\xa1a" + bad_map

    def _too_many_rows(self) -> bytes:
        count = MAX_EVENTS_PER_MESSAGE + self.rng.choice((0, 1))  # at the limit (valid) or one over
        return msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 3, 3, [[7, i, 1, 2] for i in range(count)]])

    def _at_limit(self) -> bytes:
        if self.rng.random() < 0.5:
            return self.rng.randbytes(MAX_MESSAGE_BYTES)
        envelope = msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 0, 1, [[7, 0, 1, 2]]])
        return envelope + b"\x00" * (MAX_MESSAGE_BYTES - len(envelope))  # valid message, then trailing bytes

    def _multipart(self) -> list[bytes]:
        return [self._bit_flip() if self.rng.random() < 0.5 else self._random_bytes() for _ in range(self.rng.randint(2, 3))]

    def _empty(self) -> bytes:
        return b""

    def _long_strings(self) -> bytes:
        size = self.rng.choice((128, 129, 4096, 4097, 16384, 16385))
        text = self.rng.choice(("x", "\u00e9", "\U0001f525")) * size
        if self.rng.random() < 0.5:
            return msgpack.packb([SCHEMA_VERSION, text, 0, 1, [[7, 0, 1, 2]]])  # run id
        return msgpack.packb([SCHEMA_VERSION, CORPUS_RUN, 0, 1, [[9, 0, 1, 2, "rule", "info", text]]])  # alert message


# -- checking the decoder against the models --------------------------------------------------------


def _reference_row(version: Any, run_id: Any, rank: Any, session: Any, row: Any) -> Any:
    """What pydantic makes of one row: the event, or the reason it is refused (the models' own verdict)."""
    if type(row) is not list or len(row) < 4:
        return "invalid_event"
    spec = KINDS_BY_CODE.get(row[0]) if type(row[0]) is int else None
    if spec is None:
        return "unknown_kind"
    if len(row) - 4 > len(spec.fields):
        return "invalid_event"
    data = dict(schema_version=version, run_id=run_id, rank=rank, session=session, seq=row[1], clock_ns=row[2], step=row[3])
    data.update((name, value) for name, value in zip(spec.fields, row[4:]) if value is not None)
    try:
        return spec.model.model_validate(data)
    except Exception:
        return "invalid_event"


def _same_event(a: Any, b: Any) -> bool:
    """Type-exact equality (1 is not 1.0, NaN is NaN, -0.0 is not 0.0), fields set included."""
    return (type(a) is type(b) and a.model_fields_set == b.model_fields_set
            and msgpack.packb(sorted(a.__dict__.items())) == msgpack.packb(sorted(b.__dict__.items())))


def disagreement(data: bytes, decoded: Any) -> str | None:
    """None when ``decode_message``'s events and refusals are what validating each row with the models gives."""
    version, run_id, rank, session, rows = msgpack.unpackb(data, raw=False, strict_map_key=False)  # decoded: a non-text key refuses its event only
    events, errors = iter(decoded.events), {error.index: error.reason.value for error in decoded.errors}
    for index, row in enumerate(rows):
        expected = _reference_row(version, run_id, rank, session, row)
        if isinstance(expected, str):
            if errors.get(index) != expected:
                return f"row {index} {row!r:.300}: models refuse it ({expected}), decoder says {errors.get(index, 'valid')}"
        elif index in errors:
            return f"row {index} {row!r:.300}: models accept it, decoder refuses it ({errors[index]})"
        elif not _same_event(got := next(events, None), expected):
            return f"row {index} {row!r:.300}: decoded {got!r:.300} but the models make {expected!r:.300}"
    extra = next(events, None)
    return None if extra is None else f"an event no row gave: {extra!r:.300}"


# -- a sender process --------------------------------------------------------------------------------


@dataclass
class SenderResult:
    sender: int
    session: int
    frames: int = 0
    """ZeroMQ frames sent (each part of a multipart message counts), oversize ones included."""
    delivered: int = 0
    """Frames the daemon can receive (all but the oversize ones)."""
    categories: Counter = field(default_factory=Counter)
    oversize: int = 0
    oversize_dropped: int = 0
    """Oversize frames whose connection the daemon's ZeroMQ dropped (seen by the socket monitor)."""
    rejected_messages: Counter = field(default_factory=Counter)
    rejected_events: Counter = field(default_factory=Counter)
    invalid_frames: int = 0
    """Delivered frames refused whole or holding a refused event."""
    valid_events: int = 0
    digest: int = 0
    good: list[tuple[int, str]] = field(default_factory=list)
    good_frames: int = 0
    producer_keys: set = field(default_factory=set)
    disagreements: int = 0
    disagreement_examples: list[str] = field(default_factory=list)
    tag_discarded: int = 0
    errors: list[str] = field(default_factory=list)


def _send_oversize(context: zmq.Context, endpoint: str, size: int) -> bool:
    """One frame over the limit on a connection of its own; True once the receiver dropped that connection."""
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(endpoint)
        sock.send(b"\x95" * size)
        return bool(monitor.poll(int(WAIT_S * 1000))) and recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


def sender_main(endpoint: str, sender: int, frames: int, seed: int, good_run: str, session: int, conn: Any) -> None:
    """Send ``frames`` frames to ``endpoint`` and report a :class:`SenderResult` on ``conn``."""
    result = SenderResult(sender, session)
    stream = Frames(seed, sender, frames, good_run, session)
    tag = good_run.encode()
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    sock.setsockopt(zmq.LINGER, int(WAIT_S * 1000))
    sock.connect(endpoint)

    def account(data: bytes, good: bool) -> None:
        result.delivered += 1
        result.digest = (result.digest + frame_digest(data)) & 0xFFFF_FFFF_FFFF_FFFF
        try:
            decoded = decode_message(data)
        except DecodeError as error:
            result.rejected_messages[error.reason.value] += 1
            result.invalid_frames += 1
            return
        result.valid_events += len(decoded.events)
        result.invalid_frames += bool(decoded.errors)
        result.rejected_events.update(error.reason.value for error in decoded.errors)
        result.producer_keys.update((e.run_id, e.rank, e.session) for e in decoded.events if not good)
        problem = disagreement(data, decoded)
        if problem is not None:
            result.disagreements += 1
            if len(result.disagreement_examples) < 5:
                result.disagreement_examples.append(problem)

    def send(parts: list[bytes], good: bool = False) -> None:
        for part in parts:
            account(part, good)
        result.good_frames += good
        sock.send_multipart(parts)
        result.frames += len(parts)

    try:
        send([stream.first_good()], good=True)
        result.categories["good"] += 1
        index = 1
        while result.frames < frames - 1:  # the last frame is run_end
            category, frame = stream.next(index)
            index += 1
            if category == "oversize":
                result.oversize += 1
                result.frames += 1
                result.oversize_dropped += _send_oversize(context, endpoint, frame)
            else:
                parts = frame if isinstance(frame, list) else [frame]
                parts = parts[: frames - 1 - result.frames]
                if category != "good" and any(tag in part for part in parts):
                    result.tag_discarded += 1
                    continue
                send(parts, good=category == "good")
            result.categories[category] += 1
        send([stream.last_good()], good=True)
        result.categories["good"] += 1
    except zmq.Again:
        result.errors.append(f"sender {sender}: a send waited {SEND_TIMEOUT_MS / 1000:.0f} s (the daemon stopped reading)")
    except Exception as error:  # reported, not hidden: the run fails with it
        result.errors.append(f"sender {sender}: {error!r}")
    finally:
        result.good = stream.good
        sock.close()
        context.term()
        conn.send(result)
        conn.close()


# -- the run -------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Report:
    frames: int
    seed: int
    senders: int
    wall_s: float = 0.0
    daemon_cpu_s: float = 0.0
    rss_kib: dict[str, int] = field(default_factory=dict)
    load_before: float = 0.0
    """1-minute load average before the run: other work on the machine slows the senders and the daemon."""
    exit_code: int | None = None
    stopped_line: str = ""
    sent: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)
    """The daemon's accounting as its final checkpoint holds it."""
    inspect: dict[str, Any] = field(default_factory=dict)
    replay: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.checks.values())

    @property
    def failures(self) -> list[str]:
        return [f"{name}: {detail}" for name, (ok, detail) in self.checks.items() if not ok]


def _merge(results: list[SenderResult]) -> dict[str, Any]:
    total: dict[str, Any] = {"frames": 0, "delivered": 0, "oversize": 0, "oversize_dropped": 0, "invalid_frames": 0, "valid_events": 0,
                             "good_frames": 0, "disagreements": 0, "tag_discarded": 0, "digest": 0}
    categories, messages, events, keys = Counter(), Counter(), Counter(), set()
    for r in results:
        for name in total:
            total[name] = total[name] + getattr(r, name)
        categories.update(r.categories)
        messages.update(r.rejected_messages)
        events.update(r.rejected_events)
        keys |= r.producer_keys
    total["digest"] &= 0xFFFF_FFFF_FFFF_FFFF
    total.update(categories=dict(sorted(categories.items())), rejected_messages=dict(sorted(messages.items())),
                 rejected_events=dict(sorted(events.items())), producer_keys=len(keys),
                 good_events=sum(len(r.good) for r in results),
                 disagreement_examples=[e for r in results for e in r.disagreement_examples][:5],
                 errors=[e for r in results for e in r.errors])
    return total


def _scan_log(log_dir: Path, good_run: str) -> dict[str, Any]:
    """What the log holds: frames, their digest, problems, and every good event (from the frames holding the good run id)."""
    reader = LogReader(log_dir)
    tag = good_run.encode()
    frames, digest, good = 0, 0, Counter()
    for frame in reader:
        if frame.type != FRAME_MESSAGE:
            continue
        frames += 1
        digest = (digest + frame_digest(frame.payload)) & 0xFFFF_FFFF_FFFF_FFFF
        if tag in frame.payload:
            for event in decode_message(frame.payload).events:
                if event.run_id == good_run:
                    good[(event.rank, event.session, event.seq, event.kind)] += 1
    return {"frames": frames, "digest": digest, "problems": [str(p) for p in reader.problems], "good": good,
            "bytes": sum(p.stat().st_size for p in log_dir.glob("segment-*"))}


def _check(report: Report, name: str, ok: bool, detail: str) -> None:
    report.checks[name] = (bool(ok), detail)


def run(frames: int = 1_000_000, seed: int = 0, senders: int = 1, workdir: Path | None = None, replay: bool = False,
        progress: Callable[[str], None] = lambda line: None) -> Report:
    """Start a daemon, send ``frames`` hostile frames from ``senders`` processes, stop it, check everything. Returns the report."""
    report = Report(frames=frames, seed=seed, senders=senders, machine=machine(), load_before=os.getloadavg()[0])
    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="simic-fuzz-", dir="/tmp")) if own else workdir
    base.mkdir(parents=True, exist_ok=True)
    try:
        return _run(report, base, progress, replay)
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)


def _run(report: Report, base: Path, progress: Callable[[str], None], replay: bool) -> Report:
    frames, seed, senders = report.frames, report.seed, report.senders
    log_dir = base / "log"
    good_run = good_run_id(seed)
    sessions = [1_000 + seed * 100 + i for i in range(senders)]
    daemon = Daemon(f"ipc://{base}/c.ipc", log_dir, "--dead-letter")
    try:
        pid = daemon.proc.pid
        report.rss_kib["start"] = _proc_status(pid)["VmRSS"]
        cpu_start = _cpu_seconds(pid)
        spawn = mp.get_context("spawn")
        pipes, processes = [], []
        shares = [frames // senders + (i < frames % senders) for i in range(senders)]
        start = time.perf_counter()
        for i in range(senders):
            parent, child = spawn.Pipe(duplex=False)
            process = spawn.Process(target=sender_main, daemon=True,
                                    args=(daemon.endpoint, i, shares[i], seed, good_run, sessions[i], child))
            process.start()
            child.close()
            pipes.append(parent)
            processes.append(process)
        results: list[SenderResult] = []
        for parent, process in zip(pipes, processes):
            while not parent.poll(1.0):  # hang guard: a sender that died, or a daemon that died under it
                if not process.is_alive() or daemon.proc.poll() is not None:
                    break
            results.append(parent.recv() if parent.poll(0) else SenderResult(len(results), sessions[len(results)], errors=["sender died"]))
            process.join(WAIT_S)
        # Every good session's run_end processed means every frame sent before it was processed too (one connection, in order).
        waiting = {f"run {good_run} rank {i} session {s} ended (ok)" for i, s in enumerate(sessions)}
        while waiting and daemon.proc.poll() is None:
            line = daemon.wait_for(f"run {good_run} rank ")
            waiting -= {w for w in waiting if w in line}
        report.wall_s = time.perf_counter() - start
        report.daemon_cpu_s = _cpu_seconds(pid) - cpu_start
        status = _proc_status(pid)
        report.rss_kib.update(end=status["VmRSS"], peak=status["VmHWM"])
        alive = daemon.proc.poll() is None
        report.exit_code = daemon.stop()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    progress(f"sent and processed in {report.wall_s:.1f} s; checking")
    report.stopped_line = next((line.strip() for line in daemon.output if "simic-consumer: stopped:" in line), "")
    sent = report.sent = _merge(results)
    _check(report, "senders finished", not sent["errors"], "; ".join(sent["errors"]) or "every sender sent its share")
    _check(report, "daemon alive until SIGTERM, exit 0", alive and report.exit_code == 0, f"alive={alive}, exit code {report.exit_code}")
    _check(report, "oversize frames refused by ZeroMQ", sent["oversize_dropped"] == sent["oversize"] > 0,
           f"{sent['oversize_dropped']} of {sent['oversize']} connections dropped by the daemon")
    _check(report, "no mutant carried the good run id", sent["tag_discarded"] == 0, f"{sent['tag_discarded']} discarded")
    _check(report, "decoder agrees with the models", sent["disagreements"] == 0,
           f"{sent['disagreements']} disagreements" + "".join(f"\n    {e}" for e in sent["disagreement_examples"]))
    stage_errors = [line.strip() for line in daemon.output if "stage errors:" in line or "Traceback" in line]
    _check(report, "no stage errors", not stage_errors, "; ".join(stage_errors) or "none")

    delivered = sent["delivered"]
    want_invalid = sum(sent["rejected_messages"].values()), sum(sent["rejected_events"].values())
    expected_line = f"stopped: {delivered} messages, "
    rejected_part = f"rejected {want_invalid[0]} messages and {want_invalid[1]} events"
    _check(report, "shutdown summary counts every frame", expected_line in report.stopped_line and rejected_part in report.stopped_line,
           f"expected {expected_line!r} and {rejected_part!r} in {report.stopped_line!r}")

    checkpoint = json.loads((log_dir / "consumer-state.json").read_text())["stages"]["accounting"]
    report.live = {key: checkpoint[key] for key in ("messages", "events", "rejected_messages", "rejected_events", "forgotten_producers")}
    for name, summary in (("checkpoint", report.live), ("inspect", _inspect(report, log_dir))) + (
            (("replay", _replay(report, log_dir)),) if replay else ()):
        _check(report, f"{name}: messages and rejections by reason", summary["messages"] == delivered
               and dict(sorted(summary["rejected_messages"].items())) == sent["rejected_messages"]
               and dict(sorted(summary["rejected_events"].items())) == sent["rejected_events"],
               f"messages {summary['messages']} (sent {delivered}); rejected messages {summary['rejected_messages']} "
               f"(expected {sent['rejected_messages']}); rejected events {summary['rejected_events']} (expected {sent['rejected_events']})")
    _check(report, "live and replayed accounting agree", report.inspect.get("events") == report.live["events"],
           f"events: live {report.live['events']}, inspect {report.inspect.get('events')}")

    scanned = _scan_log(log_dir, good_run)
    report.log = {key: scanned[key] for key in ("frames", "bytes", "problems")}
    report.log["good_events"] = sum(scanned["good"].values())
    _check(report, "log holds exactly the frames sent", scanned["frames"] == delivered and scanned["digest"] == sent["digest"]
           and not scanned["problems"], f"{scanned['frames']} frames (sent {delivered}), digest "
           f"{'equal' if scanned['digest'] == sent['digest'] else 'DIFFERENT'}, problems {scanned['problems'][:3]}")
    expected_good = Counter((r.sender, r.session, seq, kind) for r in results for seq, kind in r.good)
    missing, extra = expected_good - scanned["good"], scanned["good"] - expected_good
    _check(report, "every good event logged once, none invented", not missing and not extra,
           f"{sum(expected_good.values())} good events sent; missing {sum(missing.values())} {sorted(missing)[:3]}, "
           f"extra or repeated {sum(extra.values())} {sorted(extra)[:3]}")
    sessions_seen = {(s["rank"], s["session"]): s for s in report.inspect.get("runs", {}).get(good_run, [])}
    wrong = []
    for r in results:
        s = sessions_seen.pop((r.sender, r.session), None)
        kinds = dict(sorted(Counter(kind for _, kind in r.good).items()))
        if s is None or (s["received"], s["lost"], s["duplicates"], s["status"], s["events_by_kind"]) != (len(r.good), 0, 0, "ok", kinds):
            wrong.append(f"rank {r.sender}: {s and {k: s[k] for k in ('received', 'lost', 'duplicates', 'status')}} (sent {len(r.good)})")
    wrong += [f"unexpected session {key}" for key in sessions_seen]
    _check(report, "inspect: good sessions complete (no loss, no duplicates, run_end ok)", not wrong, "; ".join(wrong) or "all complete")

    dead = _inspect_dir(log_dir / "dead-letter")
    dead_bytes = report.log["dead_letter_bytes"] = sum(p.stat().st_size for p in (log_dir / "dead-letter").glob("segment-*"))
    if dead_bytes < DEAD_LETTER_CAP:
        _check(report, "dead letters: every refused frame", dead["messages"] == sent["invalid_frames"],
               f"{dead['messages']} dead letters, {sent['invalid_frames']} refused frames sent")
    else:  # the dead-letter log is bounded: past its cap it keeps the first ones only
        _check(report, "dead letters: refused frames up to the cap", 0 < dead["messages"] < sent["invalid_frames"],
               f"{dead['messages']} dead letters ({dead_bytes / 2**20:.0f} MiB, cap {DEAD_LETTER_CAP / 2**20:.0f} MiB), "
               f"{sent['invalid_frames']} refused frames sent")
    return report


def _inspect_dir(log: Path) -> dict[str, Any]:
    return Cli().inspect_json(log)


def _inspect(report: Report, log_dir: Path) -> dict[str, Any]:
    report.inspect = _inspect_dir(log_dir)
    return report.inspect


def _replay(report: Report, log_dir: Path) -> dict[str, Any]:
    _, report.replay = Cli().replay_json(log_dir)
    return report.replay


def print_report(report: Report) -> None:
    m, sent = report.machine, report.sent
    print(f"Machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}, msgpack {m['msgpack']}")
    print(f"Seed {report.seed}, {report.senders} sender process(es), {report.frames:,} frames; "
          f"load average before the run {report.load_before:.2f}\n")
    print("| measure | value |\n|---|---:|")
    rate = report.frames / report.wall_s if report.wall_s else 0
    for name, value in [
        ("frames sent (ZeroMQ frames, oversize included)", f"{sent['frames']:,}"),
        ("frames delivered to the daemon (all but oversize)", f"{sent['delivered']:,}"),
        ("wall time, first send to last run_end processed", f"{report.wall_s:.1f} s"),
        ("frames/s", f"{rate:,.0f}"),
        ("daemon CPU time (user+sys)", f"{report.daemon_cpu_s:.1f} s"),
        ("frames per daemon CPU second", f"{sent['delivered'] / report.daemon_cpu_s:,.0f}" if report.daemon_cpu_s else "-"),
        ("daemon RSS at start", f"{report.rss_kib.get('start', 0) / 1024:.1f} MiB"),
        ("daemon RSS at end", f"{report.rss_kib.get('end', 0) / 1024:.1f} MiB"),
        ("daemon peak RSS (VmHWM)", f"{report.rss_kib.get('peak', 0) / 1024:.1f} MiB"),
        ("refused frames (whole, or holding a refused event)", f"{sent['invalid_frames']:,}"),
        ("valid events decoded (mutants included)", f"{sent['valid_events']:,}"),
        ("events counted by the daemon (each sequence number once per session)", f"{report.live.get('events', 0):,}"),
        ("distinct producer sessions among valid mutants", f"{sent['producer_keys']:,}"),
        ("good messages sent", f"{sent['good_frames']:,}"),
        ("good events sent / found in the log", f"{sent['good_events']:,} / {report.log.get('good_events', 0):,}"),
        ("event log size", f"{report.log.get('bytes', 0) / 2**20:.0f} MiB"),
        ("dead-letter log size", f"{report.log.get('dead_letter_bytes', 0) / 2**20:.0f} MiB"),
        ("daemon exit code", f"{report.exit_code}"),
    ]:
        print(f"| {name} | {value} |")
    replayed = " replay --json |" if report.replay else ""
    print(f"\n| rejected | reason | expected (sent) | daemon (checkpoint) | inspect --json |{replayed}")
    print("|---|---|---:|---:|---:|" + ("---:|" if report.replay else ""))
    for level, key in (("message", "rejected_messages"), ("event", "rejected_events")):
        for reason in sorted(set(sent[key]) | set(report.live.get(key, {})) | set(report.inspect.get(key, {}))):
            cells = [sent[key].get(reason, 0), report.live.get(key, {}).get(reason, 0), report.inspect.get(key, {}).get(reason, 0)]
            if report.replay:
                cells.append(report.replay.get(key, {}).get(reason, 0))
            print(f"| {level} | {reason} | " + " | ".join(f"{c:,}" for c in cells) + " |")
    print(f"| frames | oversize, refused by ZeroMQ (connection dropped, never delivered) | {sent['oversize']:,} | - | - |"
          + (" - |" if report.replay else ""))
    print("\n| category | frames |\n|---|---:|")
    for name, count in sent["categories"].items():
        print(f"| {name} | {count:,} |")
    print("\n| check | result |\n|---|---|")
    for name, (ok, detail) in report.checks.items():
        print(f"| {name} | {'PASS' if ok else 'FAIL'}: {detail.splitlines()[0] if detail else ''} |")
    for failure in report.failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"\n{report.stopped_line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames to send (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generators (default 0)")
    parser.add_argument("--senders", type=int, default=1, help="sender processes (default 1: on 2 cores the daemon needs the other)")
    parser.add_argument("--replay", action="store_true", help="also check simic-consumer replay --json of the log (a second pass)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR and keep the logs (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_FRAMES:,} frames, replay checked too")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.replay = QUICK_FRAMES, True
    if args.frames < 1000:
        parser.error("--frames must be at least 1000")
    report = run(args.frames, args.seed, args.senders, args.keep, args.replay,
                 progress=lambda line: print(line, file=sys.stderr, flush=True))
    print_report(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
