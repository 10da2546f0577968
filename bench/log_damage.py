"""Damage against the event log, format 2: what a reader still gets back, and what it never serves.

A log of real messages (the mixed PPO step of ``consumer_throughput.mixed_messages``, clock ticks, and
messages whose payload holds a whole forged segment: header, header copy and a frame, ``FORGED``) is
written with ``LogWriter`` in three segments, then damaged in turn:

- **every bit** of a small segment (8 messages, a carrier, a tick) flipped, one at a time: outcomes by
  where the bit was (the header, the header's copy, a frame) and whether exactly the damaged unit was lost;
- **random flips**: ``--trials`` times, 1-8 bits over the three segments: exceptions, frames served
  that were never written (or out of order), forged frames served, intact frames not read;
- **the carriers' heads**: every bit of every forged-payload carrier's 24-byte head, flipped one at a
  time, so the reader resyncs inside the forged segment: forged frames served;
- **a zeroed first block**: the first 4 KiB of a 3 MiB segment (its header, the header's copy and the
  first frames) set to zero: frames read with the key of a later header copy;
- **a compressed segment**: one random byte of a ``.zst`` segment flipped, ``--trials`` / 10 times:
  frames lost per flip (a flip costs the 1 MiB chunk it is in).

    .venv/bin/python bench/log_damage.py                 # about a minute on 2 cores
    .venv/bin/python bench/log_damage.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script (python bench/log_damage.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.consumer_throughput import mixed_messages  # noqa: E402

from simic.schemas.eventlog import (  # noqa: E402
    FRAME_MESSAGE,
    FRAME_OVERHEAD,
    FRAME_TICK,
    LogFormatError,
    LogReader,
    LogWriter,
    compress_segment,
    segment_paths,
)

T0 = 1_700_000_000_000_000_000


def forged_segment(root: Path) -> bytes:
    """A whole segment with its own key holding one frame ``FORGED``: what a sender could put in a payload."""
    with LogWriter(root / "forged") as writer:
        writer.write(b"FORGED", T0)
    return segment_paths(root / "forged")[0].read_bytes()


def write_log(directory: Path, forged: bytes, messages_per_segment: int, segments: int = 3) -> None:
    raws = mixed_messages(segments * messages_per_segment, run_id="damage", session=9, start_ns=T0, step_ns=8_000_000)
    recv_ns = T0
    for segment in range(segments):
        with LogWriter(directory) as writer:
            for i, raw in enumerate(raws[segment * messages_per_segment : (segment + 1) * messages_per_segment]):
                writer.write(raw, recv_ns)
                if i % 10 == 5:
                    writer.write(b"x" + forged, recv_ns + 1)  # a carrier
                if i % 25 == 0:
                    writer.write(b"", recv_ns + 2, FRAME_TICK)
                recv_ns += 10


def key(frame) -> tuple[int, int, bytes]:
    return frame.recv_ns, frame.type, frame.payload


def units(path: Path) -> list[tuple[str, int, int]]:
    """``(what, start, end)`` of the header, its copy and every frame of a small segment."""
    data = path.read_bytes()
    header = 18 + struct.unpack_from("<I", data, 14)[0] + 4
    copy = 2 * header + FRAME_OVERHEAD
    frames = [(f.offset, f.offset + FRAME_OVERHEAD + len(f.payload)) for f in LogReader(path)]
    return [("header", 0, header), ("copy", header, copy)] + [("frame", a, b) for a, b in frames]


def every_bit(path: Path, step: int) -> dict[str, list[int]]:
    """Flip every ``step``-th bit of one segment: per unit kind, [flips, flips that cost exactly that unit]."""
    data = path.read_bytes()
    whole = [key(f) for f in LogReader(path)]
    layout = units(path)
    outcome = {"header": [0, 0], "copy": [0, 0], "frame": [0, 0]}
    for bit in range(0, len(data) * 8, step):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(damaged)
        what, start, end = next(u for u in layout if u[1] <= bit // 8 < u[2])
        reader = LogReader(path)
        got = [key(f) for f in reader]
        if what == "frame":
            lost = next(i for i, u in enumerate(layout[2:]) if u[1] == start)
            exact = got == whole[:lost] + whole[lost + 1 :] and [(p.offset, p.length) for p in reader.problems] == [(start, end - start)]
        else:
            exact = got == whole and len(reader.problems) == 1
        outcome[what][0] += 1
        outcome[what][1] += exact
    path.write_bytes(data)
    return outcome


def random_flips(directory: Path, trials: int, rng: random.Random) -> dict[str, int]:
    paths = segment_paths(directory)
    originals = {p: p.read_bytes() for p in paths}
    written = [key(f) for f in LogReader(directory)]
    result = {"trials": trials, "exceptions": 0, "invented_or_reordered": 0, "forged_served": 0, "frames_written": 0, "frames_read": 0}
    for _ in range(trials):
        for _ in range(rng.randint(1, 8)):
            path = rng.choice(paths)
            data = bytearray(path.read_bytes())
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
            path.write_bytes(data)
        try:
            got = [key(f) for f in LogReader(directory)]
        except LogFormatError:
            result["exceptions"] += 1
            got = []
        position = iter(written)
        result["invented_or_reordered"] += not all(frame in position for frame in got)
        result["forged_served"] += sum(frame[2] == b"FORGED" for frame in got)
        result["frames_written"] += len(written)
        result["frames_read"] += len(got)
        for path, data in originals.items():
            path.write_bytes(data)
    return result


def carrier_heads(directory: Path) -> tuple[int, int, int]:
    """Flip each bit of each carrier's head: (flips, forged frames served, flips after which every other frame was read)."""
    flips = served = clean = 0
    for path in segment_paths(directory):
        data = path.read_bytes()
        frames = list(LogReader(path))
        for frame in frames:
            if not frame.payload.startswith(b"xSIMICLOG"):
                continue
            others = [key(f) for f in frames if f is not frame]
            for bit in range(FRAME_OVERHEAD * 8):
                damaged = bytearray(data)
                damaged[frame.offset + bit // 8] ^= 1 << (bit % 8)
                path.write_bytes(damaged)
                got = [key(f) for f in LogReader(path)]
                flips += 1
                served += sum(f[2] == b"FORGED" for f in got)
                clean += got == others
        path.write_bytes(data)
    return flips, served, clean


def zeroed_block(root: Path, megabytes: int) -> tuple[int, int, int]:
    directory = root / "big"
    raws = mixed_messages(megabytes * 1100, run_id="big", session=3, start_ns=T0, step_ns=8_000_000)
    with LogWriter(directory) as writer:
        for i, raw in enumerate(raws):
            writer.write(raw, T0 + i)
    (path,) = segment_paths(directory)
    whole = list(LogReader(path))
    data = bytearray(path.read_bytes())
    data[:4096] = bytes(4096)
    path.write_bytes(data)
    got = list(LogReader(path))
    after = [f for f in whole if f.offset >= 4096]
    return len(whole), len(got), sum(1 for f in got if f in after)


def compressed_flips(root: Path, trials: int, rng: random.Random) -> tuple[int, float, int, int]:
    directory = root / "zst"
    raws = mixed_messages(6000, run_id="zst", session=4, start_ns=T0, step_ns=8_000_000)
    with LogWriter(directory) as writer:
        for i, raw in enumerate(raws):
            writer.write(raw, T0 + i)
    (path,) = segment_paths(directory)
    whole = len(list(LogReader(path)))
    packed = compress_segment(path)
    data = packed.read_bytes()
    lost, worst = [], 0
    for _ in range(trials):
        damaged = bytearray(data)
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        packed.write_bytes(damaged)
        got = len(list(LogReader(packed)))
        lost.append(whole - got)
        worst = max(worst, whole - got)
    packed.write_bytes(data)
    return whole, sum(lost) / len(lost), worst, sum(1 for n in lost if n == 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000, help="random multi-bit damage trials (default 2000)")
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer messages, every 7th bit, 50 trials")
    args = parser.parse_args(argv)
    per_segment, step, megabytes = (12, 13, 2) if args.quick else (30, 1, 3)
    trials = 50 if args.quick else args.trials
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="simic-damage-"))
    started = time.perf_counter()
    try:
        forged = forged_segment(root)
        directory = root / "log"
        write_log(directory, forged, per_segment)
        paths = segment_paths(directory)
        frames = list(LogReader(directory))
        print(f"Log: {len(paths)} segments, {sum(p.stat().st_size for p in paths):,} bytes, {len(frames)} frames "
              f"({sum(f.payload.startswith(b'xSIMICLOG') for f in frames)} of them carry a whole forged segment)\n")

        write_log(root / "bits", forged, 8, segments=1)
        outcome = every_bit(segment_paths(root / "bits")[0], step)
        print("| damage | trials | result |\n|---|---:|---|")
        for what, label in (("header", "a bit of the segment header"), ("copy", "a bit of the header's copy (frame 0)"), ("frame", "a bit of a frame")):
            flips, exact = outcome[what]
            cost = "every frame read, the header reported" if what == "header" else "exactly that frame lost, reported at its offset"
            print(f"| {label}, {'every' if step == 1 else f'every {step}th'} bit | {flips:,} | {exact:,} of {flips:,}: {cost} |")
        flips, served, clean = carrier_heads(directory)
        print(f"| a bit of a forged-segment carrier's head | {flips:,} | forged frames served: {served}; every other frame read: {clean:,} of {flips:,} |")
        result = random_flips(directory, trials, rng)
        print(f"| 1-8 random bits over the 3 segments | {trials:,} | exceptions: {result['exceptions']}; frames invented or out of order: "
              f"{result['invented_or_reordered']}; forged frames served: {result['forged_served']}; frames read: "
              f"{result['frames_read'] / result['frames_written']:.1%} of those written |")
        whole, got, after = zeroed_block(root, megabytes)
        print(f"| first 4 KiB of a {megabytes} MiB segment zeroed (header, its copy, first frames) | 1 | {got:,} of {whole:,} frames read: "
              f"{after:,} of the {whole - (whole - after):,} after the zeroed block |")
        whole, mean, worst, free = compressed_flips(root, max(5, trials // 10), rng)
        print(f"| one byte flipped in a compressed segment ({whole:,} frames) | {max(5, trials // 10):,} | frames lost: mean {mean:.0f}, "
              f"worst {worst:,} (a 1 MiB chunk); no loss {free} times |")
        print(f"\n{time.perf_counter() - started:.0f} s")
        ok = result["exceptions"] == result["invented_or_reordered"] == result["forged_served"] == served == 0
        print(f"nothing invented, nothing forged served, no exception: {'yes' if ok else 'NO'}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
