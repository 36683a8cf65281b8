"""The report's plots: one PNG per view the task type has, drawn whatever gaps the report has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anna_models.metrics import evaluation
from anna_models.plots import render


def report_of(task_type: str, y: np.ndarray, scores: np.ndarray, metric: str) -> dict:
    history = [{"epoch": e, "valid_metric": v} for e, v in enumerate([0.61, 0.66, float("nan"), 0.67], 1)]
    return {"run_id": 7, "task_name": "churn", "task_type": task_type, "metric": metric,
            "domains": {"cards": {"history": history, "stopping": {"on": "train"}}},
            "blend": {"test": evaluation(task_type, y, scores, curves=True)},
            "leaderboard": [{"rank": 1, "model": "blend", "kind": "blend", "valid": 0.70, "test": 0.68},
                            {"rank": 2, "model": "cards", "kind": "domain", "valid": float("nan"),
                             "test": 0.64},
                            {"rank": 3, "model": "lightgbm", "kind": "lightgbm", "valid": 0.66,
                             "test": float("nan")}]}


def test_a_binary_report_is_drawn_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    scores = np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1)
    drawn = render(report_of("binary", y, scores, "roc_auc"), tmp_path)
    assert drawn == ["leaderboard.png", "learning_curves.png", "roc_pr.png", "lift.png", "calibration.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(drawn)
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in drawn)


def test_a_regression_report_with_undefined_metrics_draws_what_it_has(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=200)
    report = report_of("regression", y, y + rng.normal(size=200), "rmse")
    report["domains"]["cards"]["history"] = [{"epoch": 1, "valid_metric": float("nan")}]  # nothing defined
    assert render(report, tmp_path) == ["leaderboard.png", "learning_curves.png", "deciles.png"]
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000
