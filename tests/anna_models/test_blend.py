"""The blender: combines domains better than any one, scores clients missing a domain, round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anna_models.blend import Blender
from anna_models.metrics import compute_metric


def two_domains(n: int, seed: int) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Two domains each seeing half of the truth, the second missing for 30% of clients."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    truth = a + b
    present = {"card": np.ones(n, bool), "credit": rng.random(n) > 0.3}
    outputs = {
        "card": a + 0.3 * rng.normal(size=n),
        "credit": np.where(present["credit"], b + 0.3 * rng.normal(size=n), -1.2),  # the no-history logit
    }
    return outputs, present, truth, rng.random(n)


def test_binary_blend_beats_each_domain_and_scores_missing_domains(tmp_path: Path) -> None:
    outputs, present, truth, u = two_domains(6000, seed=0)
    y = (u < 1 / (1 + np.exp(-truth))).astype(int)
    fit, hold = np.arange(3000), np.arange(3000, 6000)
    blender = Blender("binary", ["card", "credit"]).fit(
        {d: o[fit] for d, o in outputs.items()}, {d: p[fit] for d, p in present.items()}, y[fit]
    )
    p = blender.predict({d: o[hold] for d, o in outputs.items()}, {d: q[hold] for d, q in present.items()})
    blended = compute_metric("roc_auc", y[hold], p)
    for domain in outputs:
        assert blended > compute_metric("roc_auc", y[hold], outputs[domain][hold]) + 0.03
    missing = ~present["credit"][hold]
    assert np.isfinite(p).all() and 0 < p[missing].std()  # clients without credit still ranked by card
    blender.save(tmp_path / "b.json")
    again = Blender.load(tmp_path / "b.json")
    np.testing.assert_allclose(again.predict(outputs, present), blender.predict(outputs, present))


def test_multiclass_and_regression_blends() -> None:
    outputs, present, truth, u = two_domains(3000, seed=1)
    klass = np.digitize(truth, [-0.7, 0.7])
    multi = {d: np.stack([-o, np.zeros_like(o), o], axis=1) for d, o in outputs.items()}
    probs = (
        Blender("multiclass", ["card", "credit"], n_classes=3)
        .fit(multi, present, klass)
        .predict(multi, present)
    )
    assert probs.shape == (3000, 3) and np.allclose(probs.sum(1), 1)
    assert compute_metric("accuracy", klass, probs) > 0.6

    two_classes = np.where(klass == 2, 2, 0)  # a multiclass task whose fit rows hold only two classes
    probs = (
        Blender("multiclass", ["card", "credit"], n_classes=3)
        .fit(multi, present, two_classes)
        .predict(multi, present)
    )
    assert probs.shape == (3000, 3) and probs[:, 1].max() < 1e-6

    target = 100 + 10 * truth
    reg = Blender("regression", ["card", "credit"]).fit(outputs, present, target)
    assert (
        compute_metric("r2", target, reg.predict(outputs, present)) > 0.7
    )  # ~0.78 at best: b is often missing
