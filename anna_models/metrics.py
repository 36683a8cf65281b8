"""Quality metrics by name (``config.METRICS``), and the curves the report shows.

Scores are what a user would read: binary → P(class 1), shape (N,); multiclass → class
probabilities (N, C) with columns in label order 0..C-1; regression → predictions (N,).
Targets are 0/1 (binary), class indices (multiclass) or floats (regression).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from anna_models.config import METRICS

HIGHER_IS_BETTER = {
    "roc_auc": True,
    "roc_auc_ovr": True,
    "pr_auc": True,
    "accuracy": True,
    "f1": True,
    "f1_macro": True,
    "r2": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
}
MAX_CURVE_POINTS = 200
CALIBRATION_BINS = 10
_EPS = 1e-7


def _single_class(y: np.ndarray) -> bool:
    return len(np.unique(y)) < 2


def compute_metric(name: str, y_true: np.ndarray, y_score: np.ndarray) -> float:
    """One metric; NaN when it is undefined on these rows (e.g. ROC-AUC with a single class)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if len(y_true) == 0:
        return float("nan")
    if name == "roc_auc":
        return float("nan") if _single_class(y_true) else float(skm.roc_auc_score(y_true, y_score))
    if name == "pr_auc":
        return float("nan") if _single_class(y_true) else float(skm.average_precision_score(y_true, y_score))
    if name == "log_loss":
        if y_score.ndim == 1:
            p = np.clip(y_score, _EPS, 1 - _EPS)
            return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))
        p = np.clip(y_score[np.arange(len(y_true)), y_true.astype(np.int64)], _EPS, 1.0)
        return float(-np.mean(np.log(p)))
    if name in ("accuracy", "f1", "f1_macro"):
        predicted = (y_score >= 0.5).astype(np.int64) if y_score.ndim == 1 else y_score.argmax(1)
        if name == "accuracy":
            return float(np.mean(predicted == y_true))
        average = "binary" if name == "f1" else "macro"
        return float(skm.f1_score(y_true.astype(np.int64), predicted, average=average, zero_division=0))
    if name == "roc_auc_ovr":
        present = np.unique(y_true.astype(np.int64))
        if len(present) < 2:
            return float("nan")
        # Classes absent from these rows have no ROC curve; average over the present ones.
        scores = y_score[:, present] / np.clip(y_score[:, present].sum(1, keepdims=True), _EPS, None)
        if len(present) == 2:
            return float(skm.roc_auc_score(y_true == present[1], scores[:, 1]))
        return float(skm.roc_auc_score(y_true, scores, multi_class="ovr", labels=present))
    if name == "rmse":
        return float(np.sqrt(np.mean((y_true - y_score) ** 2)))
    if name == "mae":
        return float(np.mean(np.abs(y_true - y_score)))
    if name == "r2":
        return float(skm.r2_score(y_true, y_score)) if len(y_true) > 1 else float("nan")
    raise ValueError(f"unknown metric {name!r}; known: {sorted(HIGHER_IS_BETTER)}")


