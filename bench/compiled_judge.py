"""What compiling a rule's hot path would gain: the per-head judge of ``gradient_drift`` (``_rise.Rise``),
interpreted and compiled to a C extension with mypyc, on the same values.

Every rule runs as Python, and the consumer's rules cost several times what decoding costs (see
``consumer_throughput.py``). Compiling the rules is one way to make them cheaper without changing what
they decide. This measures what it buys on the piece most suited to it: ``Rise`` is small, typed and
self-contained (floats, lists, ``bisect``), and runs for every head of every update. The module's source
is written to a temporary folder with the one helper it imports from ``_support`` put inline and the
caller's loop (:data:`SERIES`: judge a value, keep it when it did not rise) appended, then imported twice:
as Python, and built by ``mypyc`` into an extension. Three variants judge and keep the same 200,000 log
norms (a healthy head: uniform between 0.5 and 1.5, no drift) with ``gradient_drift``'s default head
limits: the interpreted judge called from a Python loop (as the consumer runs it), the compiled judge
called from a Python loop (only the judge compiled, the rule left as it is), and the compiled loop
(judge and caller compiled together). Best of ``--repeat`` runs, process CPU time. Every variant must
give the same judgements, or the script exits 1.

Needs mypy (which brings mypyc) and a C compiler; neither is a dependency of the project:

    .venv/bin/pip install mypy && .venv/bin/python bench/compiled_judge.py [--values N] [--repeat R] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from simic.consumer.analysis import _rise
from simic.consumer.analysis._support import ordered_median
from simic.consumer.analysis.gradient_drift import GradientDrift, GradientDriftConfig
from simic.consumer.pipeline.alerts import AlertMaker


def standalone_source() -> str:
    """``_rise``'s source, importable alone: its one import from the package replaced by that function's source."""
    source = inspect.getsource(_rise)
    line = "from ._support import ordered_median\n"
    if line not in source:
        raise SystemExit(f"{_rise.__file__} no longer imports {line.strip()!r}: update this script")
    return source.replace(line, inspect.getsource(ordered_median))


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(source: str, folder: Path) -> tuple[ModuleType, ModuleType]:
    """The module as Python, and the same source built by mypyc."""
    interpreted = folder / "interpreted"
    compiled = folder / "compiled"
    for place in (interpreted, compiled):
        place.mkdir()
        (place / "rise_alone.py").write_text(source)
    result = subprocess.run([sys.executable, "-m", "mypyc", "rise_alone.py"], cwd=compiled, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"mypyc failed (is mypy installed, and a C compiler?):\n{result.stdout}{result.stderr}")
    built = sorted(compiled.glob("rise_alone.*.so")) + sorted(compiled.glob("rise_alone.*.pyd"))
    if not built:
        raise SystemExit(f"mypyc built no extension in {compiled}")
    (compiled / "rise_alone.py").unlink()  # the extension, not the source, is what gets imported
    return load(interpreted / "rise_alone.py", "rise_interpreted"), load(built[0], "rise_alone")


SERIES = '''

def judge_series(values: list[float], limits: RiseLimits) -> list[bool]:
    """Judge every value, keeping those that did not rise, as gradient_drift does for one head."""
    rise = Rise()
    judged: list[bool] = []
    for x in values:
        drifted, _ = rise.judge(x, limits)
        if not drifted:
            rise.keep(x, limits)
        judged.append(drifted)
    return judged
'''
"""The caller's loop: run as Python over either build of the judge, and compiled with it (appended to its source)."""


def python_loop(module: ModuleType):
    """``judge_series`` as Python code calling ``module``'s judge: how an interpreted rule calls it."""
    namespace = {"Rise": module.Rise, "RiseLimits": module.RiseLimits}
    exec(SERIES, namespace)
    return namespace["judge_series"]


def timed(series, values: list[float], limits) -> tuple[float, list[bool]]:
    """CPU seconds of one ``series(values, limits)``, and its judgements."""
    start = time.process_time()
    judged = series(values, limits)
    return time.process_time() - start, judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=200_000, help="log norms judged (default 200000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; the best is reported (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2000 values, one run each")
    args = parser.parse_args()
    if args.quick:
        args.values, args.repeat = 2000, 1
    head_limits = GradientDrift(GradientDriftConfig(), AlertMaker())._head_limits  # the rule's own, from its defaults
    rng = random.Random(0)
    values = [math.log(rng.uniform(0.5, 1.5)) for _ in range(args.values)]
    with tempfile.TemporaryDirectory() as folder:
        interpreted, compiled = build(standalone_source() + SERIES, Path(folder))
        variants = [
            ("interpreted, called from Python (as the consumer runs it)", interpreted, python_loop(interpreted)),
            ("compiled, called from Python (the rule left interpreted)", compiled, python_loop(compiled)),
            ("compiled with the caller's loop", compiled, compiled.judge_series),
        ]
        rows, judgements = [], []
        for label, module, series in variants:
            limits = module.RiseLimits(*head_limits)
            runs = [timed(series, values, limits) for _ in range(args.repeat)]
            rows.append((label, min(seconds for seconds, _ in runs)))
            judgements.append(runs[0][1])
    if any(judged != judgements[0] for judged in judgements):
        raise SystemExit("a compiled judge decided differently from the interpreted one")
    print(f"\n### Rise.judge + keep, {args.values} values, best of {args.repeat} (CPU time); "
          f"{sum(judgements[0])} rose, the same in every variant\n")
    print("| variant | µs per value | speed-up |\n|---|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds / args.values * 1e6:.3f} | {rows[0][1] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
