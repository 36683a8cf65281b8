"""The pretrain benchmark's reading of two learning curves: when the pretrained run reaches scratch's best."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import pretrain as bench  # noqa: E402


def test_epochs_to_reach_follows_the_metric_direction() -> None:
    assert bench.epochs_to_reach([0.70, 0.74, 0.76], 0.74, "roc_auc") == 2
    assert bench.epochs_to_reach([1.30, 1.20, 1.19], 1.20, "log_loss") == 2
    assert bench.epochs_to_reach([1.30, 1.25], 1.20, "rmse") is None


def test_best_epoch_is_one_based_and_direction_aware() -> None:
    assert bench.best_epoch([0.7, 0.8, 0.75], "roc_auc") == (2, 0.8)
    assert bench.best_epoch([1.3, 1.1, 1.2], "log_loss") == (2, 1.1)
