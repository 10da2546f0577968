"""The benchmark scripts run end to end (``--quick``) and print their tables. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = [("emit_cost.py", "| variant |"), ("wire_size.py", "| kind |"), ("consumer_throughput.py", "| variant | events/s |")]


class TestBenchScripts:
    @pytest.mark.parametrize(("script", "header"), SCRIPTS)
    def test_quick_run_prints_a_markdown_table(self, script: str, header: str) -> None:
        """With --quick the script exits 0 and prints a markdown table with its header row."""
        result = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert header in result.stdout
        assert "|---|" in result.stdout

    @pytest.mark.parametrize(("script", "header"), SCRIPTS)
    def test_help_describes_the_options(self, script: str, header: str) -> None:
        """--help exits 0 and names --quick."""
        result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "--quick" in result.stdout
