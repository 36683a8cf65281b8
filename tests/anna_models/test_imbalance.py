"""Rare classes: weighted in the encoders' and LightGBM's losses, so they are learned; the blender, fit on
held-out rows, brings the probabilities back to the true rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anna_models.blend import Blender
from anna_models.config import TrainParams
from anna_models.encoders import ModelConfig
from anna_models.imbalance import MAX_WEIGHT, class_weights
from anna_models.metrics import compute_metric
from anna_models.sequences import Sequences
from anna_models.training import predict, to_scores, train_model

MANIFEST = {"features": {"mcc": {"kind": "categorical", "vocab_size": 12}}}


def test_weights_only_when_a_class_is_rare() -> None:
    assert class_weights(np.r_[np.zeros(80), np.ones(20)], "binary") is None  # 20%: left alone
    weights = class_weights(np.r_[np.zeros(95), np.ones(5)], "binary")
    np.testing.assert_allclose(weights, [1.0, np.sqrt(19)])  # pos_weight = sqrt(neg / pos)
    assert class_weights(np.r_[np.zeros(9999), np.ones(1)], "binary")[1] == MAX_WEIGHT
    multi = class_weights(np.r_[np.zeros(600), np.ones(350), np.full(50, 2)], "multiclass", 4)
    np.testing.assert_allclose(multi, [1.0, np.sqrt(600 / 350), np.sqrt(12), 1.0])  # class 3 absent
    assert class_weights(np.random.default_rng(0).normal(size=50), "regression") is None


def rare_task(n: int, seed: int) -> tuple[Sequences, np.ndarray]:
    """Rows whose merchant codes and amounts drift with a hidden trait; the top ~5% of it defaults."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    lengths = np.minimum(rng.geometric(0.08, n), 80) + 1
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    owner = np.repeat(z, lengths)
    mcc = np.where(rng.random(len(owner)) < 0.3 + 0.2 * np.tanh(owner), 2, rng.integers(3, 12, len(owner)))
    seqs = Sequences(
        offsets=offsets,
        categorical={"mcc": mcc.astype(np.int32)},
        numeric={"amount": (owner + rng.normal(size=len(owner))).astype(np.float32)},
        time_features=rng.random((len(owner), 4)).astype(np.float32),
    )
    y = (z + 0.4 * rng.normal(size=n) > 1.75).astype(np.float32)
    return seqs, y


def test_a_rare_class_is_learned_and_the_blend_restores_the_base_rate(tmp_path: Path) -> None:
    seqs, y = rare_task(4500, seed=0)
    train, valid, test = np.arange(2500), np.arange(2500, 3500), np.arange(3500, 4500)
    assert 0.03 < y.mean() < 0.08
    params = TrainParams(hidden=16, max_epochs=4, patience=1, batch_size=64, lr=1e-2)
    model, _ = train_model({"cards": seqs.take(train)}, y[train], {"cards": seqs.take(valid)}, y[valid],
                           task_type="binary", metric="roc_auc", classes=[0, 1],
                           manifests={"cards": MANIFEST}, params=params, seed=0)
    weights = model.config.class_weights
    assert weights is not None and weights[1] > 3 and weights[0] == 1.0
    model.save(tmp_path / "model")
    assert ModelConfig.load(tmp_path / "model" / "model.json").class_weights == weights

    out_valid, _ = predict(model, seqs.take(valid))
    out_test, _ = predict(model, seqs.take(test))
    assert compute_metric("roc_auc", y[test], out_test) > 0.8  # the rare class is learned
    # The weighted model over-predicts the rare class; the blender, fit on held-out rows, does not.
    assert to_scores("binary", out_test).mean() > 2 * y.mean()
    blender = Blender("binary", ["cards"]).fit({"cards": out_valid}, {"cards": np.ones(1000, bool)}, y[valid])
    blended = blender.predict({"cards": out_test}, {"cards": np.ones(1000, bool)})
    assert abs(blended.mean() - y[test].mean()) < 0.015


def test_lightgbm_weights_a_rare_class_too() -> None:
    from anna_models.boosting import train_aggregate_model

    seqs, y = rare_task(3000, seed=1)
    model, _ = train_aggregate_model({"cards": seqs.take(np.arange(2000))}, y[:2000],
                                     client_id=np.arange(2000), task_type="binary", metric="roc_auc",
                                     classes=[0, 1], features={"cards": MANIFEST["features"]},
                                     params={"num_threads": 1})
    assert model.class_weights is not None and model.class_weights[1] > 3
    outputs = model.predict({"cards": seqs.take(np.arange(2000, 3000))})
    assert compute_metric("roc_auc", y[2000:], outputs) > 0.75
