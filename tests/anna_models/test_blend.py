"""The blender: combines domains better than any one, scores clients missing a domain, round-trips, keeps
the best single model when the blend cross-validates worse, and gives calibrated probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anna_models.blend import Blender
from anna_models.metrics import calibration, compute_metric


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


def test_the_blend_is_kept_when_it_cross_validates_better_and_the_choice_is_recorded(tmp_path: Path) -> None:
    outputs, present, truth, u = two_domains(3000, seed=2)
    y = (u < 1 / (1 + np.exp(-truth))).astype(int)
    blender = Blender("binary", ["card", "credit"]).fit(outputs, present, y, metric="roc_auc")
    choice = blender.choice
    assert choice["kind"] == "blend" and blender.inputs == ["card", "credit"]
    assert choice["metric"] == "roc_auc"
    assert set(choice["cv"]) == {"blend", "card", "credit"} and choice["folds"] == 5
    assert choice["cv"]["blend"] > max(choice["cv"]["card"], choice["cv"]["credit"]) + 0.03
    blender.save(tmp_path / "b.json")
    assert Blender.load(tmp_path / "b.json").choice == choice


def test_the_best_single_model_is_kept_when_the_blend_cross_validates_worse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs, present, truth, u = two_domains(2000, seed=3)
    y = (u < 1 / (1 + np.exp(-truth))).astype(int)
    wobble = np.array([0.01, -0.01, 0.005, -0.005, 0.0])  # the folds differ, the lead does not
    scores = {("card", "credit"): 0.70 + wobble, ("card",): 0.72 + wobble + wobble / 10,
              ("credit",): 0.65 + wobble}  # as if the blend overfit
    monkeypatch.setattr(Blender, "_cross_validate",
                        lambda self, o, p, y, folds, names, metric: scores[tuple(names)])
    blender = Blender("binary", ["card", "credit"]).fit(outputs, present, y, metric="roc_auc")
    assert blender.choice["kind"] == "single" and blender.inputs == ["card"]
    assert blender.choice["cv"] == pytest.approx({"blend": 0.70, "card": 0.72, "credit": 0.65})
    assert 0 < blender.choice["margin"] < 0.002  # two standard errors of card's lead over the folds
    p = blender.predict(outputs, present)
    noise = {**outputs, "credit": np.random.default_rng(0).normal(size=2000)}
    np.testing.assert_array_equal(blender.predict(noise, present), p)  # the other model is not read
    # It is still calibrated: the chosen model's logits are refit on the held-out rows.
    assert abs(p.mean() - y.mean()) < 0.01
    blender.save(tmp_path / "b.json")
    np.testing.assert_array_equal(Blender.load(tmp_path / "b.json").predict(outputs, present), p)

    # Lower-is-better metrics choose the smallest score.
    losses = {("card", "credit"): 0.50 + wobble, ("card",): 0.52 + wobble, ("credit",): 0.49 + wobble}
    monkeypatch.setattr(Blender, "_cross_validate",
                        lambda self, o, p, y, folds, names, metric: losses[tuple(names)])
    blender = Blender("binary", ["card", "credit"]).fit(outputs, present, y, metric="log_loss")
    assert blender.inputs == ["credit"]


def test_blended_probabilities_are_calibrated_from_miscalibrated_models() -> None:
    """Inputs as a class-weighted model gives them (logits shifted up, overconfident): the blender, fit on
    held-out rows, maps them to probabilities whose reliability curve follows the diagonal."""
    outputs, present, truth, u = two_domains(12000, seed=4)
    y = (u < 1 / (1 + np.exp(-(truth - 1.5)))).astype(int)  # base rate ~25%
    skewed = {d: 2.0 * o + 1.5 for d, o in outputs.items()}
    fit, hold = np.arange(6000), np.arange(6000, 12000)
    blender = Blender("binary", ["card", "credit"]).fit(
        {d: o[fit] for d, o in skewed.items()}, {d: p[fit] for d, p in present.items()}, y[fit]
    )
    p = blender.predict({d: o[hold] for d, o in skewed.items()}, {d: q[hold] for d, q in present.items()})
    raw = 1 / (1 + np.exp(-skewed["card"][hold]))
    assert calibration(y[hold], raw)["ece"] > 0.15
    result = calibration(y[hold], p)
    assert result["ece"] < 0.02
    assert sum(b["rows"] for b in result["bins"]) == len(hold)
    for b in result["bins"]:
        if b["rows"] >= 300:
            assert abs(b["mean_predicted"] - b["observed"]) < 0.05, b


def _fusion_and_domains(fusion_noise: float, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Valid outputs (N, 1) of two domain models (each sees half the truth), a fusion model (sees all of it,
    with ``fusion_noise``) and LightGBM, and binary labels."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=3000), rng.normal(size=3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-(a + b)))).astype(int)
    outputs = {"card": a, "credit": b, "fusion": a + b + fusion_noise * rng.normal(size=3000),
               "lightgbm": a + b + 1.5 * rng.normal(size=3000)}
    return {name: value[:, None] for name, value in outputs.items()}, y


def test_the_domain_models_are_not_blended_when_the_fusion_model_beats_each_on_valid() -> None:
    from anna_models.ensemble import blend_inputs

    names = ["card", "credit", "fusion", "lightgbm"]
    outputs, y = _fusion_and_domains(fusion_noise=0.3)
    assert blend_inputs("binary", "roc_auc", names, outputs, y) == ["fusion", "lightgbm"]
    # A domain model better than the fusion model on valid keeps every model on offer.
    outputs, y = _fusion_and_domains(fusion_noise=3.0)
    auc = {name: compute_metric("roc_auc", y, value[:, 0]) for name, value in outputs.items()}
    assert auc["card"] > auc["fusion"]
    assert blend_inputs("binary", "roc_auc", names, outputs, y) == names
    # Without a fusion model (one domain) there is nothing to leave out.
    assert blend_inputs("binary", "roc_auc", ["card", "lightgbm"], outputs, y) == ["card", "lightgbm"]


def test_a_single_model_whose_lead_is_within_the_folds_noise_leaves_the_blend(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blend holds each model alone as a special case: a single model must beat it by more than twice
    the standard error of their per-fold difference to replace it."""
    outputs, present, truth, u = two_domains(2000, seed=4)
    y = (u < 1 / (1 + np.exp(-truth))).astype(int)
    blend = np.array([0.760, 0.770, 0.765, 0.758, 0.772])
    lead = np.array([0.003, -0.002, 0.002, 0.001, -0.0005])  # +0.0007 on average, a standard error of 0.001
    scores = {("card", "credit"): blend, ("card",): blend + lead, ("credit",): blend - 0.05}
    monkeypatch.setattr(Blender, "_cross_validate",
                        lambda self, o, p, y, folds, names, metric: scores[tuple(names)])
    blender = Blender("binary", ["card", "credit"]).fit(outputs, present, y, metric="roc_auc")
    assert blender.choice["cv"]["card"] > blender.choice["cv"]["blend"]
    assert blender.choice["kind"] == "blend" and blender.inputs == ["card", "credit"]
    assert blender.choice["margin"] == pytest.approx(2 * lead.std(ddof=1) / np.sqrt(5))

    scores[("card",)] = blend + lead + 0.004  # the same spread, a lead of 0.0047: beyond the noise
    blender = Blender("binary", ["card", "credit"]).fit(outputs, present, y, metric="roc_auc")
    assert blender.choice["kind"] == "single" and blender.inputs == ["card"]
