"""The harness of the rule tests: a producer of real encoded messages, a timeline of arrivals, the
pipeline the rules run in, and the checks every rule's tests share (checkpoints, documented defaults).

Each ``test_<rule>.py`` beside it drives one rule through the real pipeline with it."""

from __future__ import annotations

import json
import math
import random
import re

from simic.consumer import ConsumerConfig, Pipeline, build_pipeline
from simic.consumer.pipeline.alerts import alert_record
from simic.consumer.analysis import RULES, Rule, RuleConfig
from simic.consumer.pipeline.updates import UpdateCombiner
from simic.consumer.daemon.lifecycle import exit_note
from simic.consumer.testing import RecordingSink
from simic.schemas import encode_events
from simic.schemas.models import Alert, Event, HeadGradNorms, LstmHealth, PpoUpdate, StepTiming

S = 1_000_000_000


RECV0 = 1_700_000_000_000_000_000


HEADS = ("slot", "blueprint", "blend", "op", "value")


TYPICAL = {"slot": 1.0, "blueprint": 0.8, "blend": 0.6, "op": 1.2, "value": 3.0}


SEEDS = (0, 1, 2, 3, 4)


class Producer:
    """One producer session: makes event models whose seq and clock count up by themselves."""

    def __init__(self, run_id: str = "run", rank: int = 0, session: int = 1) -> None:
        self.run_id, self.rank, self.session = run_id, rank, session
        self.seq = 0

    def make(self, model: type[Event], step: int, **fields) -> Event:
        event = model(run_id=self.run_id, rank=self.rank, session=self.session, seq=self.seq,
                      clock_ns=1_000_000 * (self.seq + 1), step=step, **fields)
        self.seq += 1
        return event

    def skip(self, lost: int) -> None:
        """Events made but never delivered (a sequence gap)."""
        self.seq += lost

    def grads(self, step: int, norms: dict | None = None, scale: float = 1.0, total: float | None = None, **fields) -> HeadGradNorms:
        norms = {head: (None if value is None else value * scale) for head, value in (norms or TYPICAL).items()}
        if total is None:
            total = math.sqrt(sum(v * v for v in norms.values() if v is not None))
        return self.make(HeadGradNorms, step, norms=norms, total=total, **fields)

    def lstm(self, step: int, **fields) -> LstmHealth:
        values = dict(h_norm=20.0, c_norm=60.0, h_rms=0.3, c_rms=0.8, h_max_abs=0.9, c_max_abs=2.5,
                      h_env_max_rms=0.4, c_env_max_rms=1.2, has_nan=False, has_inf=False)
        values.update(fields)
        return self.make(LstmHealth, step, **values)

    def ppo(self, step: int, **fields) -> PpoUpdate:
        values = dict(policy_loss=-0.01, value_loss=0.4, approx_kl=0.01, clip_fraction=0.1, ratio_min=0.8, ratio_max=1.25,
                      entropy={head: 1.0 for head in HEADS[:4]}, explained_variance=0.7, learning_rate=3e-4)
        values.update(fields)
        return self.make(PpoUpdate, step, **values)

    def timing(self, step: int, phases: dict[str, float], clock: str = "cuda_event", wait: dict[str, float] | None = None) -> StepTiming:
        return self.make(StepTiming, step, phases_ms=phases, clock=clock, **({"wait_ms": wait} if wait is not None else {}))


def noisy(rng: random.Random, typical: dict[str, float], sigma: float) -> dict[str, float]:
    """Log-normal noise around typical values (what real norms, timings and entropies look like)."""
    return {name: value * math.exp(rng.gauss(0.0, sigma)) for name, value in typical.items()}


class Timeline:
    """Messages and clock ticks at arrival times: ``(recv_ns, message)``, None for a tick."""

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes | None]] = []
        self.now = RECV0

    def send(self, *events: Event, after_s: float = 0.1) -> None:
        self.now += int(after_s * S)
        self.items.append((self.now, encode_events(events)))

    def tick(self, after_s: float = 1.0) -> None:
        self.now += int(after_s * S)
        self.items.append((self.now, None))

    def ticks(self, seconds: int) -> None:
        for _ in range(seconds):
            self.tick(1.0)

    def exited(self, pid: int, host: str = "h", after_s: float = 0.2) -> None:
        """The tick by which the daemon records that the process it watched (``--exit-with-pid``) exited."""
        self.now += int(after_s * S)
        self.items.append((self.now, ExitNote(exit_note(pid, host))))


