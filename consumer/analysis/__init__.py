"""Analysis rules. Each module here defines one rule; importing this package registers them all."""

from __future__ import annotations

import importlib
import pkgutil

from ._rule import RULES, Rule, RuleConfig, register

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RULES", "Rule", "RuleConfig", "register"]
