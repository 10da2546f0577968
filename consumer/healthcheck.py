"""Is the daemon alive? ``python -m simic.consumer.healthcheck`` (the Docker image's HEALTHCHECK).

Healthy means the metrics endpoint answers *and* the pipeline processed a message or a clock tick
within ``--max-age`` seconds (``simic_pipeline_last_batch_age_seconds``): the metrics server runs
in its own thread, so an answer alone would not prove the processing loop is still turning.
Exit 0 when healthy, 1 (with one line saying why) when not. Needs ``run --metrics-port``.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["check", "main"]

METRICS_URL_ENV = "SIMIC_METRICS_URL"
DEFAULT_URL = "http://127.0.0.1:9464/metrics"
AGE_METRIC = "simic_pipeline_last_batch_age_seconds"


def check(url: str, max_age_s: float, timeout_s: float = 3.0) -> str | None:
    """None when healthy, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        return f"metrics endpoint {url} does not answer: {getattr(error, 'reason', error)}"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == AGE_METRIC:
                if sample.value > max_age_s:
                    return f"the pipeline has not run for {sample.value:.0f} s (more than {max_age_s:g} s): the processing loop is stuck"
                return None
    return f"{url} has no {AGE_METRIC}: not a simic-consumer"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simic.consumer.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get(METRICS_URL_ENV, DEFAULT_URL), help=f"metrics URL (env {METRICS_URL_ENV}; default {DEFAULT_URL})")
    parser.add_argument("--max-age", type=float, default=30.0, help="seconds without a processed message or tick before unhealthy (default 30)")
    args = parser.parse_args(argv)
    problem = check(args.url, args.max_age)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
