"""Consumer pipeline throughput: decode, accounting and every analysis rule, in one process.

Encodes realistic messages (8 ``head_grad_norms`` events of 5 heads each, as a trainer batches a
step) once, outside the timed region, then times ``Pipeline.consume`` over all of them with the
default configuration (every rule on, no sinks). Prints events/s for: decode only, the pipeline with
no rules, and with every rule. The live daemon adds ZeroMQ receive and the event-log write on top.

    .venv/bin/python bench/consumer_throughput.py [--messages N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from simic.consumer import ConsumerConfig, Pipeline, build_pipeline
from simic.consumer.accounting import Accounting
from simic.consumer.analysis import RULES
from simic.schemas import decode_message, encode_message

HEADS = ("slot", "blueprint", "blend", "op", "value")
PER_MESSAGE = 8


def messages(count: int) -> list[bytes]:
    rng, out, seq = random.Random(0), [], 0
    for _ in range(count):
        rows = []
        for _ in range(PER_MESSAGE):
            norms = {head: rng.uniform(0.5, 1.5) for head in HEADS}
            total = sum(v * v for v in norms.values()) ** 0.5
            rows.append([3, seq, 1_000 + seq, seq, norms, total, total, min(total, 1.0), None, "pre_clip", 1.0])
            seq += 1
        out.append(encode_message("bench", 0, 1, rows))
    return out


async def timed(pipeline: Pipeline, raws: list[bytes]) -> float:
    await pipeline.start()
    start = time.perf_counter()
    for i, raw in enumerate(raws):
        await pipeline.consume(raw, 1_700_000_000_000_000_000 + i * 1_000_000)
    elapsed = time.perf_counter() - start
    await pipeline.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages of 8 events (default 5000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant; the best is reported (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 messages, one run each")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeat = 200, 1
    raws = messages(args.messages)
    events = len(raws) * PER_MESSAGE

    def decode_only() -> float:
        start = time.perf_counter()
        for raw in raws:
            decode_message(raw)
        return time.perf_counter() - start

    variants = {
        "decode only": decode_only,
        "pipeline: accounting, no rules": lambda: asyncio.run(timed(Pipeline([Accounting()]), raws)),
        f"pipeline: accounting + all {len(RULES)} rules (defaults)": lambda: asyncio.run(
            timed(build_pipeline(ConsumerConfig(), console=False), raws)),
    }
    print(f"{events} events in {len(raws)} messages, best of {args.repeat}\n")
    print("| variant | events/s |\n|---|---:|")
    for name, run in variants.items():
        best = min(run() for _ in range(args.repeat))
        print(f"| {name} | {events / best:,.0f} |")


if __name__ == "__main__":
    main()
