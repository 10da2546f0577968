"""The seed plan's public analysis API, kept exactly: GradientEMATracker and AnomalyDetector."""

from __future__ import annotations

import json
import math

import pytest

from simic.consumer import AnomalyDetector, AnomalyReport, GradientEMATracker


class TestGradientEMATracker:
    def test_the_first_update_seeds_both_emas_and_reports_no_drift(self):
        """The first call sets the EMAs to its inputs and reports zero drift."""
        tracker = GradientEMATracker()
        assert tracker.update(2.5, 0.8) == {"ema_grad_norm": 2.5, "ema_grad_health": 0.8, "norm_drift": 0.0, "health_drift": 0.0}

    def test_drift_is_measured_against_the_ema_before_it_moves(self):
        """drift = |x - ema| / (ema + eps) with the old EMA, then ema = m * ema + (1 - m) * x."""
        tracker = GradientEMATracker(momentum=0.5, epsilon=0.0)
        tracker.update(4.0, 1.0)
        assert tracker.update(6.0, 0.5) == {"ema_grad_norm": 5.0, "ema_grad_health": 0.75, "norm_drift": 0.5, "health_drift": 0.5}

    def test_default_momentum_and_epsilon_follow_the_formula_exactly(self):
        """With the defaults (0.99, 1e-8) the numbers are the formula's, bit for bit."""
        tracker = GradientEMATracker()
        assert (tracker.momentum, tracker.epsilon) == (0.99, 1e-8)
        tracker.update(4.0, 1.0)
        metrics = tracker.update(6.0, 0.5)
        assert metrics["norm_drift"] == abs(6.0 - 4.0) / (4.0 + 1e-8)
        assert metrics["health_drift"] == abs(0.5 - 1.0) / (1.0 + 1e-8)
        assert metrics["ema_grad_norm"] == 0.99 * 4.0 + (1 - 0.99) * 6.0
        assert metrics["ema_grad_health"] == 0.99 * 1.0 + (1 - 0.99) * 0.5

    def test_check_drift_updates_and_compares_strictly_above_the_threshold(self):
        """check_drift is update plus 'either drift > threshold'; a drift equal to it is not drift."""
        tracker = GradientEMATracker(momentum=0.5, epsilon=0.0)
        seeded = {"ema_grad_norm": 4.0, "ema_grad_health": 1.0, "norm_drift": 0.0, "health_drift": 0.0}
        assert tracker.check_drift(4.0, 1.0) == (False, seeded)
        drifting, metrics = tracker.check_drift(6.0, 1.0)  # norm drift exactly 0.5
        assert (drifting, metrics["norm_drift"]) == (False, 0.5)
        drifting, metrics = tracker.check_drift(10.0, 1.0, drift_threshold=0.4)  # |10 - 5| / 5 = 1.0
        assert (drifting, metrics["norm_drift"]) == (True, 1.0)

    def test_state_dict_has_exactly_the_seed_keys_and_round_trips(self):
        """state_dict is {ema_norm, ema_health, initialized, update_count}, JSON data; a loaded tracker continues identically."""
        tracker = GradientEMATracker()
        assert tracker.state_dict() == {"ema_norm": 0.0, "ema_health": 1.0, "initialized": False, "update_count": 0}
        for norm in (1.0, 1.3, 0.7):
            tracker.update(norm, 1.0)
        state = json.loads(json.dumps(tracker.state_dict()))
        assert set(state) == {"ema_norm", "ema_health", "initialized", "update_count"}
        assert state["initialized"] is True and state["update_count"] == 3
        restored = GradientEMATracker()
        restored.load_state_dict(state)
        assert restored.update(2.0, 0.6) == tracker.update(2.0, 0.6)
        assert restored.state_dict() == tracker.state_dict()

    @pytest.mark.parametrize(
        ("norm", "health", "named"),
        [(math.nan, 1.0, "grad_norm"), (math.inf, 1.0, "grad_norm"), (1.0, -math.inf, "grad_health"), (1.0, math.nan, "grad_health")],
    )
    def test_a_non_finite_input_raises_naming_it_and_leaves_the_state_alone(self, norm, health, named):
        """NaN or Inf raises ValueError naming the argument; the EMAs and the count are as before."""
        tracker = GradientEMATracker()
        tracker.update(1.0, 1.0)
        before = tracker.state_dict()
        with pytest.raises(ValueError, match=named):
            tracker.update(norm, health)
        assert tracker.state_dict() == before
        assert tracker.update(1.0, 1.0)["norm_drift"] == 0.0

    def test_a_non_finite_first_input_does_not_seed(self):
        """A NaN before any valid update leaves the tracker uninitialised: the next value seeds it."""
        tracker = GradientEMATracker()
        with pytest.raises(ValueError, match="grad_norm"):
            tracker.update(math.nan, 1.0)
        assert tracker.state_dict()["initialized"] is False
        assert tracker.update(3.0, 1.0)["ema_grad_norm"] == 3.0


class TestAnomalyDetector:
    def test_no_drift_is_no_anomaly(self):
        """Drifts at or below the threshold give an empty report."""
        report = AnomalyDetector().check_gradient_drift(0.5, 0.1)
        assert isinstance(report, AnomalyReport)
        assert (report.has_anomaly, report.anomaly_types, report.details) == (False, [], {})

    def test_norm_drift_above_the_threshold_is_reported_with_details(self):
        """norm_drift > threshold is a gradient_norm_drift anomaly with a detail line."""
        report = AnomalyDetector().check_gradient_drift(0.6, 0.0)
        assert report.has_anomaly and report.anomaly_types == ["gradient_norm_drift"]
        assert set(report.details) == {"gradient_norm_drift"} and "0.6" in report.details["gradient_norm_drift"]

    def test_both_drifts_are_both_reported(self):
        """Norm and health drift together give both anomaly types, norm first."""
        report = AnomalyDetector().check_gradient_drift(2.0, 0.9)
        assert report.anomaly_types == ["gradient_norm_drift", "gradient_health_drift"]
        assert set(report.details) == {"gradient_norm_drift", "gradient_health_drift"}

    def test_the_threshold_is_a_parameter(self):
        """drift_threshold moves the line (default 0.5)."""
        detector = AnomalyDetector()
        assert not detector.check_gradient_drift(0.3, 0.3).has_anomaly
        assert detector.check_gradient_drift(0.3, 0.0, drift_threshold=0.2).anomaly_types == ["gradient_norm_drift"]
        assert detector.check_gradient_drift(0.0, 0.3, drift_threshold=0.2).anomaly_types == ["gradient_health_drift"]

    def test_tracker_and_detector_compose_as_in_the_seed_plan(self):
        """A tracker's drifts fed to the detector flag a jump of the norm."""
        tracker, detector = GradientEMATracker(), AnomalyDetector()
        for _ in range(20):
            metrics = tracker.update(1.0, 1.0)
            assert not detector.check_gradient_drift(metrics["norm_drift"], metrics["health_drift"]).has_anomaly
        metrics = tracker.update(3.0, 1.0)
        assert detector.check_gradient_drift(metrics["norm_drift"], metrics["health_drift"]).anomaly_types == ["gradient_norm_drift"]
