"""Analysis rules. Each module here whose name does not start with ``_`` defines one rule; importing
this package registers them all (in the order of their names).

The ``_`` modules are not rules; they are what the rules share, and may import only ``simic.schemas``,
``simic.consumer.pipeline`` (the stage contract, alerts, accounting) and each other:

- ``_rule``: :class:`Rule`, its config model, the registry and ``@register``; hysteresis, once for all.
- ``_ema``: :class:`Ema`, the moving average the rules use, and the seed plan's ``GradientEMATracker``.
- ``_rise``: a value rising above its own history, on a log scale (``update_ratio``, ``gradient_drift``).
- ``_support``: the "about" event of alerts no single event raised; one step's value from every rank.
- ``_anomaly``: the seed plan's ``AnomalyDetector`` and ``AnomalyReport``, a synchronous drift check
  for callers that compute drift themselves (no rule uses it).

``GradientEMATracker``, ``AnomalyDetector`` and ``AnomalyReport`` are public as ``simic.consumer.<name>``.
The stage that combines each update's events before the rules is ``simic.consumer.pipeline.updates``.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._rule import RULES, Rule, RuleConfig, register

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RULES", "Rule", "RuleConfig", "register"]
