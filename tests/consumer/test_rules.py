"""The analysis rules, driven through the real pipeline with real encoded messages.

Each ``Test<Rule>`` checks, for its rule: a healthy sequence raises nothing, the fault fires within
the expected number of updates, it clears, a noisy but healthy sequence does not flap, a checkpoint
taken halfway (state_dict as strict JSON, loaded into a fresh pipeline) continues exactly as the
uninterrupted run, and the defaults are the ones the docstrings state.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from simic.consumer import ConsumerConfig, Pipeline, build_pipeline, replay
from simic.consumer.alerts import alert_record
from simic.consumer.lifecycle import exit_note
from simic.consumer.analysis import RULES, Rule, RuleConfig
from simic.consumer.analysis.updates import UpdateCombiner
from simic.consumer.testing import RecordingSink
from simic.schemas import encode_events
from simic.schemas.models import Alert, Event, HeadGradNorms, LstmHealth, PpoUpdate, RunEnd, RunStart, StepTiming

S = 1_000_000_000
RECV0 = 1_700_000_000_000_000_000
HEADS = ("slot", "blueprint", "blend", "op", "value")
TYPICAL = {"slot": 1.0, "blueprint": 0.8, "blend": 0.6, "op": 1.2, "value": 3.0}
"""Per-head gradient norms of a healthy factored policy (the value head carries the most)."""
SEEDS = (0, 1, 2, 3, 4)


# -- making real messages -------------------------------------------------------------------------


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

    def timing(self, step: int, phases: dict[str, float], clock: str = "cuda_event") -> StepTiming:
        return self.make(StepTiming, step, phases_ms=phases, clock=clock)


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


# -- running the pipeline -------------------------------------------------------------------------


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


# -- the rules --------------------------------------------------------------------------------------


def grad_run(healthy: int = 40, fault: int = 5, after: int = 25, **fault_args) -> Timeline:
    """``healthy`` typical updates, ``fault`` updates with ``fault_args``, then ``after`` typical ones."""
    p, tl = Producer(), Timeline()
    for step in range(healthy + fault + after):
        tl.send(p.grads(step, **(fault_args if healthy <= step < healthy + fault else {})))
    return tl


class TestGradientDrift:
    async def test_a_steady_run_raises_nothing(self):
        """Constant norms for 200 updates: no alert from any rule."""
        alerts, _ = await play(grad_run(200, 0, 0).items)
        assert alerts == []

    async def test_a_jump_of_every_norm_fires_each_head_on_the_second_update_and_the_total_on_the_third(self):
        """Norms x3 from step 40 to 44. Each head, judged against its own history, drifts at 40 and 41 and
        fires at 41 (two in a row); it clears at 49, the fifth usual update. The total's EMA drifts at 40-42
        and fires at 42 (three of four); the 10-update EMA has caught up by 43, but the window of 4 still
        holds 3 drifting updates at 43, so its quiet run starts at 44 and it clears at 48."""
        alerts, _ = await play(grad_run(scale=3.0).items)
        drift = [(a.severity, a.cleared, a.step, a.values.get("head")) for a in alerts if a.rule == "gradient_drift"]
        assert drift == [("warning", False, 41, h) for h in HEADS] + [("warning", False, 42, None), ("info", True, 48, None)] + \
            [("info", True, 49, h) for h in HEADS]
        assert {a.rule for a in alerts} == {"gradient_drift"}
        total = alerts[len(HEADS)]
        # EMA after two fault updates: 0.9 * (0.9 * 1 + 0.1 * 3) + 0.1 * 3 = 1.38 (x the base norm): drift (3 - 1.38) / 1.38
        assert total.values["norm_drift"] == pytest.approx((3 - 1.38) / 1.38, rel=0.01) and total.values["drift_threshold"] == 1.0
        assert "gradient drift at step 42" in total.message
        head = alerts[0]
        assert head.values["factor"] == pytest.approx(3.0) and head.values["usual_norm"] == pytest.approx(TYPICAL["slot"])

    async def test_one_head_drifting_alone_is_its_own_subject(self):
        """Only 'op' x3: its head alert fires, with its usual norm in the message; the total moved too little to drift."""
        alerts, _ = await play(grad_run(norms={**TYPICAL, "op": 1.2 * 3.0}).items)
        fired = [a for a in alerts if a.rule == "gradient_drift" and not a.cleared]
        assert [(a.values.get("head"), a.step) for a in fired] == [("op", 41)]
        assert "norm 3.6 is 3x its usual 1.2" in fired[0].message

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_a_head_swinging_between_two_levels_is_not_drift(self, seed):
        """A learned head's gradient on a recurrent trainer: about 0.12, then for 20 updates 0.003 on about
        half of them (the median falls to the lower level). Back at 0.12 is 40x that level, but not
        above the head's recent highest: nothing."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(150):
            low = 80 <= step < 100 and rng.random() < 0.5
            tl.send(p.grads(step, norms={**TYPICAL, "blend": (0.003 if low else 0.12) * math.exp(rng.gauss(0, 0.2))}))
        alerts, _ = await play(tl.items)
        assert [a for a in alerts if a.rule == "gradient_drift"] == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_one_noisy_head_drifting_1_25x_per_update_fires_within_five(self, seed):
        """'op' with 15% log-normal noise per update (an RMS over an update's minibatches), growing 1.25x per
        update from step 40 (x2 at 43): its alert fires within five updates of onset."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(60):
            growth = 1.25 ** max(0, step - 39)
            tl.send(p.grads(step, norms={**TYPICAL, "op": 1.2 * growth * math.exp(rng.gauss(0, 0.15))}))
        alerts, _ = await play(tl.items)
        fired = [a.step for a in alerts if a.rule == "gradient_drift" and a.values.get("head") == "op" and not a.cleared]
        assert fired and 40 <= fired[0] <= 45

    async def test_grad_health_is_the_share_of_learning_heads(self):
        """Three of five heads without gradient: health 0.4 against an EMA near 1.0 drifts, on its own 0.5 threshold."""
        alerts, _ = await play(grad_run(norms={**TYPICAL, "slot": None, "blend": None, "op": 0.0}).items)
        (fired,) = [a for a in alerts if a.rule == "gradient_drift" and not a.cleared]
        assert fired.step == 42 and "head" not in fired.values
        # The health EMA (momentum 0.9) after two such updates: 0.9 * (0.9 + 0.04) + 0.04 = 0.886; drift (0.886 - 0.4) / 0.886
        assert fired.values["grad_health"] == pytest.approx(0.4) and fired.values["health_drift"] == pytest.approx(0.486 / 0.886, rel=0.01)
        assert fired.values["norm_drift"] < 0.5

    async def test_post_clip_measurements_are_not_tracked(self):
        """Events measured after clipping (stage = post_clip) never move the EMAs: no alert."""
        p, tl = Producer(), Timeline()
        for step in range(40):
            tl.send(p.grads(step, stage="pre_clip"))
        for step in range(40, 50):
            tl.send(p.grads(step, scale=5.0, stage="post_clip"))
        alerts, pipeline = await play(tl.items)
        assert alerts == []
        state = pipeline.find(RULES["gradient_drift"])[0].state_dict()["extra"]
        assert [s["total"]["update_count"] for s in state.values()] == [40]

    async def test_non_finite_values_are_left_to_non_finite_and_do_not_poison_the_ema(self):
        """A NaN total fires non_finite only; the EMA skips it and later steady updates stay quiet."""
        p, tl = Producer(), Timeline()
        for step in range(60):
            if step == 30:
                tl.send(p.grads(step, norms={**TYPICAL, "op": math.nan}, total=math.nan))
            else:
                tl.send(p.grads(step))
        alerts, pipeline = await play(tl.items)
        assert [(a.rule, a.cleared, a.step) for a in alerts] == [("non_finite", False, 30), ("non_finite", True, 31)]
        (state,) = pipeline.find(RULES["gradient_drift"])[0].state_dict()["extra"].values()
        assert math.isfinite(state["total"]["ema_norm"]) and state["total"]["update_count"] == 59

    async def test_warmup_0_and_fire_after_1_is_the_seed_rule(self):
        """Configured as the seed plan (0.99, 0.5, no warmup, fire at once) the rule fires exactly where its tracker says drift > 0.5."""
        from simic.consumer import GradientEMATracker

        norms = [1.0, 1.2, 0.9, 1.1, 2.0, 1.0]
        p, tl = Producer(), Timeline()
        for step, norm in enumerate(norms):
            tl.send(p.grads(step, norms={"pi": norm}))
        seed_rule = {"momentum": 0.99, "drift_threshold": 0.5, "health_drift_threshold": 0.5, "warmup": 0, "fire_after": 1, "fire_window": 1,
                     "per_head": False}
        alerts, _ = await play(tl.items, config(gradient_drift=seed_rule))
        tracker = GradientEMATracker()
        seed = [step for step, norm in enumerate(norms) if tracker.check_drift(norm, 1.0)[0]]
        assert seed == [4]
        assert [a.step for a in alerts if a.rule == "gradient_drift" and not a.cleared] == seed

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_norms_do_not_flap(self, seed):
        """300 updates with 15% log-normal noise per head raise no alert from any rule."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            tl.send(p.grads(step, norms=noisy(rng, TYPICAL, 0.15)))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two updates into the fault (counts pending) fires and clears as the uninterrupted run."""
        await assert_resumes_identically(grad_run(scale=3.0), split=42, rule="gradient_drift")

    async def test_three_drifting_updates_of_four_fire_where_three_in_a_row_would_wait(self):
        """Every norm growing from step 40 with one quiet update (41) in between: the total drifts at 40, 42
        and 43 and fires at 43 (three of the last four); with fire_window = fire_after (in a row) it waits until 44."""
        growing = {40: 3.0, 41: 1.3, 42: 4.0, 43: 5.0, 44: 6.5, 45: 8.0, 46: 10.0}
        p, tl = Producer(), Timeline()
        for step in range(50):
            tl.send(p.grads(step, scale=growing.get(step, 1.0)))
        windowed, _ = await play(tl.items, config(gradient_drift={"per_head": False}))
        in_a_row, _ = await play(tl.items, config(gradient_drift={"per_head": False, "fire_window": 3}))

        def first(alerts):
            return min(a.step for a in alerts if a.rule == "gradient_drift" and not a.cleared)

        assert first(windowed) == 43 and first(in_a_row) == 44

    def test_a_window_shorter_than_the_count_is_refused(self):
        """fire_window < fire_after cannot ever fire: a configuration error naming both."""
        with pytest.raises(ValueError, match="fire_window"):
            config(gradient_drift={"fire_window": 2})

    def test_defaults_are_the_documented_ones(self):
        """Momentum 0.9, norm drift 1.0, health drift 0.5, warmup 30, floor 1e-8, 3 of 4 fire, clear after 5; heads 1.6x, 3.5 jitters, above the recent highest, 2 in a row."""
        assert_documented_defaults("gradient_drift", momentum=0.9, drift_threshold=1.0, health_drift_threshold=0.5, warmup=30, vanishing_floor=1e-8,
                                   per_head=True, head_rise=1.6, head_noise_z=3.5, head_new_high=1.0, head_min_spread=0.05, head_fire_after=2,
                                   fire_after=3, fire_window=4, clear_after=5)


