"""Bytes per event on the wire and in the event log, for every event kind.

Each kind is measured with realistic values (the step events of ``_workload.py`` and typical
run_start, profiler_trace, heartbeat, run_end and alert events) through the real codec
(``simic.schemas.encode_events``), alone in a message and amortized inside a message of 8 and of
64 events of that kind, and compared with self-describing encodings of the same event as a dict:
JSON (``json.dumps(model_dump(mode="json", exclude_none=True))``, compact separators) and msgpack
(``msgpack.packb(model_dump(exclude_none=True))``). Those dicts carry the whole envelope in every
event (kind, run id, rank, session, seq, clock, step); simic states run id, rank, session and the
schema version once per message and sends each event as a positional row.

The event log stores each received message in a frame with a 24-byte header (format 2; 20 in
format 1), so a frame costs 24 + message bytes: the columns "log" show that per event, before
compression (closed segments are compressed with zstd: ``bench/replay_speed.py`` measures that).

    .venv/bin/python bench/wire_size.py            # under a second
    .venv/bin/python bench/wire_size.py --quick    # the same, without the round-trip check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Any

import msgpack

if not __package__:  # run as a script (python bench/wire_size.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import HEADS, RUN_ID, STEP_EVENTS, VARIANTS  # noqa: E402

from simic.schemas import KINDS, decode_message, encode_events, encode_message  # noqa: E402
from simic.schemas.codec import event_row  # noqa: E402
from simic.schemas.eventlog import FRAME_OVERHEAD  # noqa: E402
from simic.schemas.models import Event  # noqa: E402

FRAME_HEADER = FRAME_OVERHEAD
"""Event log frame header (format 2): marker, type, length, counter, recv_ns, crc32 (24 bytes)."""
SESSION = random.Random(7).getrandbits(63)
"""A producer session id: 63 random bits, so 9 bytes in msgpack, like the real ones."""
FIRST_SEQ = 200_000
"""Mid-run sequence numbers (uint32 in msgpack)."""
FIRST_CLOCK_NS = 4 * 86_400 * 10**9 + 123_456_789
"""``time.monotonic_ns()`` on a host up for four days (uint64 in msgpack)."""
FIRST_STEP = 25_000
"""Update index mid-run (uint16 in msgpack)."""
BATCHES = (8, 64)

assert FRAME_HEADER == 24


def _other_kinds(rng: random.Random, i: int) -> list[tuple[str, dict[str, Any]]]:
    """Realistic values for the kinds a step does not emit."""
    return [
        ("run_start", {"host": "gpu-node-017", "pid": 48213 + i, "world_size": 8, "torch_version": "2.4.0+cu121",
                       "device": "NVIDIA H100 80GB HBM3", "heads": list(HEADS),
                       "config": {"lr": 2.5e-4, "gamma": 0.99, "gae_lambda": 0.95, "clip_coef": 0.2, "ent_coef": 0.01,
                                  "vf_coef": 0.5, "max_grad_norm": 0.5, "num_envs": 64, "num_steps": 128,
                                  "update_epochs": 2, "lstm_hidden": 256, "env_id": "SimicGrid-v3"},
                       "producer_version": "0.1.0"}),
        ("profiler_trace", {"path": f"/scratch/runs/{RUN_ID}/traces/rank0_step{FIRST_STEP + 500 * i}.pt.trace.json"}),
        ("heartbeat", {"sent": FIRST_SEQ + 1000 * i, "dropped": rng.choice((0, 0, 0, 12))}),
        ("run_end", {"status": "ok", "sent": FIRST_SEQ + 1000 * i, "dropped": 0}),
        ("delivery_receipt", {"received": FIRST_SEQ + 1000 * i, "lost": rng.choice((0, 0, 0, 3))}),
        ("alert", {"rule": "grad_explosion", "severity": "warning",
                   "message": f"head 'op' gradient norm {rng.uniform(30, 60):.1f} is {rng.uniform(8, 15):.1f}x its EMA",
                   "values": {"head": "op", "norm": rng.uniform(30, 60), "ema": rng.uniform(2, 4),
                              "ratio": rng.uniform(8, 15)}}),
        ("metrics", {"values": {"train/loss": rng.uniform(0, 2), "train/accuracy": rng.uniform(0, 1)}}),
        ("episodes", {"returns": [rng.uniform(-5, 200) for _ in range(4)], "lengths": [rng.randint(10, 500) for _ in range(4)],
                      "count": 4}),
        ("param_updates", {"ratios": {h: rng.uniform(1e-4, 1e-2) for h in HEADS},
                           "update_norms": {h: rng.uniform(1e-3, 1e-1) for h in HEADS},
                           "param_norms": {h: rng.uniform(1, 20) for h in HEADS},
                           "total_ratio": rng.uniform(1e-4, 1e-2), "samples": 8, "learning_rate": 2.5e-4}),
    ]


def samples() -> dict[str, list[Event]]:
    """64 events of each kind (first-of-its-kind within a step), with envelope values as mid-run."""
    rng = random.Random(11)
    by_kind: dict[str, list[Event]] = {kind: [] for kind in KINDS}
    seq, clock = FIRST_SEQ, FIRST_CLOCK_NS
    for i in range(max(BATCHES)):
        step_events = STEP_EVENTS[i % VARIANTS]
        seen: set[str] = set()
        for kind, fields in step_events + _other_kinds(rng, i):
            if kind in seen:
                continue
            seen.add(kind)
            model = KINDS[kind].model
            by_kind[kind].append(model(run_id=RUN_ID, rank=0, session=SESSION, seq=seq, clock_ns=clock,
                                       step=FIRST_STEP + i, **fields))
            seq += 1
            clock += rng.randint(20_000, 2_000_000)
    return by_kind


def step_mix() -> list[Event]:
    """The eight events of a real step, eight steps in a row (64 events)."""
    events: list[Event] = []
    seq, clock = FIRST_SEQ, FIRST_CLOCK_NS
    for i in range(8):
        for kind, fields in STEP_EVENTS[i]:
            events.append(KINDS[kind].model(run_id=RUN_ID, rank=0, session=SESSION, seq=seq, clock_ns=clock,
                                            step=FIRST_STEP + i, **fields))
            seq += 1
            clock += 30_000
    return events


def json_bytes(event: Event) -> int:
    return len(json.dumps(event.model_dump(mode="json", exclude_none=True), separators=(",", ":")).encode())


def msgpack_dict_bytes(event: Event) -> int:
    return len(msgpack.packb(event.model_dump(exclude_none=True)))


def measure(events: list[Event]) -> dict[str, float]:
    """Bytes per event for one list of events (at least 64)."""
    n = len(events)
    alone = [len(encode_events([e])) for e in events]
    out = {
        "row": sum(len(msgpack.packb(event_row(e))) for e in events) / n,
        "alone": sum(alone) / n,
        "json": sum(map(json_bytes, events)) / n,
        "msgpack_dict": sum(map(msgpack_dict_bytes, events)) / n,
        "log_alone": sum(FRAME_HEADER + a for a in alone) / n,
    }
    for size in BATCHES:
        chunks = [events[i : i + size] for i in range(0, n - size + 1, size)]
        total = sum(len(encode_events(chunk)) for chunk in chunks)
        out[f"in{size}"] = total / (size * len(chunks))
        out[f"log_in{size}"] = (total + FRAME_HEADER * len(chunks)) / (size * len(chunks))
    return out


def check_round_trip(events: list[Event]) -> None:
    """The bytes measured decode back to the very events (the codec really carries them)."""
    for size in (1, *BATCHES):
        chunk = events[:size]
        decoded = decode_message(encode_events(chunk))
        assert not decoded.errors and decoded.events == chunk, f"round trip failed for {chunk[0].kind} x{size}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints a markdown table of bytes per event.")
    parser.add_argument("--quick", action="store_true", help="smoke run: skip the decode round-trip check")
    args = parser.parse_args(argv)

    by_kind = samples()
    mix = step_mix()
    if not args.quick:
        for events in (*by_kind.values(), mix):
            check_round_trip(events)

    envelope = len(encode_message(RUN_ID, 0, SESSION, []))
    print("# simic bytes per event")
    print(f"message envelope: {envelope} bytes = [version, run_id ({len(RUN_ID)} chars), rank, session (63-bit), rows]; "
          f"+2 bytes when a message holds more than 15 events (array16 header)")
    row_head = len(msgpack.packb([3, FIRST_SEQ, FIRST_CLOCK_NS, FIRST_STEP]))
    print(f"row = [kind code, seq ({FIRST_SEQ}+), clock_ns (monotonic, 4-day uptime), step ({FIRST_STEP}+), *payload]: "
          f"{row_head} bytes before the payload; floats are float64 (9 bytes); log frame header: {FRAME_HEADER} bytes per message")
    print()
    print("| kind | row | simic, alone | simic, in 8 | simic, in 64 | JSON dict | msgpack dict | log frame, alone | log frame, in 8 | log frame, in 64 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(kind, measure(events)) for kind, events in by_kind.items()]
    rows.append(("**step mix** (the 8 events of a step)", measure(mix)))
    for kind, m in rows:
        print(f"| {kind} | {m['row']:.0f} | {m['alone']:.0f} | {m['in8']:.1f} | {m['in64']:.1f} | {m['json']:.0f} | "
              f"{m['msgpack_dict']:.0f} | {m['log_alone']:.0f} | {m['log_in8']:.1f} | {m['log_in64']:.1f} |")
    m = dict(rows)["**step mix** (the 8 events of a step)"]
    print()
    print(f"step mix: simic {m['in8']:.1f} bytes/event batched per step vs JSON {m['json']:.0f} "
          f"({m['json'] / m['in8']:.1f}x) and msgpack dict {m['msgpack_dict']:.0f} ({m['msgpack_dict'] / m['in8']:.1f}x)")
    host = next(e for e in by_kind["step_timing"] if e.clock == "cpu") if any(e.clock == "cpu" for e in by_kind["step_timing"]) else \
        by_kind["step_timing"][0].model_copy(update={"clock": "cpu"})
    waited = host.model_copy(update={"wait_ms": {phase: 0.3 for phase in host.phases_ms}})
    print(f"a host-timed step_timing with the wait for a CPU of each of its {len(host.phases_ms)} phases: "
          f"{len(encode_events([waited]))} bytes alone in a message, {len(encode_events([host]))} without it")
    print("round trip: " + ("skipped (--quick)" if args.quick else "every measured message decodes back to its events"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
