"""The report's plots: what an analyst would rather look at than read, drawn from report.json as PNG files.

``render(report, folder)`` writes the plots that the run's task type has and returns their names:

- ``leaderboard.png``: every model and the blend, valid and test, in the run's metric;
- ``learning_curves.png``: each encoder's valid metric per epoch (on the rows it stopped on);
- ``roc_pr.png`` (binary): the blend's ROC and precision-recall curves on test;
- ``lift.png`` (binary): the blend's lift by score decile on test;
- ``calibration.png`` (binary, multiclass): predicted probability against the observed rate on test;
- ``confusion.png`` (multiclass): the blend's confusion matrix on test, each true class's row in shares;
- ``deciles.png`` (regression): the blend's mean prediction against the mean observed value by decile.

Figures are drawn with matplotlib's object API on its Agg canvas: no pyplot, no display, no global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from anna_models.metrics import HIGHER_IS_BETTER

PLOTS = ("leaderboard.png", "learning_curves.png", "roc_pr.png", "lift.png", "calibration.png",
         "confusion.png", "deciles.png")
BLUE, GREY = "#1f77b4", "#9a9a9a"


def render(report: dict[str, Any], folder: Path) -> list[str]:
    """Draw every plot the report has data for into ``folder``; returns the file names, in ``PLOTS`` order."""
    test = report["blend"]["test"]
    drawers: dict[str, Callable[[Figure], None]] = {
        "leaderboard.png": lambda fig: _leaderboard(fig, report),
        "learning_curves.png": lambda fig: _learning_curves(fig, report),
    }
    if "roc" in test and "pr" in test:
        drawers["roc_pr.png"] = lambda fig: _roc_pr(fig, test)
    if test.get("lift"):
        drawers["lift.png"] = lambda fig: _lift(fig, test["lift"])
    if (test.get("calibration") or {}).get("bins"):
        drawers["calibration.png"] = lambda fig: _calibration(fig, test["calibration"], report["task_type"])
    if test.get("confusion"):
        drawers["confusion.png"] = lambda fig: _confusion(fig, test["confusion"], report.get("classes") or [])
    if test.get("deciles"):
        drawers["deciles.png"] = lambda fig: _deciles(fig, test["deciles"])
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLOTS:
        if name in drawers:
            fig = Figure(figsize=(9, 4.5), layout="constrained")
            drawers[name](fig)
            fig.savefig(folder / name, dpi=100)
            written.append(name)
    return written


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _direction(metric: str) -> str:
    return f"{metric} ({'higher' if HIGHER_IS_BETTER.get(metric, True) else 'lower'} is better)"


def _title(report: dict[str, Any]) -> str:
    return f"run {report['run_id']}, {report['task_name']}"


def _leaderboard(fig: Figure, report: dict[str, Any]) -> None:
    board = [row for row in report.get("leaderboard", []) if _finite(row.get("test"))]
    ax = fig.add_subplot()
    names = [row["model"] for row in board][::-1]  # best at the top
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [row["valid"] if _finite(row["valid"]) else 0 for row in board][::-1],
            height=0.4, color=GREY, label="valid")
    ax.barh([i - 0.2 for i in y], [row["test"] for row in board][::-1], height=0.4, color=BLUE, label="test")
    for i, row in zip(y, board[::-1], strict=True):
        ax.annotate(f"{row['test']:.4f}", (row["test"], i - 0.2), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(list(y), names)
    values = [v for row in board for v in (row["valid"], row["test"]) if _finite(v)]
    if values:  # bars start near the worst model: the differences that matter are in the third decimal
        span = max(values) - min(values)
        ax.set_xlim(min(values) - max(span, 0.01) * 0.5, max(values) + max(span, 0.01) * 0.25)
    ax.set_xlabel(_direction(report["metric"]))
    ax.legend(loc="lower right")
    ax.set_title(f"{_title(report)}: leaderboard (the blend's valid is cross-validated)")


def _learning_curves(fig: Figure, report: dict[str, Any]) -> None:
    ax = fig.add_subplot()
    models = {**report.get("domains", {}), **({"fusion": report["fusion"]} if "fusion" in report else {})}
    for name, entry in models.items():
        history = entry.get("history") or []
        epochs = [h["epoch"] for h in history if _finite(h.get("valid_metric"))]
        values = [h["valid_metric"] for h in history if _finite(h.get("valid_metric"))]
        ax.plot(epochs, values, marker="o", markersize=3, label=name)
    stopped_on = {(entry.get("stopping") or {}).get("on", "valid") for entry in models.values()}
    rows = {frozenset({"train"}): "the stopping rows", frozenset({"valid"}): "valid"}.get(
        frozenset(stopped_on), "the rows each stopped on")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{_direction(report['metric'])} on {rows}")
    if ax.lines:
        ax.legend(fontsize=8)
    ax.set_title(f"{_title(report)}: the chosen encoders' learning curves")


def _roc_pr(fig: Figure, test: dict[str, Any]) -> None:
    roc_ax, pr_ax = fig.subplots(1, 2)
    metrics = test.get("metrics", {})
    roc_ax.plot(test["roc"]["fpr"], test["roc"]["tpr"], color=BLUE)
    roc_ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1)
    _square(roc_ax, "false positive rate", "true positive rate",
            f"ROC, blend on test (ROC-AUC {metrics.get('roc_auc', float('nan')):.4f})")
    pr_ax.plot(test["pr"]["recall"], test["pr"]["precision"], color=BLUE)
    _square(pr_ax, "recall", "precision",
            f"precision-recall (PR-AUC {metrics.get('pr_auc', float('nan')):.4f})")


def _lift(fig: Figure, lift: list[dict[str, Any]]) -> None:
    ax = fig.add_subplot()
    deciles = [row["decile"] for row in lift]
    ax.bar(deciles, [row["lift"] for row in lift], color=BLUE)
    ax.axhline(1.0, color=GREY, linestyle="--", linewidth=1)
    for row in lift:
        ax.annotate(f"{row['rate']:.1%}", (row["decile"], row["lift"]), xytext=(0, 2),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(deciles)
    ax.set_xlabel("score decile (1 = highest scores)")
    ax.set_ylabel("lift (decile's rate / overall rate)")
    ax.set_title("lift by decile, blend on test (labels: the decile's positive rate)")


def _calibration(fig: Figure, calibration: dict[str, Any], task_type: str) -> None:
    ax = fig.add_subplot()
    bins = calibration["bins"]
    ax.plot([0, 1], [0, 1], color=GREY, linestyle="--", linewidth=1, label="perfectly calibrated")
    largest = max(b["rows"] for b in bins)
    sizes = [20 + 200 * b["rows"] / largest for b in bins]
    ax.scatter([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], s=sizes, color=BLUE,
               label="probability bins (area: rows)")
    ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], color=BLUE, linewidth=1)
    what = "top-class confidence vs accuracy" if task_type == "multiclass" else "predicted vs observed rate"
    _square(ax, "mean predicted probability", "observed rate",
            f"calibration, blend on test: {what} (ECE {calibration['ece']:.4f})")
    ax.legend(loc="upper left", fontsize=8)


def _confusion(fig: Figure, matrix: list[list[int]], classes: list) -> None:
    ax = fig.add_subplot()
    counts = [[int(c) for c in row] for row in matrix]
    shares = [[c / max(sum(row), 1) for c in row] for row in counts]  # of each true class's rows
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax.text(j, i, f"{shares[i][j]:.0%}\n{count}", ha="center", va="center", fontsize=8,
                    color="white" if shares[i][j] > 0.5 else "black")
    labels = [str(c) for c in (classes if len(classes) == len(counts) else range(len(counts)))]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion, blend on test (share of each true class's rows, and rows)", fontsize=10)


def _deciles(fig: Figure, deciles: list[dict[str, Any]]) -> None:
    ax = fig.add_subplot()
    predicted = [d["mean_predicted"] for d in deciles]
    observed = [d["mean_observed"] for d in deciles]
    ax.plot(predicted, observed, marker="o", color=BLUE, label="prediction deciles")
    low, high = min(predicted + observed), max(predicted + observed)
    ax.plot([low, high], [low, high], color=GREY, linestyle="--", linewidth=1, label="prediction = observed")
    ax.set_xlabel("mean prediction in the decile")
    ax.set_ylabel("mean observed value")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("predicted against observed, blend on test (rows in 10 groups by prediction)", fontsize=10)


def _square(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
