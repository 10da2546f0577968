"""Is the daemon alive? What ``simic-consumer healthcheck`` (the Docker image's HEALTHCHECK) asks.

Healthy means the metrics endpoint answers *and* the pipeline processed a message or a clock tick
within ``--max-age`` seconds (``simic_pipeline_last_batch_age_seconds``): the metrics server runs
in its own thread, so an answer alone would not prove the processing loop is still turning.
The command exits 0 when healthy, 1 (with one line saying why) when not. Needs ``run --metrics-port``.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["check"]

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