class TestGradientScale:
    async def test_a_steady_run_raises_nothing(self):
        """Constant norms: no gradient_scale alert."""
        alerts, _ = await play(grad_run(100, 0, 0).items)
        assert of(alerts, "gradient_scale") == []

    async def test_an_absolute_explosion_is_critical_after_two_updates_and_clears(self):
        """Total above 1e3 twice: critical explosion (and relative explosion) at the second; five normal updates clear both."""
        alerts, _ = await play(grad_run(20, 2, 10, scale=1000.0).items)
        scale = [a for a in alerts if a.rule == "gradient_scale"]
        assert [(a.severity, a.cleared, a.step) for a in scale] == [
            ("critical", False, 21), ("warning", False, 21), ("info", True, 26), ("info", True, 26)]
        assert "gradient explosion" in scale[0].message and "x its baseline" in scale[1].message

    async def test_an_absolute_vanishing_fires(self):
        """Total below 1e-7 twice fires the vanishing alert."""
        alerts, _ = await play(grad_run(20, 3, 0, scale=1e-9).items)
        fired = [a for a in alerts if a.rule == "gradient_scale"]
        assert [a.step for a in fired] == [21, 21]
        assert "vanishing gradient" in fired[0].message and "fell to 1/" in fired[1].message

    async def test_a_relative_explosion_fires_below_the_absolute_limit(self):
        """x20 the run's own baseline (far below 1e3) fires a warning at the second update."""
        alerts, _ = await play(grad_run(20, 3, 0, scale=20.0).items)
        assert of(alerts, "gradient_scale") == [("warning", False, 21)]

    async def test_a_single_spike_is_forgiven(self):
        """One update x20 among normal ones raises nothing at all."""
        alerts, _ = await play(grad_run(30, 1, 30, scale=20.0).items)
        assert alerts == []

    async def test_a_lasting_explosion_does_not_become_the_baseline(self):
        """300 updates at x20: one alert, never cleared, because exploded samples stay out of the baseline."""
        alerts, _ = await play(grad_run(20, 300, 0, scale=20.0).items)
        assert of(alerts, "gradient_scale") == [("warning", False, 21)]

    async def test_a_gradual_decline_is_followed(self):
        """Norms shrinking 100x over 1500 updates (a converging policy) raise nothing."""
        p, tl = Producer(), Timeline()
        for step in range(1500):
            tl.send(p.grads(step, scale=0.01 ** (step / 1500)))
        alerts, _ = await play(tl.items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_norms_do_not_flap(self, seed):
        """300 updates with 30% noise on every head: no gradient_scale alert."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            tl.send(p.grads(step, scale=math.exp(rng.gauss(0, 0.3))))
        alerts, _ = await play(tl.items)
        assert of(alerts, "gradient_scale") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved between the two exploding updates fires and clears as the uninterrupted run."""
        await assert_resumes_identically(grad_run(20, 2, 10, scale=1000.0), split=21, rule="gradient_scale")

    def test_defaults_are_the_documented_ones(self):
        """1e3 (critical) and 1e-7 absolute; 10x and 1/100 relative to a 0.99 EMA after 10 updates; 2 to fire, 5 to clear."""
        assert_documented_defaults("gradient_scale", max_total_norm=1e3, min_total_norm=1e-7, relative_explosion_factor=10.0,
                                   relative_vanishing_factor=100.0, momentum=0.99, warmup=10, fire_after=2, clear_after=5)
        assert RULES["gradient_scale"].Config().explosion_severity == "critical"


class TestHeadBalance:
    async def test_balanced_heads_raise_nothing(self):
        """Typical per-head norms (value largest): no head_balance alert."""
        alerts, _ = await play(grad_run(100, 0, 0).items)
        assert of(alerts, "head_balance") == []

    async def test_a_dominating_head_fires_on_the_third_update_and_clears(self):
        """'op' at x20 holds 99% of the squared policy-head norm: fires at step 42, clears five updates after."""
        alerts, _ = await play(grad_run(norms={**TYPICAL, "op": 24.0}).items)
        fired = [a for a in alerts if a.rule == "head_balance"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 42), (True, 49)]
        assert fired[0].values["head"] == "op" and fired[0].values["share"] > 0.9

    async def test_the_value_head_carrying_most_of_the_gradient_is_normal(self):
        """The value head at x20 is ignored by default for dominance."""
        alerts, _ = await play(grad_run(norms={**TYPICAL, "value": 60.0}).items)
        assert of(alerts, "head_balance") == []

    async def test_a_dead_head_fires_after_five_updates_while_others_learn(self):
        """'blend' at 0 fires at its fifth dead update (step 44) and clears after five live ones."""
        alerts, _ = await play(grad_run(40, 10, 10, norms={**TYPICAL, "blend": 0.0}).items)
        fired = [a for a in alerts if a.rule == "head_balance"]
        assert [(a.cleared, a.step, a.values["head"]) for a in fired] == [(False, 44, "blend"), (True, 54, "blend")]
        assert "head 'blend' is dead" in fired[0].message

    async def test_a_missing_head_is_dead_unless_configured_otherwise(self):
        """A head sent as None counts as dead by default; missing_is_dead = false ignores it."""
        tl = grad_run(40, 10, 0, norms={**TYPICAL, "blend": None})
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["head"]) for a in alerts if a.rule == "head_balance"] == [(44, "blend")]
        alerts, _ = await play(tl.items, config(head_balance={"missing_is_dead": False}))
        assert of(alerts, "head_balance") == []

    async def test_every_head_dead_is_not_an_imbalance(self):
        """All heads at 0 is gradient_scale's vanishing gradient, not head_balance's."""
        alerts, _ = await play(grad_run(40, 10, 0, scale=0.0).items)
        assert of(alerts, "head_balance") == []
        assert of(alerts, "gradient_scale")

    async def test_a_head_that_always_carries_most_of_the_gradient_is_that_models_normal(self):
        """A Gaussian policy: the action-mean layer holds 95-99% of the policy heads' squared norm against
        the one-number log_std, from the first update on: nothing fires (a jump against its own usual would)."""
        rng, p, tl = random.Random(5), Producer(), Timeline()
        typical = {"mean": 1.0, "log_std": 0.2, "value": 3.0}
        for step in range(100):
            tl.send(p.grads(step, norms=noisy(rng, typical, 0.3)))
        alerts, _ = await play(tl.items)
        assert of(alerts, "head_balance") == []
        for step in range(100, 110):
            tl.send(p.grads(step, norms={**noisy(rng, typical, 0.3), "log_std": 0.2 * 20}))
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["head"]) for a in alerts if a.rule == "head_balance" and not a.cleared] == [(102, "log_std")]

    async def test_shares_of_a_vanishing_gradient_are_not_judged(self):
        """After a collapse every norm is 1e-5 of its usual size: whichever head is largest then, it does not 'dominate'."""
        p, tl = Producer(), Timeline()
        for step in range(40):
            tl.send(p.grads(step))
        for step in range(40, 50):
            tl.send(p.grads(step, norms={**{h: v * 1e-5 for h, v in TYPICAL.items()}, "op": 24.0 * 1e-5}))
        alerts, _ = await play(tl.items)
        assert [a for a in alerts if a.rule == "head_balance" and "dominates" in a.message] == []

    async def test_dominance_needs_its_warm_up(self):
        """A head dominating from the very first update has no usual share yet to be compared with: judged after 8 updates."""
        alerts, _ = await play(grad_run(0, 20, 0, norms={**TYPICAL, "op": 24.0}).items)
        assert of(alerts, "head_balance") == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_heads_do_not_flap(self, seed):
        """300 updates with 30% noise per head: no head_balance alert."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            tl.send(p.grads(step, norms=noisy(rng, TYPICAL, 0.3)))
        alerts, _ = await play(tl.items)
        assert of(alerts, "head_balance") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved three updates into a dead head fires and clears as the uninterrupted run."""
        await assert_resumes_identically(grad_run(40, 10, 10, norms={**TYPICAL, "blend": 0.0}), split=43, rule="head_balance")

    def test_defaults_are_the_documented_ones(self):
        """Share 0.9 and odds 10x the usual over 24 updates after 8 (value head ignored), dead at 1e-8 or None
        for 5 updates, fire after 3, clear after 5."""
        assert_documented_defaults("head_balance", dominance_share=0.9, dominance_jump=10.0, baseline_updates=24, warmup=8,
                                   min_norm=1e-6, dead_norm=1e-8, missing_is_dead=True, dead_after=5, fire_after=3, clear_after=5)
        assert RULES["head_balance"].Config().dominance_ignore_heads == ["value"]
        assert "value head" in documented(RULES["head_balance"].Config, "dominance_ignore_heads")


