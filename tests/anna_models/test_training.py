"""Training a domain encoder: it learns, stops early on the best valid metric, predicts in input order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anna_models.batching import EventTable
from anna_models.config import TrainParams
from anna_models.devices import autocast, data_placement
from anna_models.encoders import DomainModel, EncoderConfig, SequenceEncoder
from anna_models.metrics import compute_metric
from anna_models.sequences import Sequences
from anna_models.training import (
    model_config,
    predict,
    to_scores,
    train_domain_encoder,
    train_model,
)

MANIFEST = {"features": {"mcc": {"kind": "categorical", "vocab_size": 12}}}
FAST = TrainParams(hidden=16, max_epochs=3, patience=1, batch_size=64, lr=1e-2)


def latent_task(n: int, seed: int) -> tuple[Sequences, np.ndarray]:
    """Rows whose amounts and merchant codes both drift with a hidden trait z; 10% have no history."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    lengths = np.minimum(rng.geometric(0.08, n), 120)
    lengths[rng.random(n) < 0.1] = 0
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    owner = np.repeat(z, lengths)
    mcc = np.where(rng.random(len(owner)) < 0.3 + 0.2 * np.tanh(owner), 2, rng.integers(3, 12, len(owner)))
    seqs = Sequences(
        offsets=offsets,
        categorical={"mcc": mcc.astype(np.int32)},
        numeric={"amount": (owner + rng.normal(size=len(owner))).astype(np.float32)},
        time_features=rng.random((len(owner), 4)).astype(np.float32),
    )
    return seqs, z


def test_binary_encoder_learns_and_keeps_its_best_epoch() -> None:
    seqs, z = latent_task(1600, seed=0)
    y = (z + 0.5 * np.random.default_rng(1).normal(size=len(z)) > 0).astype(np.float32)
    train, valid = np.arange(1200), np.arange(1200, 1600)
    calls: list[dict] = []
    model, history = train_domain_encoder(
        seqs.take(train),
        y[train],
        seqs.take(valid),
        y[valid],
        task_type="binary",
        metric="roc_auc",
        classes=[0, 1],
        manifest=MANIFEST,
        params=FAST,
        progress=lambda **f: calls.append(f),
        seed=0,
    )
    assert 1 <= len(history) <= 3
    assert all(h["events_per_s"] > 0 for h in history)
    # Forward, backward and the optimiser step take most of an epoch; producing batches the rest.
    assert all(0.5 < h["model_share"] <= 1 for h in history)
    epoch_ends = [c for c in calls if c.get("metric_name") == "roc_auc"]
    assert [c["epoch"] for c in epoch_ends] == [h["epoch"] for h in history]
    assert {c["unit"] for c in calls} == {"epoch"}
    outputs, embeddings = predict(model, seqs.take(valid))
    auc = compute_metric("roc_auc", y[valid], to_scores("binary", outputs))
    assert auc > 0.75
    # Training validates where it trains: on a GPU in bf16, which differs from this CPU pass by rounding.
    tolerance = 1e-3 if torch.cuda.is_available() else 1e-6
    assert auc == pytest.approx(max(h["valid_metric"] for h in history), abs=tolerance)
    assert embeddings.shape == (400, 16)


def test_predict_restores_input_order_and_training_is_reproducible() -> None:
    seqs, z = latent_task(500, seed=2)
    y = (z > 0).astype(np.float32)
    params = TrainParams(hidden=8, max_epochs=1, batch_size=64)
    kwargs = dict(
        task_type="binary", metric="log_loss", classes=[0, 1], manifest=MANIFEST, params=params, seed=7
    )
    model_a, history_a = train_domain_encoder(seqs, y, seqs, y, **kwargs)
    model_b, history_b = train_domain_encoder(seqs, y, seqs, y, **kwargs)
    assert history_a[0]["valid_metric"] == history_b[0]["valid_metric"]
    perm = np.random.default_rng(0).permutation(seqs.n_rows)
    out, emb = predict(model_a, seqs)
    out_perm, emb_perm = predict(model_a, seqs.take(perm))
    np.testing.assert_allclose(out_perm, out[perm], atol=1e-5)
    np.testing.assert_allclose(emb_perm, emb[perm], atol=1e-5)


def test_multiclass_and_regression_outputs() -> None:
    seqs, z = latent_task(600, seed=3)
    params = TrainParams(hidden=8, max_epochs=2, batch_size=64, lr=1e-2)
    klass = np.digitize(z, [-0.5, 0.5])
    model, _ = train_domain_encoder(
        seqs,
        klass,
        seqs,
        klass,
        task_type="multiclass",
        metric="log_loss",
        classes=["a", "b", "c"],
        manifest=MANIFEST,
        params=params,
    )
    outputs, _ = predict(model, seqs)
    probs = to_scores("multiclass", outputs)
    assert outputs.shape == (600, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)

    target = 1000.0 + 50.0 * z  # far from 0 and 1: the model must undo its target standardisation
    model, history = train_domain_encoder(
        seqs,
        target,
        seqs,
        target,
        task_type="regression",
        metric="rmse",
        classes=[],
        manifest=MANIFEST,
        params=params,
    )
    prediction, _ = predict(model, seqs)
    assert abs(prediction.mean() - target.mean()) < 0.5 * target.std()
    assert history[-1]["valid_metric"] < target.std()


