"""What ``gradient_drift``'s per-head judge makes of a slow drift and of a surge that holds, under noise.

A head's norm per update: a steady level with log-normal noise (``sigma`` in log: the head's
update-to-update jitter, 0.10-0.13 on the reference trainer's heads, 0.14-0.29 on the other two
detection trainers, up to 0.47 on a bimodal SB3 head) for 40 updates, then either

- a **slow drift**: x1.25 per update from update 40 (the detection benchmark's ``slow_drift``), counted
  as found when the head's alert fires within 5 updates of onset; or
- a **held surge**: x``J`` for 6 updates (J = 2, 3, 4), then back: what a healthy run's head did on
  SB3's RecurrentPPO when its policy found the task (value head 2.2-4.5x for five updates), counted
  as a false alarm when the alert fires.

Each case is run ``--runs`` times with different noise through the real rule (its default
configuration, one ``head_grad_norms`` event per update, as the consumer's ``updates`` stage hands
it), and the table gives the share of runs. ``--config`` replays the same with other settings of the
rule, as ``key=value`` pairs (``head_growth=1.0``).

    .venv/bin/python bench/drift_shape.py
    .venv/bin/python bench/drift_shape.py --config head_jump_after=2 head_fire_after=2 head_growth=1.0   # the judge before (2 in a row)
"""

from __future__ import annotations

import argparse
import math
import random

from simic.consumer.pipeline.alerts import AlertMaker
from simic.consumer.analysis import RULES
from simic.schemas.models import HeadGradNorms

ONSET = 40
HEADS = {"steady": 1.0, "watched": 0.5}


def alert_steps(rule_config, norms: list[float]) -> list[int]:
    """Steps at which the watched head's drift alert fires, for the watched head's norm per update."""
    rule = RULES["gradient_drift"](rule_config, AlertMaker())
    fired = []
    for step, norm in enumerate(norms):
        event = HeadGradNorms(run_id="shape", rank=0, session=1, seq=step, clock_ns=step, step=step,
                              norms={"steady": HEADS["steady"], "watched": norm})
        for alert in rule.check(event, step) or ():
            if not alert.cleared and alert.values.get("head") == "watched":
                fired.append(step)
    return fired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--runs", type=int, default=1000, help="runs per case (default 1000)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.3], help="noise, in log (default 0.1 0.15 0.2 0.3)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="gradient_drift settings to change")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 runs per case, noise 0.1 only")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.sigmas = 20, [0.1]
    overrides = {}
    for item in args.config:
        key, _, value = item.partition("=")
        overrides[key] = value
    rule_config = RULES["gradient_drift"].Config(**overrides)
    rng = random.Random(1)
    print(f"gradient_drift per-head judge, {args.runs} runs per case" + (f", {' '.join(args.config)}" if args.config else " (defaults)"))
    print()
    print("| noise (log) | slow drift found within 5 updates | held surge 2x: fires | 3x: fires | 4x: fires |")
    print("|---:|---:|---:|---:|---:|")
    for sigma in args.sigmas:
        def noisy(factor: float) -> float:
            return HEADS["watched"] * factor * math.exp(rng.gauss(0.0, sigma))

        found = 0
        for _ in range(args.runs):
            steps = alert_steps(rule_config, [noisy(1.25 ** max(0, step - ONSET + 1)) for step in range(ONSET + 12)])
            found += bool(steps) and steps[0] - ONSET <= 5 and steps[0] >= ONSET
        surges = []
        for jump in (2.0, 3.0, 4.0):
            fired = sum(bool(alert_steps(rule_config, [noisy(jump if ONSET <= step < ONSET + 6 else 1.0) for step in range(ONSET + 20)]))
                        for _ in range(args.runs))
            surges.append(fired / args.runs)
        print(f"| {sigma:g} | {found / args.runs:.0%} | " + " | ".join(f"{share:.0%}" for share in surges) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