def clip_run(ratios: list[float], pre: float = 2.0) -> Timeline:
    p, tl = Producer(), Timeline()
    for step, ratio in enumerate(ratios):
        tl.send(p.grads(step, pre_clip_total=pre, post_clip_total=pre * ratio, max_norm=0.5))
    return tl


class TestClipping:
    async def test_moderate_clipping_raises_nothing(self):
        """A clip ratio of 0.25 every step is ordinary clipping."""
        alerts, _ = await play(clip_run([0.25] * 100).items)
        assert alerts == []

    async def test_hard_clipping_every_step_fires_on_the_third_and_clears_after_five(self):
        """Ratio 0.01 from step 20: fires at 22; ratio 0.5 from step 30 clears at 34."""
        alerts, _ = await play(clip_run([0.25] * 20 + [0.01] * 10 + [0.5] * 10).items)
        fired = [a for a in alerts if a.rule == "clipping"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 22), (True, 34)]
        assert fired[0].values["clip_ratio"] == pytest.approx(0.01)

    async def test_without_a_post_clip_norm_the_clip_factor_comes_from_max_norm(self):
        """pre_clip_total 50 with max_norm 0.5 is a clip factor of 0.01."""
        p, tl = Producer(), Timeline()
        for step in range(10):
            tl.send(p.grads(step, pre_clip_total=50.0, max_norm=0.5))
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["clip_ratio"]) for a in alerts if a.rule == "clipping"] == [(2, 0.01)]

    async def test_occasional_hard_clips_do_not_fire(self):
        """Every other update clipped hard is what clipping is for: nothing fires."""
        alerts, _ = await play(clip_run([0.01, 0.5] * 50).items)
        assert of(alerts, "clipping") == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_clip_ratios_do_not_flap(self, seed):
        """Ratios drawn from 0.05 to 1.0 (a few below the limit, never three in a row by much) raise at most one alert."""
        rng = random.Random(seed)
        ratios = [min(1.0, 0.3 * math.exp(rng.gauss(0, 0.6))) for _ in range(300)]
        alerts, _ = await play(clip_run(ratios).items)
        assert len([a for a in alerts if a.rule == "clipping" and not a.cleared]) <= 1

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two updates into hard clipping fires and clears as the uninterrupted run."""
        await assert_resumes_identically(clip_run([0.25] * 20 + [0.01] * 10 + [0.5] * 10), split=22, rule="clipping")

    def test_defaults_are_the_documented_ones(self):
        """Ratio 0.1, fire after 3, clear after 5."""
        assert_documented_defaults("clipping", min_clip_ratio=0.1, fire_after=3, clear_after=5)


def lstm_run(healthy: int = 20, fault: int = 6, after: int = 10, **fault_fields) -> Timeline:
    p, tl = Producer(), Timeline()
    for step in range(healthy + fault + after):
        tl.send(p.lstm(step, **(fault_fields if healthy <= step < healthy + fault else {})))
    return tl


class TestLstmState:
    async def test_a_healthy_state_raises_nothing(self):
        """Typical h/c statistics for 100 steps: no alert."""
        alerts, _ = await play(lstm_run(100, 0, 0).items)
        assert alerts == []

    @pytest.mark.parametrize(
        ("fields", "condition"),
        [
            ({"c_rms": 20.0}, "c_explosion"),
            ({"h_rms": 15.0}, "h_explosion"),
            ({"h_rms": 1e-8}, "h_vanishing"),
            ({"c_rms": 1e-9}, "c_vanishing"),
            ({"c_env_max_rms": 50.0}, "c_env_explosion"),
            ({"h_env_max_rms": 12.0}, "h_env_explosion"),
            ({"h_rms": 0.95}, "h_saturation"),
        ],
    )
    async def test_each_fault_fires_on_the_third_event_and_clears_after_five(self, fields, condition):
        """A fault from step 20 fires at 22 and, healthy again from 26, clears at 30."""
        alerts, _ = await play(lstm_run(**fields).items)
        fired = [a for a in alerts if a.rule == "lstm_state"]
        assert [(a.cleared, a.step, a.values["condition"]) for a in fired] == [(False, 22, condition), (True, 30, condition)]

    async def test_an_all_zero_state_is_a_reset_not_a_vanishing(self):
        """rms exactly 0 (what a reset gives) is not counted as vanished."""
        alerts, _ = await play(lstm_run(5, 10, 5, h_rms=0.0, c_rms=0.0, h_max_abs=0.0).items)
        assert alerts == []

    async def test_nan_is_left_to_non_finite_and_does_not_clear_an_explosion(self):
        """A NaN c_rms during an explosion: non_finite fires; lstm_state neither repeats it nor clears."""
        p, tl = Producer(), Timeline()
        for step in range(20):
            tl.send(p.lstm(step, c_rms=20.0 if step >= 5 else 0.8))
            if step >= 8:
                tl.send(p.lstm(step, c_rms=math.nan, has_nan=True))
        alerts, _ = await play(tl.items)
        assert of(alerts, "lstm_state") == [("warning", False, 7)]
        assert of(alerts, "non_finite")[0] == ("critical", False, 8)

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_states_do_not_flap(self, seed):
        """c_rms with 50% noise, h_rms up to 0.6 and h_max_abs up to 0.9999: no alert."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            tl.send(p.lstm(step, c_rms=0.8 * math.exp(rng.gauss(0, 0.5)), h_rms=rng.uniform(0.1, 0.6), h_max_abs=rng.uniform(0.7, 0.9999)))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two events into a c explosion fires and clears as the uninterrupted run."""
        await assert_resumes_identically(lstm_run(c_rms=20.0), split=22, rule="lstm_state")

    def test_defaults_are_the_documented_ones(self):
        """rms 10 and 1e-6, per-environment rms 10, saturation at h rms 0.9, fire after 3, clear after 5."""
        assert_documented_defaults("lstm_state", max_rms=10.0, min_rms=1e-6, max_env_rms=10.0, saturation_rms=0.9,
                                   fire_after=3, clear_after=5)


def ppo_run(values: list[dict]) -> Timeline:
    p, tl = Producer(), Timeline()
    for step, fields in enumerate(values):
        tl.send(p.ppo(step, **fields))
    return tl


