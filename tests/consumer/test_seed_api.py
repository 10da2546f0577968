"""The seed plan's public analysis API, kept exactly: GradientEMATracker and AnomalyDetector; and Ema, the moving average
every rule shares, which the tracker is built on."""

from __future__ import annotations

import json
import math
import random

import pytest

from simic.consumer import AnomalyDetector, AnomalyReport, GradientEMATracker
from simic.consumer.analysis._ema import Ema


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


class TestEma:
    def test_the_mean_of_the_warmup_seeds_it_then_each_sample_moves_it_by_one_minus_momentum(self):
        """None while warming up; then the warm-up mean; then momentum * value + (1 - momentum) * x, judged against the value before."""
        ema = Ema(0.9, warmup=3)
        assert [ema.add(x) for x in (1.0, 2.0, 6.0)] == [None, None, None]
        assert ema.value == 3.0 and ema.count == 3
        assert ema.add(13.0) == 3.0  # the value the sample is judged against
        assert ema.value == pytest.approx(0.9 * 3.0 + 0.1 * 13.0)

    def test_a_median_seed_ignores_a_warmup_outlier(self):
        """One huge first sample does not set a median-seeded baseline; it would set a mean-seeded one."""
        samples = [1000.0, 1.0, 1.2, 0.9, 1.1]
        median_seeded, mean_seeded = Ema(0.99, 5, seed="median"), Ema(0.99, 5)
        for x in samples:
            median_seeded.add(x)
            mean_seeded.add(x)
        assert median_seeded.value == 1.1
        assert mean_seeded.value == pytest.approx(sum(samples) / 5)

    def test_a_warmup_of_zero_or_one_is_the_first_sample(self):
        """The first sample seeds it as it is (the seed plan's tracker), and the second is judged."""
        for warmup in (0, 1):
            ema = Ema(0.5, warmup)
            assert ema.add(7) is None and ema.value == 7
            assert ema.add(9.0) == 7 and ema.value == 8.0

    def test_level_is_the_warmup_so_far_then_the_value(self):
        """Before any sample None; while warming up the mean (or median) so far; then the value."""
        mean, median = Ema(0.9, 4), Ema(0.9, 4, seed="median")
        assert mean.level is None and median.level is None
        for x in (1.0, 5.0, 3.0):
            mean.add(x)
            median.add(x)
        assert (mean.level, median.level) == (3.0, 3.0) and mean.value is None
        mean.add(3.0)
        assert mean.level == mean.value == 3.0

    @pytest.mark.parametrize("seed", ["mean", "median"])
    def test_state_is_json_and_a_loaded_ema_continues_identically(self, seed):
        """state() survives JSON, mid-warmup and after; the restored average then moves exactly as the original."""
        rng = random.Random(3)
        samples = [rng.uniform(0.5, 2.0) for _ in range(40)]
        for split in (3, 25):
            ema = Ema(0.95, 10, seed=seed)
            for x in samples[:split]:
                ema.add(x)
            restored = Ema(0.95, 10, seed=seed)
            restored.load_state(json.loads(json.dumps(ema.state())))
            for x in samples[split:]:
                assert restored.add(x) == ema.add(x)
            assert restored.value == ema.value

    def test_bad_settings_fail_at_construction(self):
        """A momentum outside [0, 1], a negative warmup or an unknown seed raise ValueError."""
        for kwargs in ({"momentum": 1.5}, {"momentum": 0.9, "warmup": -1}, {"momentum": 0.9, "seed": "first"}):
            with pytest.raises(ValueError):
                Ema(**kwargs)

    def test_the_seed_tracker_is_two_emas_seeded_by_the_first_update(self):
        """GradientEMATracker's EMAs are Ema's: the same values after the same updates."""
        tracker, norm, health = GradientEMATracker(momentum=0.9), Ema(0.9), Ema(0.9)
        for x, h in ((2.0, 1.0), (3.0, 0.8), (10.0, 0.6)):
            tracker.update(x, h)
            norm.add(x)
            health.add(h)
        assert (tracker.ema_norm, tracker.ema_health) == (norm.value, health.value)
