"""Consumer pipeline throughput: decode, accounting and every analysis rule, in one process.

Encodes the messages once, outside the timed region, then times ``Pipeline.consume`` over all of
them with the default configuration (every rule on, no sinks). Two workloads:

- ``head_grad_norms``: 8 ``head_grad_norms`` events of 5 heads per message (the original workload);
- ``mixed step``: the 8 events of a realistic PPO step per message (``_workload.py``: step timings,
  gradient norms before and after clipping, LSTM health of two cores, two PPO epochs), a
  ``run_start`` first and a ``heartbeat`` in every 50th message.

Prints events/s for: decode only, the pipeline with no rules, with every rule, and with every rule
judging nothing (each rule's ``check`` and ``tick`` return at once: what dispatching the events to the
rules, indexing them by kind and combining each update's events cost, the floor of any rule
set in this pipeline; its share of decode only is the most that rules of any speed can reach). ``--cpu-time``
times with this process's CPU time (``time.process_time``) instead of the wall clock: on a shared
machine, what other work takes from this process is then not counted. ``--per-rule``
adds what each rule costs on its own (microseconds per event over accounting and the update combiner,
which the rules that count updates read; the first rule to ask for a batch's events by kind also pays
for indexing them). The live daemon adds ZeroMQ
receive and the event-log write on top.

    .venv/bin/python bench/consumer_throughput.py [--messages N] [--repeat R] [--per-rule] [--cpu-time]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

if not __package__:  # run as a script (python bench/consumer_throughput.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import RUN_ID, STEP_EVENTS, VARIANTS, positional  # noqa: E402

from simic.consumer import ConsumerConfig, Pipeline, build_pipeline  # noqa: E402
from simic.consumer.pipeline.accounting import Accounting  # noqa: E402
from simic.consumer.pipeline.build import analysis_stages  # noqa: E402
from simic.consumer.pipeline.alerts import AlertMaker  # noqa: E402
from simic.consumer.pipeline.updates import UpdateCombiner  # noqa: E402
from simic.consumer.analysis import RULES  # noqa: E402
from simic.consumer.analysis._rule import Rule  # noqa: E402
from simic.schemas import decode_message, encode_message  # noqa: E402
from simic.schemas.codec import KINDS  # noqa: E402

HEADS = ("slot", "blueprint", "blend", "op", "value")
PER_MESSAGE = 8
HEARTBEAT_EVERY = 50
"""One message in this many carries a heartbeat too (more often than an emitter flushing every step sends one)."""
T0_NS = 1_700_000_000_000_000_000
clock = time.perf_counter
"""The timer (``time.process_time`` with ``--cpu-time``)."""


def messages(count: int) -> list[bytes]:
    """The original workload: 8 ``head_grad_norms`` events of 5 heads per message."""
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


def mixed_messages(count: int, run_id: str = RUN_ID, session: int = 1, start_ns: int = 1_000, step_ns: int = 1_000_000,
                   first_step: int = 0) -> list[bytes]:
    """A trainer's messages: one PPO step (8 events) per message, ``run_start`` first, a heartbeat every 50th.

    ``clock_ns`` starts at ``start_ns`` and advances ``step_ns`` per message (the producer's clock)."""
    out, seq = [], 0
    run_start = positional("run_start", {"host": "bench-host", "pid": 4242, "world_size": 1, "heads": list(HEADS)})
    heartbeat_code = KINDS["heartbeat"].code
    for i in range(count):
        step, clock = first_step + i, start_ns + i * step_ns
        rows = []
        if i == 0:
            code, payload = run_start
            rows.append([code, seq, clock, step, *payload])
            seq += 1
        for kind, fields in STEP_EVENTS[i % VARIANTS]:
            code, payload = positional(kind, fields)
            rows.append([code, seq, clock, step, *payload])
            seq += 1
        if i % HEARTBEAT_EVERY == HEARTBEAT_EVERY - 1:
            rows.append([heartbeat_code, seq, clock, step, seq, 0])
            seq += 1
        out.append(encode_message(run_id, 0, session, rows))
    return out


async def timed(pipeline: Pipeline, raws: list[bytes]) -> float:
    await pipeline.start()
    start = clock()
    for i, raw in enumerate(raws):
        await pipeline.consume(raw, T0_NS + i * 1_000_000)
    elapsed = clock() - start
    await pipeline.close()
    return elapsed


def count_events(raws: list[bytes]) -> int:
    return sum(len(decode_message(raw).events) for raw in raws)


def judging_nothing(rule: type[Rule]) -> type[Rule]:
    """``rule`` given the same events and ticks, its ``check`` and ``tick`` returning at once: what is left is
    the pipeline's work around it (the rule's own batch loop replaced by the shared one)."""
    overrides: dict[str, object] = {"consume_now": Rule.consume_now}
    if rule.check is not Rule.check:
        overrides["check"] = lambda self, event, now_ns: None
    if rule.tick is not Rule.tick:
        overrides["tick"] = lambda self, now_ns, batch: None
    return type(f"{rule.__name__}JudgingNothing", (rule,), overrides)


def rules_judging_nothing(config: ConsumerConfig) -> list:
    """The stages of ``analysis_stages(config)``, each rule made again :func:`judging_nothing` (same settings, same
    alert numbering)."""
    return [judging_nothing(type(stage))(stage.config, stage.alerts) if isinstance(stage, Rule) else stage
            for stage in analysis_stages(config)]


def best(run, repeat: int) -> float:
    return min(run() for _ in range(repeat))


def table(name: str, raws: list[bytes], repeat: int, per_rule: bool) -> None:
    events = count_events(raws)

    def decode_only() -> float:
        start = clock()
        for raw in raws:
            decode_message(raw)
        return clock() - start

    config = ConsumerConfig()
    variants = {
        "decode only": decode_only,
        "pipeline: accounting, no rules": lambda: asyncio.run(timed(Pipeline([Accounting()]), raws)),
        f"pipeline: accounting + all {len(RULES)} rules (defaults)": lambda: asyncio.run(
            timed(build_pipeline(config, console=False), raws)),
        f"pipeline: accounting + all {len(RULES)} rules judging nothing (the floor)": lambda: asyncio.run(
            timed(build_pipeline(config, console=False, rules=rules_judging_nothing(config)), raws)),
    }
    timer = "CPU time" if clock is time.process_time else "wall clock"
    print(f"\n### {name}: {events} events in {len(raws)} messages, best of {repeat} ({timer})\n")
    print("| variant | events/s |\n|---|---:|")
    for label, run in variants.items():
        print(f"| {label} | {events / best(run, repeat):,.0f} |")
    if not per_rule:
        return
    print(f"\n| rule ({name}) | us/event over accounting and the update combiner |\n|---|---:|")
    alone = best(lambda: asyncio.run(timed(Pipeline([Accounting()]), raws)), repeat)
    combined = best(lambda: asyncio.run(timed(Pipeline([Accounting(), UpdateCombiner()]), raws)), repeat)
    print(f"| (the update combiner itself, over accounting alone) | {(combined - alone) / events * 1e6:.2f} |")
    for rule_name, rule in RULES.items():  # each against a baseline timed just before it: small differences, shared machine
        rule_config = getattr(config.rules, rule_name)
        base = best(lambda: asyncio.run(timed(Pipeline([Accounting(), UpdateCombiner()]), raws)), repeat)
        elapsed = best(lambda: asyncio.run(timed(Pipeline([Accounting(), UpdateCombiner(), rule(rule_config, AlertMaker())]), raws)), repeat)
        print(f"| {rule_name} | {(elapsed - base) / events * 1e6:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages of 8 events per workload (default 5000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant; the best is reported (default 5)")
    parser.add_argument("--workload", choices=("both", "head_grad_norms", "mixed"), default="both", help="which workload (default both)")
    parser.add_argument("--per-rule", action="store_true", help="also time each rule alone (us/event over accounting and the update combiner)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 messages, one run each")
    parser.add_argument("--cpu-time", action="store_true", help="time with this process's CPU time, not the wall clock (a shared machine)")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.repeat = 200, 1
    if args.cpu_time:
        global clock
        clock = time.process_time
    if args.workload in ("both", "head_grad_norms"):
        table("head_grad_norms", messages(args.messages), args.repeat, args.per_rule)
    if args.workload in ("both", "mixed"):
        table("mixed step", mixed_messages(args.messages), args.repeat, args.per_rule)


if __name__ == "__main__":
    main()