class TestPpoRatio:
    async def test_ratios_near_one_raise_nothing(self):
        """Typical ratio range [0.8, 1.25] for 100 updates: no alert."""
        alerts, _ = await play(ppo_run([{}] * 100).items)
        assert alerts == []

    async def test_an_exploding_ratio_fires_on_the_second_update_and_clears_after_three(self):
        """ratio_max 8 from step 10 fires at 11; back in range from 14, clears at 16."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"ratio_max": 8.0}] * 4 + [{}] * 5).items)
        fired = [a for a in alerts if a.rule == "ppo_ratio"]
        assert [(a.cleared, a.step, a.values["condition"]) for a in fired] == [(False, 11, "explosion"), (True, 16, "explosion")]

    async def test_a_collapsing_ratio_fires(self):
        """ratio_min 0.05 twice fires the collapse subject."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"ratio_min": 0.05}] * 2).items)
        assert [(a.step, a.values["condition"]) for a in alerts if a.rule == "ppo_ratio"] == [(11, "collapse")]

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_one_extreme_minibatch_now_and_then_does_not_flap(self, seed):
        """Isolated ratio_max spikes above 5 (never twice in a row) raise nothing."""
        rng = random.Random(seed)
        values, last = [], False
        for _ in range(300):
            spike = not last and rng.random() < 0.1
            values.append({"ratio_max": 6.0 if spike else rng.uniform(1.1, 2.0), "ratio_min": rng.uniform(0.3, 0.9)})
            last = spike
        alerts, _ = await play(ppo_run(values).items)
        assert of(alerts, "ppo_ratio") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved after the first exploding update fires and clears as the uninterrupted run."""
        await assert_resumes_identically(ppo_run([{}] * 10 + [{"ratio_max": 8.0}] * 4 + [{}] * 5), split=11, rule="ppo_ratio")

    def test_defaults_are_the_documented_ones(self):
        """Ratio 5.0 and 0.1, fire after 2, clear after 3."""
        assert_documented_defaults("ppo_ratio", max_ratio=5.0, min_ratio=0.1, fire_after=2, clear_after=3)


class TestApproxKl:
    async def test_a_calm_policy_raises_nothing(self):
        """approx_kl 0.01 for 100 updates: no alert."""
        alerts, _ = await play(ppo_run([{}] * 100).items)
        assert alerts == []

    async def test_a_spike_warns_on_its_second_update_escalates_at_once_and_each_level_clears(self):
        """0.2 at step 10 and 0.8 at 11: the warning (two updates above 0.1) and the critical (at once)
        both come at step 11; three calm updates clear both at 14."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 0.2}, {"approx_kl": 0.8}] + [{}] * 5).items)
        assert of(alerts, "approx_kl") == [("warning", False, 11), ("critical", False, 11), ("info", True, 14), ("info", True, 14)]
        assert alerts[1].values == {"approx_kl": 0.8, "threshold": 0.5}

    async def test_one_odd_update_below_the_critical_level_is_not_an_alert(self):
        """A single 0.45 among calm updates (seen in healthy small-batch recurrent runs): nothing; a single 4.0: critical at once."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 0.45}] + [{}] * 10).items)
        assert of(alerts, "approx_kl") == []
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 4.0}] + [{}] * 10).items)
        assert [(sev, step) for sev, cleared, step in of(alerts, "approx_kl") if not cleared] == [("critical", 10)]

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_kl_does_not_flap(self, seed):
        """KL around 0.015 with 50% noise for 300 updates: no alert."""
        rng = random.Random(seed)
        alerts, _ = await play(ppo_run([{"approx_kl": 0.015 * math.exp(rng.gauss(0, 0.5))} for _ in range(300)]).items)
        assert alerts == []

    async def test_kl_hovering_at_the_level_raises_an_alert_per_excursion_not_per_update(self):
        """KL 0.12 twice, then alternating 0.12 / 0.05, stays one alert: the calm updates never reach clear_after in a row."""
        alerts, _ = await play(ppo_run([{"approx_kl": 0.12}] + [{"approx_kl": 0.12 if step % 2 else 0.05} for step in range(1, 40)]
                                       + [{}] * 3).items)
        assert of(alerts, "approx_kl") == [("warning", False, 1), ("info", True, 42)]

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved between the warning and the critical update continues as the uninterrupted run."""
        await assert_resumes_identically(ppo_run([{}] * 10 + [{"approx_kl": 0.2}, {"approx_kl": 0.8}] + [{}] * 5), split=11,
                                         rule="approx_kl")

    def test_defaults_are_the_documented_ones(self):
        """KL 0.1 warning after 2 updates, 0.5 critical at once, clear after 3."""
        assert_documented_defaults("approx_kl", warning_kl=0.1, critical_kl=0.5, fire_after=2, clear_after=3)


def entropy_run(op: list[float]) -> Timeline:
    return ppo_run([{"entropy": {"slot": 1.0, "blueprint": 0.9, "blend": 0.8, "op": value}} for value in op])