def test_the_fusion_model_combines_what_each_domain_sees_alone() -> None:
    card, z1 = latent_task(1600, seed=4)
    credit, z2 = latent_task(1600, seed=5)
    y = (z1 + z2 > 0).astype(np.float32)
    train, valid = np.arange(1200), np.arange(1200, 1600)
    kwargs = dict(task_type="binary", metric="roc_auc", classes=[0, 1], params=FAST)
    single, _ = train_domain_encoder(
        card.take(train), y[train], card.take(valid), y[valid], manifest=MANIFEST, **kwargs
    )
    fusion, _ = train_model(
        {"card": card.take(train), "credit": credit.take(train)},
        y[train],
        {"card": card.take(valid), "credit": credit.take(valid)},
        y[valid],
        manifests={"card": MANIFEST, "credit": MANIFEST},
        **kwargs,
    )
    auc_single = compute_metric("roc_auc", y[valid], predict(single, card.take(valid))[0])
    fused, embeddings = predict(fusion, {"card": card.take(valid), "credit": credit.take(valid)})
    assert compute_metric("roc_auc", y[valid], fused) > auc_single + 0.05
    assert embeddings.shape == (400, FAST.hidden)
    with pytest.raises(ValueError, match="dict of Sequences"):
        predict(fusion, card)


def test_predictions_do_not_depend_on_batch_size_and_the_model_stays_where_it_was() -> None:
    seqs, z = latent_task(300, seed=8)
    y = (z > 0).astype(np.float32)
    params = TrainParams(hidden=8, max_epochs=1, batch_size=64)
    model, _ = train_domain_encoder(seqs, y, seqs, y, task_type="binary", metric="log_loss", classes=[0, 1],
                                    manifest=MANIFEST, params=params, device="cpu")
    model.train()
    out_small, emb_small = predict(model, seqs, batch_size=7)
    out_large, emb_large = predict(model, seqs, batch_size=4096)
    np.testing.assert_allclose(out_small, out_large, atol=1e-5)
    np.testing.assert_allclose(emb_small, emb_large, atol=1e-5)
    assert model.training and next(model.parameters()).device.type == "cpu"


def test_cpu_runs_in_float32_from_host_memory_and_a_gpu_gets_its_tables_when_they_fit() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    with autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
    assert data_placement(cpu, table_bytes=10, free_bytes=10**12) == "host"
    assert data_placement(gpu, table_bytes=10**9, free_bytes=80 * 10**9) == "device"
    # Too large for the card: batches are gathered on the host and travel in pinned memory.
    assert data_placement(gpu, table_bytes=60 * 10**9, free_bytes=80 * 10**9) == "pinned"


def test_the_recurrence_pooling_and_head_stay_float32_under_bf16_autocast() -> None:
    encoder = SequenceEncoder(EncoderConfig(categorical={}, n_dense=4, hidden=8)).eval()
    events = torch.randn(5, 30, 8)
    lengths = torch.tensor([30, 12, 1, 0, 7])
    reference = encoder(events, lengths)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = encoder(events.bfloat16(), lengths)
    assert mixed.dtype == torch.float32
    # Only the input's bf16 rounding remains (a bf16 recurrence would drift further over 30 steps).
    torch.testing.assert_close(mixed, reference, atol=2e-2, rtol=0)
    seqs, _ = latent_task(50, seed=9)
    config = model_config({"events": seqs}, {"events": MANIFEST}, TrainParams(hidden=8), task_type="binary",
                          classes=[0, 1], y_train=np.zeros(50))
    model = DomainModel(config).eval()
    table = EventTable(seqs, vocab_sizes={"mcc": 12})
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, embedding = model({"events": table.batch(np.arange(50))})
    assert outputs.dtype == embedding.dtype == torch.float32


def test_predictions_on_several_threads_equal_those_on_one_and_the_thread_count_is_restored() -> None:
    seqs, z = latent_task(600, seed=4)
    y = (z > 0).astype(np.float32)
    params = TrainParams(hidden=8, max_epochs=1, batch_size=64)
    model, _ = train_domain_encoder(seqs, y, seqs, y, task_type="binary", metric="log_loss", classes=[0, 1],
                                    manifest=MANIFEST, params=params, device="cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_out, one_emb = predict(model, seqs, batch_size=32)
        torch.set_num_threads(2)
        two_out, two_emb = predict(model, seqs, batch_size=32)  # ~19 batches over two threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(two_out, one_out, atol=1e-6)
    np.testing.assert_allclose(two_emb, one_emb, atol=1e-6)
