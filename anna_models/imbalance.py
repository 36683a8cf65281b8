"""Class weights for imbalanced classification, shared by the encoders' loss and the LightGBM model.

A rare class (a default rate of 3%, a product few clients take) contributes little to an unweighted
loss, so a model may learn it late or not at all. When the most frequent class outnumbers the rarest by
``IMBALANCE_RATIO`` or more, each class is weighted by ``sqrt(largest share / its share)``, at most
``MAX_WEIGHT`` (for binary that is ``pos_weight = sqrt(neg / pos)``). The square root and the cap keep
the weighted models from chasing a handful of rows. Weighted models over-predict the rare classes; the
blender, fit unweighted on held-out rows, maps their outputs back to calibrated probabilities.
"""

from __future__ import annotations

import numpy as np

IMBALANCE_RATIO = 9.0  # binary: a positive share below 10%
MAX_WEIGHT = 10.0


def class_weights(y: np.ndarray, task_type: str, n_classes: int = 2) -> np.ndarray | None:
    """(C,) weights per class for classification targets ``y`` (class indices); None for regression and
    when the classes are balanced enough. Classes absent from ``y`` keep weight 1."""
    if task_type not in ("binary", "multiclass") or len(y) == 0:
        return None
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=max(n_classes, 2)).astype(np.float64)
    present = counts > 0
    if present.sum() < 2:
        return None
    ratio = counts.max() / counts[present].min()
    if ratio < IMBALANCE_RATIO:
        return None
    weights = np.ones_like(counts)
    weights[present] = np.clip(np.sqrt(counts.max() / counts[present]), 1.0, MAX_WEIGHT)
    return weights
