"""AnomalyDetector and AnomalyReport: the seed plan's drift check, kept as it was.

The daemon's rules (one module each in this folder) do the live work; this is the small,
synchronous API for callers that compute drift themselves (for example with a
:class:`~simic.consumer.analysis._ema.GradientEMATracker` in a notebook).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AnomalyReport", "AnomalyDetector"]


@dataclass
class AnomalyReport:
    """What a check found: ``has_anomaly``, the ``anomaly_types`` and a detail line per type."""

    has_anomaly: bool = False
    anomaly_types: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)

    def add_anomaly(self, anomaly_type: str, detail: str = "") -> None:
        self.has_anomaly = True
        if anomaly_type not in self.anomaly_types:
            self.anomaly_types.append(anomaly_type)
        self.details[anomaly_type] = detail


class AnomalyDetector:
    """Checks that turn numbers into an :class:`AnomalyReport`."""

    def check_gradient_drift(self, norm_drift: float, health_drift: float, drift_threshold: float = 0.5) -> AnomalyReport:
        """``gradient_norm_drift`` / ``gradient_health_drift`` when a drift exceeds ``drift_threshold``."""
        report = AnomalyReport()
        if norm_drift > drift_threshold:
            report.add_anomaly("gradient_norm_drift", f"norm_drift={norm_drift:.3f} > {drift_threshold}")
        if health_drift > drift_threshold:
            report.add_anomaly("gradient_health_drift", f"health_drift={health_drift:.3f} > {drift_threshold}")
        return report
