"""approx_kl: approximate KL divergence spikes between the old and new policy."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, Severity, register, subject_key

_INF = math.inf


class ApproxKlConfig(RuleConfig):
    warning_kl: float = Field(0.1, gt=0)
    """``approx_kl`` above this is a warning (a mature PPO codebase's 0.1): typical updates stay
    near 0.01 to 0.02 (the usual ``target_kl``), so 0.1 is a policy moving five to ten times faster."""
    critical_kl: float = Field(1.0, gt=0)
    """``approx_kl`` above this is critical at once (1.0): the update has left the trust region and
    the policy may collapse. A mature PPO codebase uses 0.5, but a healthy small-batch recurrent PPO
    gets there (SB3's RecurrentPPO on 256 samples per update: 0.49 and 0.51 on two updates of one
    healthy seed of 45, 0.46 on another), while a learning rate x100 gives 4 to 10 on every trainer
    here at its first update."""
    severity: Severity = "warning"
    """Severity at ``warning_kl`` (at ``critical_kl`` it is always critical)."""
    fire_after: int = Field(3, ge=1)
    """Updates in a row above ``warning_kl`` (3): a small-batch recurrent PPO has single updates at
    0.1-0.45 in healthy runs and, now and then, two in a row (SB3's RecurrentPPO on 256 samples per
    update: 0.17 and 0.16 on two healthy seeds of ten); a step size out of proportion stays (a
    learning rate ramp keeps it at 0.1-0.3 update after update). Above ``critical_kl`` it fires at once."""
    clear_after: int = Field(3, ge=1)
    """Updates in a row below the level before it clears (a run hovering at the level raises one
    alert, not one per update)."""

    @model_validator(mode="after")
    def _ordered(self) -> "ApproxKlConfig":
        if self.critical_kl < self.warning_kl:
            raise ValueError("critical_kl must not be below warning_kl")
        return self


@register
class ApproxKl(Rule):
    """Approximate KL between the rollout policy and the updated one spiking, in ``ppo_update``.

    Two levels, each its own subject per (run, rank), so severity escalates: above ``warning_kl``
    for ``fire_after`` updates a warning, above ``critical_kl`` at once a critical alert; each clears on its own after
    ``clear_after`` updates below its level. A KL spike is the direct measure of an update that
    moved the policy too far (learning rate, advantage scale, too many epochs); PPO implementations
    with ``target_kl`` stop the epoch for much less. Missing and non-finite values are not observed.
    """

    name = "approx_kl"
    Config = ApproxKlConfig
    kinds = frozenset({"ppo_update"})
    per_update = True

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "ppo_update":
            return None
        kl = event.approx_kl
        if kl is None or not -_INF < kl < _INF:
            return None
        config = self.config
        warning = kl > config.warning_kl
        if not (warning or self._conditions):
            return None
        fired: list[Alert] | None = None
        levels = (
            ("warning", config.warning_kl, warning, config.severity, config.fire_after),
            ("critical", config.critical_kl, kl > config.critical_kl, "critical", 1),
        )
        for level, threshold, bad, severity, fire_after in levels:
            subject = subject_key(event, level)
            if bad or subject in self._conditions:
                alert = self.observe(
                    event,
                    subject,
                    bad,
                    f"approx KL {kl:.4g} > {threshold:g} at step {event.step}: the update moved the policy too far",
                    {"approx_kl": kl, "threshold": threshold},
                    severity=severity,
                    fire_after=fire_after,
                    clear_message=f"approx KL back below {threshold:g} at step {event.step}: {kl:.4g}",
                )
                if alert:
                    fired = (fired or []) + [alert]
        return fired
