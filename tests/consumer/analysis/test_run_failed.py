"""The run_failed rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import pytest

from simic.consumer.analysis import RULES
from simic.schemas.models import RunEnd, RunStart

from .harness import Producer, Timeline, config, of, play


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