class ExitNote(bytes):
    """A timeline item that is a tick carrying the note of a watched process's exit."""


def config(**rules: dict) -> ConsumerConfig:
    return ConsumerConfig.model_validate({"rules": rules})


async def play(items, cfg: ConsumerConfig | None = None, state: dict | None = None, *,
               combiner_state: dict | None = None) -> tuple[list[Alert], Pipeline]:
    """Run arrivals through a full pipeline (every rule on); optionally start from a checkpoint (of the
    rules: ``state``; of the ``updates`` stage: ``combiner_state``)."""
    sink = RecordingSink()
    pipeline = build_pipeline(cfg or ConsumerConfig(), console=False, extra_sinks=[sink])
    if state is not None:
        for rule in pipeline.find(Rule):
            rule.load_state_dict(state[rule.name])
    if combiner_state is not None:
        for stage in pipeline.find(UpdateCombiner):
            stage.load_state_dict(combiner_state)
    await pipeline.start()
    for recv_ns, raw in items:
        if raw is None:
            await pipeline.tick(recv_ns)
        elif isinstance(raw, ExitNote):
            await pipeline.tick(recv_ns, note=bytes(raw))
        else:
            await pipeline.consume(raw, recv_ns)
    await pipeline.close()
    assert pipeline.stage_errors == {}
    return sink.alerts, pipeline


def checkpoint(pipeline: Pipeline) -> dict:
    """Every rule's state, through strict JSON (no NaN), as the daemon stores it."""
    return json.loads(json.dumps({rule.name: rule.state_dict() for rule in pipeline.find(Rule)}, allow_nan=False))


def of(alerts: list[Alert], rule: str) -> list[tuple]:
    """(severity, cleared, step) of one rule's alerts."""
    return [(a.severity, a.cleared, a.step) for a in alerts if a.rule == rule]


async def assert_resumes_identically(tl: Timeline, split: int, rule: str, cfg: ConsumerConfig | None = None) -> None:
    """Feed half, checkpoint, load into a fresh pipeline, feed the rest: the same alerts as one run."""
    whole, _ = await play(tl.items, cfg)
    first, pipeline = await play(tl.items[:split], cfg)
    rest, _ = await play(tl.items[split:], cfg, state=checkpoint(pipeline))
    assert [alert_record(a) for a in first + rest] == [alert_record(a) for a in whole]
    fired = [a for a in whole if a.rule == rule]
    assert any(not a.cleared for a in fired) and any(a.cleared for a in fired), "the scenario must fire and clear"
    assert any(a.rule == rule for a in rest), "the split must fall before the rule's alerts are over"


def documented(config_class: type[RuleConfig], field: str) -> str:
    return config_class.model_fields[field].description or ""


def assert_documented_defaults(name: str, **expected) -> None:
    """The defaults are as stated, and each threshold's docstring names its value."""
    config_class = RULES[name].Config
    defaults = config_class()
    assert {key: getattr(defaults, key) for key in expected} == expected
    for key, value in expected.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("fire_after", "clear_after"):
            exponent = re.sub(r"e([+-])0*(\d)", lambda m: "e" + m[1].replace("+", "") + m[2], f"{float(value):.0e}")
            shown = {f"{value:g}", repr(value), f"{value:.0%}", f"{value:.1%}", exponent}
            assert any(s in documented(config_class, key) for s in shown), f"{name}.{key} docstring does not state {value}"


def grad_run(healthy: int = 40, fault: int = 5, after: int = 25, **fault_args) -> Timeline:
    """``healthy`` typical updates, ``fault`` updates with ``fault_args``, then ``after`` typical ones."""
    p, tl = Producer(), Timeline()
    for step in range(healthy + fault + after):
        tl.send(p.grads(step, **(fault_args if healthy <= step < healthy + fault else {})))
    return tl


def ppo_run(values: list[dict]) -> Timeline:
    p, tl = Producer(), Timeline()
    for step, fields in enumerate(values):
        tl.send(p.ppo(step, **fields))
    return tl


def chatty(tl: Timeline, p: Producer, steps: range, every_s: float = 0.1) -> None:
    """A producer sending one step's event every ``every_s``, with the daemon's 1 s clock ticks in between."""
    elapsed = 0.0
    for step in steps:
        tl.send(p.timing(step, {"update": 8.0}), after_s=every_s)
        elapsed += every_s
        if elapsed >= 1.0:
            tl.tick(0.0)
            elapsed = 0.0