class TestEntropyCollapse:
    async def test_exploring_heads_raise_nothing(self):
        """Entropies around 1 nat: no alert."""
        alerts, _ = await play(entropy_run([1.0] * 100).items)
        assert alerts == []

    async def test_a_collapsed_head_fires_on_the_third_update_and_clears_only_above_the_clear_level(self):
        """'op' at 0.05 from step 10 fires at 12; at 0.2 it stays collapsed; above 0.3 it clears on the third update."""
        alerts, _ = await play(entropy_run([1.0] * 10 + [0.05] * 5 + [0.2] * 20 + [0.5] * 5).items)
        fired = [a for a in alerts if a.rule == "entropy_collapse"]
        assert [(a.cleared, a.step, a.values["head"]) for a in fired] == [(False, 12, "op"), (True, 37, "op")]

    async def test_a_head_hovering_at_the_threshold_raises_one_alert(self):
        """After a sudden fall from 1.0, 'op' hovers between 0.05 and 0.25 for 100 updates: one alert (it never clears)."""
        rng = random.Random(0)
        alerts, _ = await play(entropy_run([1.0] * 10 + [0.05] * 3 + [rng.uniform(0.05, 0.25) for _ in range(100)]).items)
        assert of(alerts, "entropy_collapse") == [("warning", False, 12)]

    async def test_a_policy_converging_slowly_on_a_learned_task_is_not_a_collapse(self):
        """Entropy falling steadily from 2.5 to 0.05 over 90 updates (a task learned): nothing; from 1.3 to 0.05 in
        five updates: fires."""
        alerts, _ = await play(entropy_run([2.5 * (0.05 / 2.5) ** (i / 90) for i in range(100)]).items)
        assert of(alerts, "entropy_collapse") == []
        alerts, _ = await play(entropy_run([1.3] * 20 + [0.6, 0.3, 0.15, 0.08, 0.05] + [0.05] * 10).items)
        assert [step for sev, cleared, step in of(alerts, "entropy_collapse") if not cleared] == [25]

    async def test_ignored_heads_are_not_checked(self):
        """ignore_heads = ["op"] silences that head."""
        alerts, _ = await play(entropy_run([0.01] * 10).items, config(entropy_collapse={"ignore_heads": ["op"]}))
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_entropy_does_not_flap(self, seed):
        """Entropy drawn around 0.6 with 40% noise: no alert."""
        rng = random.Random(seed)
        alerts, _ = await play(entropy_run([0.6 * math.exp(rng.gauss(0, 0.4)) for _ in range(300)]).items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved while collapsed and between the levels continues as the uninterrupted run."""
        await assert_resumes_identically(entropy_run([1.0] * 10 + [0.05] * 5 + [0.2] * 20 + [0.5] * 5), split=20,
                                         rule="entropy_collapse")

    def test_defaults_are_the_documented_ones(self):
        """Collapse below 0.1, clear above 0.3, fire after 3, clear after 3."""
        assert_documented_defaults("entropy_collapse", collapse_below=0.1, clear_above=0.3, sudden_within=10, sudden_ratio=0.25,
                                   fire_after=3, clear_after=3)

    def test_the_clear_level_may_not_be_below_the_collapse_level(self):
        """clear_above < collapse_below is a configuration error."""
        with pytest.raises(ValueError, match="clear_above"):
            config(entropy_collapse={"collapse_below": 0.5, "clear_above": 0.2})


def ev_run(values: list[float | None]) -> Timeline:
    return ppo_run([{"explained_variance": value} for value in values])


class TestExplainedVariance:
    async def test_a_value_head_still_learning_is_not_a_collapse(self):
        """EV rising from -0.5 to 0.45 and dipping back is early training: no alert."""
        alerts, _ = await play(ev_run([-0.5 + 0.01 * i for i in range(95)] + [-0.3] * 10).items)
        assert alerts == []

    async def test_a_collapse_after_learning_fires_on_the_third_update_and_clears(self):
        """EV 0.8, then -0.2 from step 20: fires at 22; 0.6 from 25 clears at 27."""
        alerts, _ = await play(ev_run([0.8] * 20 + [-0.2] * 5 + [0.6] * 5).items)
        fired = [a for a in alerts if a.rule == "explained_variance"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 22), (True, 27)]
        assert "no longer predicts returns" in fired[0].message

    async def test_undefined_values_are_skipped_not_read_as_zero(self):
        """NaN and None between low values neither count nor reset the count (and NaN is not non_finite's either)."""
        alerts, _ = await play(ev_run([0.8] * 20 + [-0.2, math.nan, None, -0.2, math.nan, -0.2]).items)
        assert of(alerts, "explained_variance") == [("warning", False, 25)]
        assert of(alerts, "non_finite") == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_values_do_not_flap(self, seed):
        """EV between 0.3 and 0.95 (a dip now and then) raises nothing."""
        rng = random.Random(seed)
        alerts, _ = await play(ev_run([rng.uniform(0.3, 0.95) for _ in range(300)]).items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved one update into the collapse (established, count pending) continues identically."""
        await assert_resumes_identically(ev_run([0.8] * 20 + [-0.2] * 5 + [0.6] * 5), split=21, rule="explained_variance")

    def test_defaults_are_the_documented_ones(self):
        """Established above 0.5, collapse below 0.0, fire after 3, clear after 3."""
        assert_documented_defaults("explained_variance", established=0.5, collapse_below=0.0, fire_after=3, clear_after=3)


def timing_run(update_ms: list[float], clock: str = "cuda_event", rollout_ms: float = 20.0) -> Timeline:
    p, tl = Producer(), Timeline()
    for step, ms in enumerate(update_ms):
        tl.send(p.timing(step, {"rollout": rollout_ms, "update": ms}, clock=clock))
    return tl


class TestStepTime:
    @staticmethod
    def both(factors: list[float]) -> Timeline:
        """Rollout 20 ms and update 8 ms, both times the step's factor (a machine slowing every phase)."""
        p, tl = Producer(), Timeline()
        for step, f in enumerate(factors):
            tl.send(p.timing(step, {"rollout": 20.0 * f, "update": 8.0 * f}))
        return tl

    async def test_every_phase_a_little_slower_is_the_machine_and_not_an_alert(self):
        """Both phases 1.5x from step 30 on (a contended machine): no alert, no phase blamed."""
        alerts, _ = await play(self.both([1.0] * 30 + [1.5] * 60).items)
        assert of(alerts, "step_time") == []

    async def test_a_lasting_machine_slowdown_is_one_notice_about_the_machine(self):
        """Both phases 3x from step 30 to 69: one info notice about the machine (phase "*") at step 49, its
        20th step, none per phase; it clears three steps after the phases are back."""
        alerts, _ = await play(self.both([1.0] * 30 + [3.0] * 40 + [1.0] * 10).items)
        fired = [a for a in alerts if a.rule == "step_time"]
        assert [(a.severity, a.cleared, a.step, a.values["phase"]) for a in fired] == [
            ("info", False, 49, "*"), ("info", True, 72, "*")]
        assert "the machine" in fired[0].message and "not one part of the trainer" in fired[0].message

    async def test_a_short_machine_slowdown_is_not_reported(self):
        """Another job on the machine for a few steps (as on healthy SB3 seed 203: rollout 3.5x and update 2.9x
        for 5 steps, then 2.2-3.9x on and off) is no fault of the run: nothing, not even a notice; and the
        baselines are left as they were, so one phase slowing alone afterwards is still the trainer's, at its
        fifth step."""
        rng, p, tl = random.Random(3), Producer(), Timeline()
        for step in range(90):
            f = (1.0, 1.0)
            if 30 <= step < 35 or 40 <= step < 52 and step % 3:
                f = (3.5, 2.9)
            if step >= 70:
                f = (1.0, 2.0)
            phases = noisy(rng, {"rollout": 20.0 * f[0], "update": 8.0 * f[1]}, 0.05)
            tl.send(p.timing(step, phases, clock="cpu"))
        alerts, _ = await play(tl.items)
        fired = [a for a in alerts if a.rule == "step_time" and not a.cleared]
        assert [(a.severity, a.step, a.values["phase"]) for a in fired] == [("warning", 74, "update")]
        assert "not the machine" in fired[0].message

    async def test_a_lasting_machine_slowdown_just_beyond_its_factor_is_noticed(self):
        """Both phases 2.2x for 40 steps: the baselines wait while the machine is beyond its factor (following
        it, they would have taken the slowdown below 2x before its 20th step), so the notice comes at step 49."""
        alerts, _ = await play(self.both([1.0] * 30 + [2.2] * 40).items)
        assert of(alerts, "step_time") == [("info", False, 49)]

    async def test_a_phase_that_jitters_a_lot_is_held_to_its_own_noise(self):
        """A host-timed rollout whose time swings by 40% (log-normal) from step to step: 1.7x for three steps is
        within its noise (no alert); the same 1.7x for five steps on a steady phase fires."""
        rng, p, tl = random.Random(4), Producer(), Timeline()
        for step in range(60):
            slow = 1.7 if 40 <= step < 45 else 1.0
            tl.send(p.timing(step, {"rollout": 50.0 * math.exp(rng.gauss(0.0, 0.4)) * slow, "update": 30.0}, clock="cpu"))
        alerts, _ = await play(tl.items)
        assert of(alerts, "step_time") == []
        alerts, _ = await play(timing_run([8.0] * 40 + [8.0 * 1.7] * 5 + [8.0] * 5).items)
        assert [a.step for a in alerts if a.rule == "step_time" and not a.cleared] == [44]

    async def test_contention_slowing_every_phase_unevenly_is_the_machine(self):
        """Measured under contention: the host-bound rollout 2x while the update is 1.4x, for 20 steps: no
        phase is blamed, and the machine (below 2x for its least slowed phase) is not reported."""
        p, tl = Producer(), Timeline()
        for step in range(80):
            f = (2.0, 1.4) if 40 <= step < 60 else (1.0, 1.0)
            tl.send(p.timing(step, {"rollout": 20.0 * f[0], "update": 8.0 * f[1]}))
        alerts, _ = await play(tl.items)
        assert of(alerts, "step_time") == []

    async def test_one_phase_slowing_alone_is_the_trainer(self):
        """Only the update phase 2x: the alert names it and says the other phases kept their pace."""
        alerts, _ = await play(timing_run([8.0] * 30 + [16.0] * 10).items)
        [fired] = [a for a in alerts if a.rule == "step_time" and not a.cleared]
        assert fired.values["phase"] == "update" and "not the machine" in fired.message

    async def test_steady_phases_raise_nothing(self):
        """Constant phase times for 100 steps: no alert."""
        alerts, _ = await play(timing_run([8.0] * 100).items)
        assert alerts == []

    async def test_a_regression_fires_on_the_fifth_step_names_the_clock_and_clears(self):
        """'update' 8 -> 16 ms from step 30 fires at 34 (its fifth slow step) (cuda_event clock); back to 8 ms from 40, clears at 42."""
        alerts, _ = await play(timing_run([8.0] * 30 + [16.0] * 10 + [8.0] * 5).items)
        fired = [a for a in alerts if a.rule == "step_time"]
        assert [(a.cleared, a.step, a.values["phase"]) for a in fired] == [(False, 34, "update"), (True, 42, "update")]
        assert fired[0].values["factor"] == 2.0 and fired[0].values["clock"] == "cuda_event"
        assert "cuda_event clock" in fired[0].message

    async def test_a_lasting_regression_does_not_become_the_new_normal(self):
        """300 steps at twice the baseline: one alert that stays active (the baseline is frozen)."""
        alerts, pipeline = await play(timing_run([8.0] * 30 + [16.0] * 300).items)
        assert of(alerts, "step_time") == [("warning", False, 34)]
        state = pipeline.find(RULES["step_time"])[0].state_dict()["extra"]
        assert [s["baseline"][0] for s in state.values() if s["phase"] == "update"] == [8.0]

    async def test_slow_first_steps_do_not_set_the_baseline(self):
        """Three 500 ms warm-up steps (compilation) are outvoted by the warm-up median; a later 2x still fires."""
        alerts, _ = await play(timing_run([500.0] * 3 + [8.0] * 40 + [16.0] * 5).items)
        assert of(alerts, "step_time") == [("warning", False, 47)]

    async def test_sub_millisecond_phases_are_not_judged(self):
        """A 0.05 ms phase jumping tenfold is noise, not a regression."""
        p, tl = Producer(), Timeline()
        for step in range(50):
            tl.send(p.timing(step, {"log": 0.05 if step < 30 else 0.5}, clock="cpu"))
        alerts, _ = await play(tl.items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_timings_do_not_flap(self, seed):
        """10% jitter on every phase with an occasional single slow step (a checkpoint save): no alert."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            phases = noisy(rng, {"rollout": 20.0, "update": 8.0}, 0.1)
            if step % 50 == 49:
                phases["update"] *= 5
            tl.send(p.timing(step, phases))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two steps into the regression fires and clears as the uninterrupted run."""
        await assert_resumes_identically(timing_run([8.0] * 30 + [16.0] * 10 + [8.0] * 5), split=32, rule="step_time")

    def test_defaults_are_the_documented_ones(self):
        """Factor 1.5 over a 0.99 EMA seeded by the median of 10, phases under 1 ms skipped, fire after 3, clear after 3."""
        assert_documented_defaults("step_time", noise_z=4.0, spread_window=24, min_spread=0.05, machine_share=1.2, machine_factor=2.0, regression_factor=1.5, momentum=0.99, warmup=10, min_baseline_ms=1.0,
                                   machine_fire_after=20, machine_severity="info", fire_after=5, clear_after=3)


def chatty(tl: Timeline, p: Producer, steps: range, every_s: float = 0.1) -> None:
    """A producer sending one step's event every ``every_s``, with the daemon's 1 s clock ticks in between."""
    elapsed = 0.0
    for step in steps:
        tl.send(p.timing(step, {"update": 8.0}), after_s=every_s)
        elapsed += every_s
        if elapsed >= 1.0:
            tl.tick(0.0)
            elapsed = 0.0


class TestSilentProducer:
    async def test_a_talking_producer_raises_nothing(self):
        """Events every 0.1 s with clock ticks for 30 s, then run_end and 60 s of ticks: no alert."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunStart, 0, host="h", pid=1))
        chatty(tl, p, range(300))
        tl.send(p.make(RunEnd, 300))
        tl.ticks(60)
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_producer_gone_quiet_is_hung_or_dead_once_and_clears_when_it_speaks(self):
        """Silent after step 49: one critical alert at the first tick past 10 s; its next event clears it."""
        p, tl = Producer(), Timeline()
        chatty(tl, p, range(50))
        tl.ticks(30)
        tl.send(p.timing(50, {"update": 8.0}))
        alerts, _ = await play(tl.items)
        assert of(alerts, "silent_producer") == [("critical", False, 49), ("info", True, 50)]
        fired = alerts[0]
        assert "hung or died" in fired.message and "since step 49" in fired.message
        assert fired.values["silent_s"] == pytest.approx(11.0) and fired.values["threshold_s"] == 10.0
        assert "after 30.1 s of silence" in alerts[1].message

    async def test_a_slow_producer_is_judged_by_its_own_pace(self):
        """A producer reporting every 2 s gets 20 x 2 = 40 s before it is called silent, not 10."""
        p, tl = Producer(), Timeline()
        for step in range(30):
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.5)
            tl.tick(1.0)
            tl.tick(0.5)  # messages 2 s apart, ticks in between
        tl.ticks(45)
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["silent_s"]) for a in alerts] == [(29, 40.5)]
        assert alerts[0].values["threshold_s"] == pytest.approx(40.0)

    async def test_run_end_closes_the_session(self):
        """After run_end no silence is reported, however long."""
        p, tl = Producer(), Timeline()
        chatty(tl, p, range(20))
        tl.send(p.make(RunEnd, 20, status="interrupted"))
        tl.ticks(120)
        alerts, pipeline = await play(tl.items)
        assert alerts == []
        assert pipeline.find(RULES["silent_producer"])[0].state_dict()["extra"]["sessions"] == {}

    async def test_a_restarted_trainer_replaces_its_silent_session(self):
        """A new session of the same run and rank clears the old session's alert: the trainer restarted."""
        old, new, tl = Producer(session=1), Producer(session=2), Timeline()
        chatty(tl, old, range(10))
        tl.ticks(15)
        tl.send(new.make(RunStart, 10, host="h", pid=2))
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.session, a.step) for a in alerts] == [(False, 1, 9), (True, 1, 10)]
        assert "replaced by session 2" in alerts[1].message

    async def test_a_checkpoint_during_the_silence_continues_identically(self):
        """State saved five seconds into the silence fires and clears as the uninterrupted run."""
        p, tl = Producer(), Timeline()
        chatty(tl, p, range(50))
        tl.ticks(30)
        tl.send(p.timing(50, {"update": 8.0}))
        await assert_resumes_identically(tl, split=len(tl.items) - 26, rule="silent_producer")

    def test_defaults_are_the_documented_ones(self):
        """Critical; at least 10 s, or 20x the usual gap (EMA 0.9); scans every 0.5 s; fires and clears at once."""
        assert_documented_defaults("silent_producer", min_silence_s=10.0, silence_factor=20.0, gap_momentum=0.9,
                                   scan_interval_s=0.5, fire_after=1, clear_after=1)
        assert RULES["silent_producer"].Config().severity == "critical"


class TestRunFailed:
    async def test_a_run_ending_with_an_error_is_critical_with_the_exception(self):
        """run_end with status error raises one critical alert carrying the error text."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunStart, 0, host="h", pid=1))
        tl.send(p.make(RunEnd, 7, status="error", error="RuntimeError: CUDA error: an illegal memory access"))
        alerts, _ = await play(tl.items)
        assert of(alerts, "run_failed") == [("critical", False, 7)]
        assert alerts[0].message.endswith("ended with an error at step 7: RuntimeError: CUDA error: an illegal memory access")

    @pytest.mark.parametrize("status", ["ok", "interrupted", "exit"])
    async def test_other_endings_raise_nothing_by_default(self, status):
        """ok, interrupted and exit are not failures by default."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunEnd, 3, status=status))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_the_statuses_are_configurable(self):
        """statuses = ["error", "exit"] also reports an interpreter that exited without closing."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunEnd, 3, status="exit"))
        alerts, _ = await play(tl.items, config(run_failed={"statuses": ["error", "exit"]}))
        assert "ended with status 'exit' at step 3" in alerts[0].message

    def test_defaults_are_the_documented_ones(self):
        """Critical, on status error."""
        defaults = RULES["run_failed"].Config()
        assert (defaults.severity, defaults.statuses) == ("critical", ["error"])


class TestProducerExited:
    async def test_the_exit_of_a_producing_process_is_critical_about_each_open_session(self):
        """The watched pid exits: one critical alert per open session it produced (two ranks here), at its
        last step, stamped with the arrival time of the exit tick; another host's same pid raises nothing."""
        r0, r1, other, tl = Producer(rank=0, session=1), Producer(rank=1, session=2), Producer("other", session=3), Timeline()
        tl.send(r0.make(RunStart, 0, host="h", pid=42))
        tl.send(r1.make(RunStart, 0, host="h", pid=42))
        tl.send(other.make(RunStart, 0, host="elsewhere", pid=42))
        for step in range(1, 8):
            tl.send(r0.timing(step, {"update": 8.0}))
            tl.send(r1.timing(step, {"update": 8.0}))
        tl.send(r1.timing(8, {"update": 8.0}))
        tl.exited(42)
        exit_ns = tl.now
        tl.ticks(3)
        alerts, pipeline = await play(tl.items)
        fired = [a for a in alerts if a.rule == "producer_exited"]
        assert [(a.severity, a.cleared, a.run_id, a.rank, a.session, a.step) for a in fired] == [
            ("critical", False, "run", 0, 1, 7), ("critical", False, "run", 1, 2, 8)]
        assert fired[0].message == ("the trainer process (pid 42 on h) exited without ending run 'run' rank 0 (session 1), at step 7")
        assert fired[0].values == {"pid": 42, "host": "h", "last_step": 7}
        assert all(a.received_at == exit_ns / 1e9 for a in fired)
        (rule,) = pipeline.find(RULES["producer_exited"])
        assert [key[0] for key in rule.state_dict()["extra"]["sessions"]] == ["other"]

    async def test_ended_sessions_and_other_processes_raise_nothing(self):
        """A session that sent run_end, or one of another pid, is not about the process that exited."""
        ended, alive, tl = Producer(session=1), Producer("alive", session=2), Timeline()
        tl.send(ended.make(RunStart, 0, host="h", pid=42))
        tl.send(alive.make(RunStart, 0, host="h", pid=43))
        tl.send(ended.make(RunEnd, 5, status="ok"))
        tl.exited(42)
        alerts, _ = await play(tl.items)
        assert [a for a in alerts if a.rule == "producer_exited"] == []

    async def test_a_checkpoint_before_the_exit_continues_identically(self):
        """State saved mid-run (the sessions and their pids) raises the same alert after a restart."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunStart, 0, host="h", pid=42))
        chatty(tl, p, range(1, 20))
        tl.exited(42)
        whole, _ = await play(tl.items)
        first, pipeline = await play(tl.items[:10])
        rest, _ = await play(tl.items[10:], state=checkpoint(pipeline))
        assert [alert_record(a) for a in first + rest] == [alert_record(a) for a in whole]
        assert of(whole, "producer_exited") == [("critical", False, 19)]

    async def test_the_exit_is_replayed_from_the_log(self, tmp_path):
        """The exit tick is logged with its note: replay raises the same alert with the same received_at."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunStart, 0, host="h", pid=42))
        chatty(tl, p, range(1, 5))
        tl.exited(42)
        sink = RecordingSink()
        pipeline = build_pipeline(ConsumerConfig(), log_dir=tmp_path, console=False, extra_sinks=[sink])
        await pipeline.start()
        for recv_ns, raw in tl.items:
            if raw is None or isinstance(raw, ExitNote):
                await pipeline.tick(recv_ns, note=bytes(raw or b""))
            else:
                await pipeline.consume(raw, recv_ns)
        await pipeline.close()
        assert of(sink.alerts, "producer_exited") == [("critical", False, 4)]
        result = await replay([tmp_path], ConsumerConfig())
        assert [alert_record(a) for a in result.alerts] == [alert_record(a) for a in sink.alerts]

    def test_defaults_are_the_documented_ones(self):
        """Critical."""
        assert RULES["producer_exited"].Config().severity == "critical"


def ranks_run(steps: int, world: int = 4, *, stop: dict[int, int] | None = None, scale: dict[int, float] | None = None,
              end: dict[int, int] | None = None) -> Timeline:
    """Ranks stepping in lockstep; ``stop`` {rank: last step} hangs one, ``scale`` multiplies one's norms from step 10."""
    producers = [Producer(rank=rank, session=100 + rank) for rank in range(world)]
    tl = Timeline()
    for p in producers:
        tl.send(p.make(RunStart, 0, host=f"node{p.rank}", pid=1, world_size=world), after_s=0.001)
    for step in range(steps):
        for p in producers:
            if stop and p.rank in stop and step > stop[p.rank]:
                continue
            factor = (scale or {}).get(p.rank, 1.0) if step >= 10 else 1.0
            tl.send(p.grads(step, scale=factor), after_s=0.001)
            if end and end.get(p.rank) == step:
                tl.send(p.make(RunEnd, step), after_s=0.001)
    return tl


class TestRankDivergence:
    async def test_ranks_in_lockstep_raise_nothing(self):
        """Four ranks with identical norms for 200 steps: no alert."""
        alerts, _ = await play(ranks_run(200).items)
        assert alerts == []

    async def test_a_straggler_fires_about_itself_on_the_third_message_past_the_lag(self):
        """Rank 3 stuck at step 20: at step 121 the others are 101 ahead; the third such message fires, about rank 3."""
        alerts, pipeline = await play(ranks_run(200, stop={3: 20}).items)
        fired = [a for a in alerts if a.rule == "rank_divergence"]
        assert [(a.rank, a.step, a.cleared) for a in fired] == [(3, 20, False)]
        assert fired[0].values["lag"] == 101 and "a straggler or a hung rank" in fired[0].message
        state = pipeline.find(RULES["rank_divergence"])[0].state_dict()["extra"]["run"]
        assert len(state["pending"]) <= 32  # steps rank 3 never reported are dropped: bounded memory

    async def test_the_straggler_ending_its_session_clears_the_lag(self):
        """A lagging rank whose session ends is no longer waited for."""
        alerts, _ = await play(ranks_run(200, stop={3: 20}, end={3: 20, 0: 199, 1: 199, 2: 199}).items)
        assert of(alerts, "rank_divergence") == []  # it ended before it lagged
        tl = ranks_run(150, stop={3: 20})
        p3 = Producer(rank=3, session=103)
        p3.seq = 22
        tl.send(p3.make(RunEnd, 20))
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.rank) for a in alerts if a.rule == "rank_divergence"] == [(False, 3), (True, 3)]

    async def test_a_rank_whose_gradient_differs_fires_about_that_rank(self):
        """Rank 2's norms x50 from step 10: after three steps it fires about rank 2, and only rank 2."""
        alerts, _ = await play(ranks_run(30, scale={2: 50.0}).items)
        fired = [a for a in alerts if a.rule == "rank_divergence"]
        assert [(a.rank, a.step, a.cleared) for a in fired] == [(2, 12, False)]
        assert fired[0].values["ratio"] == pytest.approx(50.0)

    async def test_a_single_rank_run_is_not_compared(self):
        """One rank: nothing to diverge from."""
        alerts, _ = await play(ranks_run(150, world=1).items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_ranks_arriving_out_of_order_do_not_flap(self, seed):
        """Per-rank norms with 30% noise and ranks a few steps apart: no rank_divergence alert."""
        rng = random.Random(seed)
        producers = [Producer(rank=rank, session=100 + rank) for rank in range(4)]
        tl, steps = Timeline(), [0, 0, 0, 0]
        while min(steps) < 200:
            rank = rng.randrange(4)
            if steps[rank] - min(steps) > 5:
                continue
            tl.send(producers[rank].grads(steps[rank], scale=math.exp(rng.gauss(0, 0.3))), after_s=0.001)
            steps[rank] += 1
        alerts, _ = await play(tl.items)
        assert of(alerts, "rank_divergence") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved while the straggler's lag grows fires and clears as the uninterrupted run."""
        tl = ranks_run(150, stop={3: 20})
        p3 = Producer(rank=3, session=103)
        p3.seq = 22
        tl.send(p3.make(RunEnd, 20))
        await assert_resumes_identically(tl, split=len(tl.items) - 60, rule="rank_divergence")

    def test_defaults_are_the_documented_ones(self):
        """Lag 100 steps, norm ratio 10, 32 steps kept, fire after 3, clear after 3."""
        assert_documented_defaults("rank_divergence", max_step_lag=100, max_norm_ratio=10.0, window_steps=32,
                                   fire_after=3, clear_after=3)
        assert "100 update steps" in documented(RULES["rank_divergence"].Config, "max_step_lag")


def lossy_run(events: int, lose_every: int | None = None, stop_losing_at: int | None = None, first_seq: int = 0) -> Timeline:
    p, tl = Producer(), Timeline()
    p.skip(first_seq)
    for step in range(events):
        if lose_every and step % lose_every == lose_every - 1 and (stop_losing_at is None or step < stop_losing_at):
            p.skip(1)
        tl.send(p.timing(step, {"update": 8.0}), after_s=0.01)
    return tl


class TestEventLoss:
    async def test_an_unbroken_sequence_raises_nothing(self):
        """2000 consecutive sequence numbers: no alert."""
        alerts, _ = await play(lossy_run(2000).items)
        assert alerts == []

    async def test_a_steady_loss_fires_once_and_clears_after_30_quiet_seconds(self):
        """One event in 20 lost fires when the last 1000 hold 11 losses (step 219); the last loss is at step 999
        (the producer's clock then at 1.049 s) and it clears 30 s of producer time later, the window long clean."""
        alerts, _ = await play(lossy_run(32000, lose_every=20, stop_losing_at=1000).items)
        fired = [a for a in alerts if a.rule == "event_loss"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 219), (True, 30999)]
        assert fired[0].values["lost"] == 11 and fired[0].values["loss_fraction"] == 0.011
        assert fired[1].values["lost"] == 0

    async def test_losses_in_chunks_wider_than_the_window_fire_once(self):
        """A sustained overload: 3000 events dropped after every 1500 received, for 30,000 steps. Each
        clean stretch is wider than the 1000-event window, but a gap comes every 4.5 s of producer
        time: the alert fires once and stays until the end."""
        p, tl = Producer(), Timeline()
        for step in range(30_000):
            if step % 1500 == 1499:
                p.skip(3000)
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.001)
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.step) for a in alerts if a.rule == "event_loss"] == [(False, 1499)]

    async def test_losses_before_the_consumer_listened_and_a_few_at_the_start_are_not_a_rate(self):
        """A session first seen at seq 500, then 5 events lost early on: no alert."""
        p, tl = Producer(), Timeline()
        p.skip(500)
        for step in range(100):
            if step in (3, 5, 8, 13, 21):
                p.skip(1)
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.01)
        alerts, _ = await play(tl.items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_a_loss_rate_hovering_at_the_limit_does_not_flap(self, seed):
        """Random losses at about 1% for 5000 events: each fire or clear is hundreds of events after the last."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(5000):
            if rng.random() < 0.009:
                p.skip(1)
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.01)
        alerts, _ = await play(tl.items)
        steps = [step for _, _, step in of(alerts, "event_loss")]
        assert len(steps) <= 6 and all(b - a >= 300 for a, b in zip(steps, steps[1:]))

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved with losses in the window (not yet firing) fires and clears as the uninterrupted run."""
        await assert_resumes_identically(lossy_run(32000, lose_every=20, stop_losing_at=1000), split=150, rule="event_loss")

    def test_defaults_are_the_documented_ones(self):
        """1% of the last 1000, clear at 0.5% after 30 s without a gap, fire and clear at once."""
        assert_documented_defaults("event_loss", max_loss_fraction=0.01, clear_below_fraction=0.005, window=1000, clear_quiet_s=30.0,
                                   fire_after=1, clear_after=1)


# -- all rules together -----------------------------------------------------------------------------


def mixed_faults() -> Timeline:
    """A run with a little of everything: drift, dead head, KL spike, a slow phase, losses, a hang, an error end."""
    rng, p, tl = random.Random(7), Producer(), Timeline()
    tl.send(p.make(RunStart, 0, host="h", pid=1, heads=list(HEADS)))
    for step in range(120):
        norms = noisy(rng, TYPICAL, 0.1)
        if 40 <= step < 50:
            norms["blend"] = 0.0
        if 60 <= step < 66:
            norms = {head: value * 4 for head, value in norms.items()}
        if step in (70, 71, 72):
            p.skip(20)
        tl.send(
            p.timing(step, {"rollout": 20.0, "update": 16.0 if 80 <= step < 90 else 8.0}),
            p.grads(step, norms=norms),
            p.lstm(step, c_rms=25.0 if 95 <= step < 100 else 0.8),
            p.ppo(step, approx_kl=0.3 if step in (29, 30) else 0.01),
        )
        if step % 10 == 9:
            tl.tick(0.0)
    tl.ticks(15)
    tl.send(p.make(RunEnd, 120, status="error", error="ValueError: boom"))
    return tl


class TestAllRules:
    def test_every_rule_documents_itself_and_every_setting(self):
        """Each rule has a docstring; every config field has a default and a docstring."""
        assert len(RULES) >= 15
        for name, rule in RULES.items():
            assert rule.__doc__ and len(rule.__doc__.split()) > 20, name
            assert issubclass(rule.Config, RuleConfig)
            for key, field in rule.Config.model_fields.items():
                assert not field.is_required(), f"{name}.{key} has no default"
                assert field.description, f"{name}.{key} has no docstring"

    def test_the_rules_command_lists_every_rule(self):
        """`simic-consumer rules` shows each rule's section and thresholds."""
        from simic.consumer.cli import main

        result = CliRunner().invoke(main, ["rules"])
        assert result.exit_code == 0, result.output
        for name in RULES:
            assert f"[rules.{name}]" in result.output
        assert "drift_threshold = 1.0" in result.output and "max_step_lag = 100" in result.output

    def test_rules_use_no_wall_clock_and_no_torch(self):
        """The analysis modules never read the wall clock or import torch (replay must match live; no torch in the consumer)."""
        import simic.consumer.analysis as analysis

        for path in Path(analysis.__file__).parent.glob("*.py"):
            source = path.read_text()
            assert not re.search(r"\btime\.(time|time_ns|monotonic|monotonic_ns|perf_counter)\(", source), path.name
            assert not re.search(r"^\s*(import|from) torch", source, re.M), path.name

    async def test_the_mixed_run_raises_each_fault_once_and_replay_of_its_log_matches(self, tmp_path):
        """Every fault of a mixed run is reported; the logged run (ticks included) replays to the same alerts."""
        tl = mixed_faults()
        sink = RecordingSink()
        pipeline = build_pipeline(ConsumerConfig(), log_dir=tmp_path, console=False, extra_sinks=[sink])
        await pipeline.start()
        for recv_ns, raw in tl.items:
            if raw is None:
                await pipeline.tick(recv_ns)
            else:
                await pipeline.consume(raw, recv_ns)
        await pipeline.close()
        live = sink.alerts
        fired = [(a.rule, a.step) for a in live if not a.cleared and not (a.rule == "gradient_drift" and "head" in a.values)]
        assert ("approx_kl", 30) in fired
        assert ("head_balance", 44) in fired
        assert ("gradient_drift", 62) in fired
        assert ("event_loss", 70) in fired
        assert ("step_time", 84) in fired
        assert ("lstm_state", 97) in fired
        assert ("silent_producer", 119) in fired
        assert ("run_failed", 120) in fired
        assert len(fired) == len(set(fired))
        result = await replay([tmp_path], ConsumerConfig())
        assert [alert_record(a) for a in result.alerts] == [alert_record(a) for a in live]

    async def test_a_checkpoint_of_every_rule_is_strict_json_and_resumes_the_mixed_run(self):
        """Split anywhere in the mixed run, the whole analysis state round-trips through JSON and continues identically."""
        tl = mixed_faults()
        whole, _ = await play(tl.items)
        for split in (50, 61, 75, 97, len(tl.items) - 8):
            first, pipeline = await play(tl.items[:split])
            rest, _ = await play(tl.items[split:], state=checkpoint(pipeline))
            assert [alert_record(a) for a in first + rest] == [alert_record(a) for a in whole], split


class TestClipFraction:
    @staticmethod
    def run(values: list[float]) -> Timeline:
        p, tl = Producer(), Timeline()
        for step, cf in enumerate(values):
            tl.send(p.ppo(step, clip_fraction=cf, approx_kl=0.01))
        return tl

    async def test_a_usual_clip_fraction_raises_nothing_even_when_high(self):
        """A trainer that always clips about a quarter of its samples (0.2-0.28) raises nothing."""
        rng = random.Random(1)
        alerts, _ = await play(self.run([rng.uniform(0.2, 0.28) for _ in range(200)]).items)
        assert of(alerts, "clip_fraction") == []

    async def test_a_jump_fires_on_the_second_update_and_clears(self):
        """0.05 usual, 0.6 from step 30 to 34: fires at step 31, clears three updates after."""
        alerts, _ = await play(self.run([0.05] * 30 + [0.6] * 5 + [0.05] * 5).items)
        assert [(a.cleared, a.step) for a in alerts if a.rule == "clip_fraction"] == [(False, 31), (True, 37)]

    async def test_nothing_before_the_warm_up(self):
        alerts, _ = await play(self.run([0.6] * 8).items)
        assert of(alerts, "clip_fraction") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        await assert_resumes_identically(self.run([0.05] * 30 + [0.6] * 5 + [0.05] * 5), split=31, rule="clip_fraction")

    def test_defaults_are_the_documented_ones(self):
        assert_documented_defaults("clip_fraction", max_clip_fraction=0.3, jump=3.0, min_usual=0.01, baseline_updates=24,
                                   warmup=8, fire_after=2, clear_after=3)


class TestUpdateRatio:
    @staticmethod
    def run(ratios: list[float], logged_lr: list[float] | None = None, optimizer_lr: list[float] | None = None,
            rate_first: bool = False) -> Timeline:
        """One param_updates (and one ppo_update with the logged learning rate) per update; the param_updates
        carry the optimizer's own rate when ``optimizer_lr`` is given, and come first with ``rate_first`` (SB3's order)."""
        from simic.schemas.models import ParamUpdates

        p, tl = Producer(), Timeline()
        for step, ratio in enumerate(ratios):
            lr = logged_lr[step] if logged_lr else 3e-4
            used = optimizer_lr[step] if optimizer_lr else None
            logged = p.ppo(step, learning_rate=lr)
            step_size = p.make(ParamUpdates, step, ratios={"policy": ratio}, total_ratio=ratio, samples=16, learning_rate=used)
            tl.send(*((step_size, logged) if rate_first else (logged, step_size)))
        return tl

    @staticmethod
    def ramp(step: int) -> float:
        """A rate x1.15 per update from update 40 on (1.15x at step 40)."""
        return 1.15 ** max(0, step - 39)

    async def test_a_steady_or_scheduled_step_size_raises_nothing(self):
        """The ratio jitters by 10% around 1e-3 for 100 updates; then a logged warm-up that doubles the learning
        rate doubles the ratio: nothing (the schedule explains it)."""
        rng = random.Random(1)
        ratios = [1e-3 * math.exp(rng.gauss(0, 0.1)) for _ in range(100)]
        alerts, _ = await play(self.run(ratios).items)
        assert of(alerts, "update_ratio") == []
        lrs = [3e-4 * min(2.0, 1.0 + step / 20) for step in range(100)]
        alerts, _ = await play(self.run([1e-3 * lr / 3e-4 for lr in lrs], lrs).items)
        assert of(alerts, "update_ratio") == []

    async def test_a_learning_rate_ramp_the_log_does_not_show_fires_within_five_updates(self):
        """The step size grows 1.15x per update from update 40 while the logged rate stays: fires at step 43
        (1.75x; the second update beyond 1.2x its recent level, 3.5 jitters and 1.05x its recent highest), in the message as 'not the one the trainer reports'."""
        rng = random.Random(2)
        ratios = [1e-3 * math.exp(rng.gauss(0, 0.05)) * (1.15 ** max(0, step - 39)) for step in range(60)]
        alerts, _ = await play(self.run(ratios).items)
        fired = [a for a in alerts if a.rule == "update_ratio" and not a.cleared]
        assert [a.step for a in fired] == [43] and "not the one the trainer reports" in fired[0].message

    async def test_an_optimizer_rate_above_the_logged_one_fires_on_the_second_update(self):
        """The optimizer's own rate (param_updates.learning_rate) grows 1.15x per update from update 40 while the
        logged rate stays: the rate fires at step 42 (1.52x, the second update beyond 1.2x its usual share of the
        logged rate), before the step size it makes (43); both say the rate is not the one the trainer reports."""
        rng = random.Random(2)
        ratios = [1e-3 * math.exp(rng.gauss(0, 0.05)) * self.ramp(step) for step in range(60)]
        for rate_first in (False, True):
            alerts, _ = await play(self.run(ratios, optimizer_lr=[3e-4 * self.ramp(step) for step in range(60)],
                                            rate_first=rate_first).items)
            fired = [a for a in alerts if a.rule == "update_ratio" and not a.cleared]
            assert [(a.step, "optimizer_learning_rate" in a.values) for a in fired] == [(42, True), (43, False)]
            assert fired[0].values["factor"] == pytest.approx(1.15 ** 3)
            assert all("not the one the trainer reports" in a.message for a in fired)
        alerts, _ = await play(self.run(ratios, optimizer_lr=[3e-4 * self.ramp(step) for step in range(60)]).items,
                               config(update_ratio={"optimizer_rate": False}))
        assert [a.step for a in alerts if a.rule == "update_ratio" and not a.cleared] == [43]

    async def test_an_optimizer_rate_that_keeps_its_share_of_the_logged_one_raises_nothing(self):
        """The optimizer's rate twice the logged one throughout (a parameter group of its own), a logged warm-up it
        follows, and a logged 100x spike whose param_updates arrive one update before its ppo_update (SB3's order:
        one update at 100x the last logged rate): nothing from the rate."""
        lrs = [3e-4 * min(2.0, 1.0 + step / 20) for step in range(100)]
        alerts, _ = await play(self.run([1e-3 * lr / 3e-4 for lr in lrs], lrs, [2 * lr for lr in lrs]).items)
        assert of(alerts, "update_ratio") == []
        spike = [3e-4 * (100 if step >= 40 else 1) for step in range(60)]
        alerts, _ = await play(self.run([1e-3 * lr / 3e-4 for lr in spike], spike, spike, rate_first=True).items)
        assert of(alerts, "update_ratio") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        ratios = [1e-3] * 40 + [5e-3] * 5 + [1e-3] * 10
        await assert_resumes_identically(self.run(ratios), split=41, rule="update_ratio")
        used = [3e-4] * 40 + [9e-4] * 5 + [3e-4] * 10
        await assert_resumes_identically(self.run([1e-3] * 55, optimizer_lr=used), split=42, rule="update_ratio")

    def test_defaults_are_the_documented_ones(self):
        assert_documented_defaults("update_ratio", rise=1.2, noise_z=3.5, new_high=1.05, min_spread=0.03, baseline_updates=10, spread_updates=24,
                                   warmup=10, fire_after=2, clear_after=3, optimizer_rate=True)
