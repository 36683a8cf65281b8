"""Metrics by name, their direction, and the report's curves."""

from __future__ import annotations

import numpy as np
import pytest

from anna_models.config import METRICS
from anna_models.metrics import (
    HIGHER_IS_BETTER,
    all_metrics,
    calibration,
    compute_metric,
    evaluation,
    is_better,
    leaderboard,
    lift_by_decile,
    pr_points,
    roc_points,
)


def test_every_configured_metric_is_known_with_a_direction() -> None:
    names = {name for names in METRICS.values() for name in names}
    assert names <= set(HIGHER_IS_BETTER)


def test_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert compute_metric("roc_auc", y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert compute_metric("roc_auc", y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert compute_metric("log_loss", y, np.full(4, 0.5)) == pytest.approx(np.log(2))
    assert compute_metric("accuracy", y, np.array([0.4, 0.6, 0.6, 0.9])) == 0.75
    assert compute_metric("rmse", np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 1.0
    assert compute_metric("mae", np.array([1.0, 3.0]), np.array([1.0, 1.0])) == 1.0
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    assert compute_metric("log_loss", np.array([0, 1, 2]), probs) == pytest.approx(
        -np.log([0.7, 0.8, 0.6]).mean()
    )
    assert compute_metric("f1_macro", np.array([0, 1, 2]), probs) == 1.0
    assert compute_metric("roc_auc_ovr", np.array([0, 1, 2]), probs) == 1.0


def test_undefined_metrics_are_nan_and_never_better() -> None:
    assert np.isnan(compute_metric("roc_auc", np.ones(5), np.random.default_rng(0).random(5)))
    assert not is_better("roc_auc", float("nan"), 0.5)
    assert (
        is_better("roc_auc", 0.6, None)
        and is_better("rmse", 1.0, 2.0)
        and not is_better("log_loss", 0.7, 0.6)
    )
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric("gini", np.ones(2), np.ones(2))


def test_curves_are_capped_at_200_points_and_span_the_whole_range() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000)
    p = np.clip(0.3 * y + rng.random(20_000) * 0.7, 0, 1)
    roc, pr = roc_points(y, p), pr_points(y, p)
    assert 2 < len(roc["fpr"]) <= 200 and len(pr["recall"]) <= 200
    assert roc["fpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
    assert pr["recall"][0] == 0.0 and pr["recall"][-1] == 1.0
    lift = lift_by_decile(y, p)
    assert len(lift) == 10 and sum(d["rows"] for d in lift) == 20_000
    assert lift[0]["lift"] > 1.2 > 0.8 > lift[-1]["lift"]


def test_evaluation_per_task_type() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    report = evaluation("multiclass", y, probs, curves=True)
    assert set(report["metrics"]) == set(METRICS["multiclass"])
    assert np.sum(report["confusion"]) == 300
    assert set(all_metrics("regression", rng.normal(size=50), rng.normal(size=50))) == {"rmse", "mae", "r2"}


def test_regression_is_checked_by_prediction_decile() -> None:
    # Predictions 0..99 and observed values twice as large: each decile's mean observed is twice its mean.
    prediction = np.arange(100, dtype=np.float64)[::-1]
    deciles = evaluation("regression", 2 * prediction, prediction, curves=True)["deciles"]
    assert [(d["decile"], d["rows"]) for d in deciles] == [(i, 10) for i in range(1, 11)]
    assert [d["mean_predicted"] for d in deciles] == [4.5 + 10 * i for i in range(10)]  # ascending
    assert [d["mean_observed"] for d in deciles] == [2 * d["mean_predicted"] for d in deciles]


def test_calibration_compares_predicted_and_observed_rates_per_bin() -> None:
    # 100 rows predicted 0.2, of which 20 happen; 100 rows predicted 0.9, of which 60 happen.
    p = np.r_[np.full(100, 0.2), np.full(100, 0.9)]
    y = np.r_[np.ones(20), np.zeros(80), np.ones(60), np.zeros(40)]
    result = calibration(y, p)
    assert [(b["low"], b["rows"], b["mean_predicted"], b["observed"]) for b in result["bins"]] == [
        (0.2, 100, 0.2, 0.2), (0.9, 100, 0.9, 0.6)]
    assert result["ece"] == pytest.approx(0.15)  # half the rows are off by 0.3
    assert calibration(np.array([0, 1]), np.array([0.0, 1.0]))["ece"] == 0  # p = 1 falls in the last bin
    # Multiclass: the top class's confidence against how often it is right.
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7], [0.7, 0.1, 0.2]])
    assert calibration(np.array([0, 1, 0, 1]), probs)["ece"] == pytest.approx(0.2)
    assert "calibration" in evaluation("binary", y, p, curves=True)
    assert "calibration" not in evaluation("regression", y, p, curves=True)


def test_leaderboard_puts_the_best_valid_first_whatever_the_direction() -> None:
    rows = [{"model": "a", "valid": 0.7}, {"model": "b", "valid": float("nan")}, {"model": "c", "valid": 0.8},
            {"model": "d", "valid": None}]
    assert [r["model"] for r in leaderboard(rows, "roc_auc")] == ["c", "a", "b", "d"]
    assert [r["rank"] for r in leaderboard(rows, "roc_auc")] == [1, 2, 3, 4]
    assert [r["model"] for r in leaderboard(rows, "log_loss")] == ["a", "c", "b", "d"]