def all_metrics(task_type: str, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """Every metric of the task type, by name."""
    return {name: compute_metric(name, y_true, y_score) for name in METRICS[task_type]}


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` improves on ``best`` (NaN never does; anything beats no value)."""
    if np.isnan(new):
        return False
    if best is None or np.isnan(best):
        return True
    return new > best if HIGHER_IS_BETTER[metric] else new < best


def beats(metric: str, value: float, incumbent: float | None, margin: float) -> bool:
    """Whether ``value`` improves on ``incumbent`` by more than ``margin`` in the metric's direction."""
    return is_better(metric, value - margin if HIGHER_IS_BETTER[metric] else value + margin, incumbent)


def _downsample(*columns: np.ndarray, limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """Keep at most ``limit`` evenly spaced points, always including both ends."""
    n = len(columns[0])
    keep = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64)) if n else np.arange(0)
    return [np.round(c[keep].astype(np.float64), 6).tolist() for c in columns]


def roc_points(y_true: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    """ROC curve (binary) as {fpr, tpr}, at most 200 points."""
    if _single_class(y_true):
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = skm.roc_curve(y_true, p)
    fpr, tpr = _downsample(fpr, tpr)
    return {"fpr": fpr, "tpr": tpr}


def pr_points(y_true: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    """Precision-recall curve (binary) as {recall, precision}, at most 200 points."""
    if _single_class(y_true):
        return {"recall": [], "precision": []}
    precision, recall, _ = skm.precision_recall_curve(y_true, p)
    recall, precision = _downsample(recall[::-1], precision[::-1])
    return {"recall": recall, "precision": precision}


def deciles(score: np.ndarray) -> list[np.ndarray]:
    """Row indices by ascending ``score`` in 10 groups of equal size (±1 row; empty under 10 rows)."""
    return np.array_split(np.argsort(np.asarray(score, dtype=np.float64), kind="stable"), 10)


def lift_by_decile(y_true: np.ndarray, p: np.ndarray) -> list[dict[str, float]]:
    """Rows by descending score in 10 equal groups: each group's rate of class 1 and its lift."""
    y_true = np.asarray(y_true, dtype=np.float64)
    if len(y_true) == 0:
        return []
    base = y_true.mean()
    rows = []
    for decile, part in enumerate(deciles(-np.asarray(p, dtype=np.float64)), start=1):
        rate = float(y_true[part].mean()) if len(part) else float("nan")
        rows.append(
            {
                "decile": decile,
                "rows": len(part),
                "rate": round(rate, 6),
                "lift": round(rate / base, 4) if base else 0,
            }
        )
    return rows


def by_prediction_decile(y_true: np.ndarray, prediction: np.ndarray) -> list[dict[str, float]]:
    """Regression's calibration: rows by ascending prediction in 10 equal groups, each group's mean
    prediction beside its mean observed value."""
    y_true, prediction = np.asarray(y_true, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    return [{"decile": decile, "rows": len(part), "mean_predicted": round(float(prediction[part].mean()), 6),
             "mean_observed": round(float(y_true[part].mean()), 6)}
            for decile, part in enumerate(deciles(prediction), start=1) if len(part)]


def confusion(y_true: np.ndarray, predicted: np.ndarray, n_classes: int) -> list[list[int]]:
    """Confusion matrix, rows = true class, columns = predicted class."""
    return skm.confusion_matrix(y_true, predicted, labels=np.arange(n_classes)).tolist()


def calibration(y_true: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability curve and expected calibration error (ECE) of predicted probabilities.

    ``p`` is P(class 1) (N,) with 0/1 ``y_true``, or class probabilities (N, C) with class indices, whose
    top-class confidence is checked against accuracy. Rows fall in ``bins`` equal-width bins of the
    predicted probability; each non-empty bin gives its rows, mean predicted and observed rate, and the
    ECE is the rows-weighted mean |predicted - observed|: 0.01 means the probabilities are off by about
    one percentage point.
    """
    y_true, p = np.asarray(y_true), np.asarray(p, dtype=np.float64)
    if p.ndim == 2:
        predicted, observed = p.max(1), (p.argmax(1) == y_true.astype(np.int64)).astype(np.float64)
    else:
        predicted, observed = p, y_true.astype(np.float64)
    if len(predicted) == 0:
        return {"ece": float("nan"), "bins": []}
    which = np.minimum((predicted * bins).astype(np.int64), bins - 1)
    rows = np.bincount(which, minlength=bins)
    mean_predicted = np.bincount(which, weights=predicted, minlength=bins) / np.maximum(rows, 1)
    rate = np.bincount(which, weights=observed, minlength=bins) / np.maximum(rows, 1)
    ece = float(np.sum(rows * np.abs(mean_predicted - rate)) / len(predicted))
    curve = [{"low": round(b / bins, 6), "high": round((b + 1) / bins, 6), "rows": int(rows[b]),
              "mean_predicted": round(float(mean_predicted[b]), 6), "observed": round(float(rate[b]), 6)}
             for b in range(bins) if rows[b]]
    return {"ece": round(ece, 6), "bins": curve}


def leaderboard(rows: list[dict], metric: str) -> list[dict]:
    """Rows ({model, valid, test, ...}) best valid ``metric`` first, undefined (NaN/None) values last."""

    def key(row: dict) -> float:
        value = row.get("valid")
        if value is None or not np.isfinite(value):
            return np.inf
        return -value if HIGHER_IS_BETTER[metric] else value

    return [{"rank": i + 1, **row} for i, row in enumerate(sorted(rows, key=key))]


def evaluation(task_type: str, y_true: np.ndarray, y_score: np.ndarray, *, curves: bool = False) -> dict:
    """All metrics of the task type; with ``curves`` also ROC/PR/lift (binary), the confusion matrix
    (multiclass) or the mean observed value by prediction decile (regression), and for classification the
    calibration (reliability curve and ECE)."""
    result: dict = {"rows": int(len(y_true)), "metrics": all_metrics(task_type, y_true, y_score)}
    if curves and task_type == "binary":
        result["roc"] = roc_points(y_true, y_score)
        result["pr"] = pr_points(y_true, y_score)
        result["lift"] = lift_by_decile(y_true, y_score)
    elif curves and task_type == "multiclass":
        result["confusion"] = confusion(y_true, np.asarray(y_score).argmax(1), np.asarray(y_score).shape[1])
    elif curves and task_type == "regression":
        result["deciles"] = by_prediction_decile(y_true, y_score)
    if curves and task_type in ("binary", "multiclass"):
        result["calibration"] = calibration(y_true, y_score)
    return result
