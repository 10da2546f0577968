"""The head_balance rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import random

import pytest

from simic.consumer.analysis import RULES

from .harness import (
    SEEDS,
    TYPICAL,
    Producer,
    Timeline,
    assert_documented_defaults,
    assert_resumes_identically,
    config,
    documented,
    grad_run,
    noisy,
    of,
    play,
)


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
