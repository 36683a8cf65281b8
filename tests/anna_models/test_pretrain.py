"""Pretrained domain encoders: contrastive training, the point-in-time rule, the registry and fine-tuning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from anna_models.batching import EventTable
from anna_models.coles import ColesParams, sample_views
from anna_models.config import TrainParams
from anna_models.extract import extract_sequences
from anna_models.mart_writer import build_mart
from anna_models.marts import Mart, read_manifest
from anna_models.pretrain import (
    default_cutoff,
    find_pretrained,
    log_encoder,
    pretrain_domain,
    pretraining_sequences,
)
from anna_models.training import train_model

CUTOFF = "2024-07-01"
TINY = ColesParams(hidden=16, epochs=10, clients_per_batch=32, views=2, seed=0)


def _events(n_clients: int = 120, seed: int = 0) -> pd.DataFrame:
    """Clients with a steady personal habit (their own favourite merchant type) over 2024; every event on or
    after the cutoff is of the merchant type "late", so any leak past the cutoff is visible."""
    rng = np.random.default_rng(seed)
    frames = []
    start = np.datetime64("2024-01-01T00:00:00", "s")
    for client in range(n_clients):
        n = int(rng.integers(6, 60))
        times = np.sort(start + rng.integers(0, 365 * 86_400, n).astype("timedelta64[s]"))
        favourite = f"m{client % 12}"
        mcc = np.where(rng.random(n) < 0.7, favourite, rng.choice([f"m{k}" for k in range(12)], n))
        mcc = np.where(times >= np.datetime64(CUTOFF, "s"), "late", mcc)
        amount = rng.lognormal(3 + (client % 5) * 0.5, 0.3, n)
        frames.append(pd.DataFrame({"client_id": 1000 + client, "event_time": times, "mcc": mcc,
                                    "amount": amount}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def mart_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("marts") / "cards"
    build_mart(_events(), "cards", categorical=["mcc"], numeric={"amount": "signed_log1p"}, out_dir=out)
    return out


@pytest.fixture(scope="module")
def pretrained(mart_path: Path):
    return pretrain_domain(mart_path, before=CUTOFF, params=TINY)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, pretrained) -> str:
    """A local MLflow store holding two versions of the encoder: cutoffs 2024-04-01 and 2024-07-01."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    encoder, _ = pretrained
    log_encoder(dataclasses.replace(encoder, cutoff="2024-04-01"), uri)
    log_encoder(encoder, uri)
    return uri


def test_contrastive_loss_falls_and_views_of_a_client_find_each_other(pretrained) -> None:
    _, history = pretrained
    assert history[-1]["loss"] < history[0]["loss"] - 1.0
    # 64 views per batch: a random guess finds its client's other view 1 time in 63.
    assert history[-1]["accuracy"] > 0.3


def test_views_hold_no_event_at_or_after_the_cutoff(mart_path: Path) -> None:
    mart = Mart.open(mart_path)
    late = mart.manifest["features"]["mcc"]["values"].index("late")
    seqs = pretraining_sequences(mart, CUTOFF, max_len=256)
    table = EventTable(seqs)
    rows = np.flatnonzero(table.lengths >= 4)
    batch, owner = sample_views(table, rows, n_numeric=1, params=TINY, rng=np.random.default_rng(1))
    real = torch.arange(batch.categorical.shape[1])[None, :] < batch.lengths[:, None]
    assert real.sum() > 0 and not (batch.categorical[..., 0][real] == late).any()
    # The mart does hold later events, so the check above could fail.
    ids = mart.client_ids
    later = extract_sequences(mart, ids, np.full(len(ids), np.datetime64("2025-01-01")), 256)
    assert (later.categorical["mcc"] == late).any()
    assert np.array_equal(owner, np.repeat(np.arange(len(rows)), TINY.views))
    # Re-anchored "days before the report date": never negative, and 0 at most at the view's last event.
    days = batch.dense[..., 1][real]
    assert (days >= 0).all()


def test_default_cutoff_is_a_month_start_inside_the_mart(mart_path: Path) -> None:
    manifest = read_manifest(mart_path)
    cutoff = np.datetime64(default_cutoff(manifest))
    assert np.datetime64(manifest["time_min"]) < cutoff < np.datetime64(manifest["time_max"])
    assert str(cutoff).endswith("-01")


def test_find_pretrained_returns_none_without_a_store_or_model(tmp_path: Path, registry: str) -> None:
    missing = tmp_path / "nothing" / "mlflow.db"
    assert find_pretrained(f"sqlite:///{missing}", "cards", mart_version=None,
                           earliest_report_date="2025-01-01") is None
    assert not missing.exists()  # looking must not create a store
    assert find_pretrained(registry, "accounts", mart_version=None, earliest_report_date="2025-01-01") is None


def test_an_encoder_is_usable_only_from_its_cutoff_on(registry: str, mart_path: Path) -> None:
    version = read_manifest(mart_path)["version"]
    # The earliest report date before both cutoffs: a later event could leak through the weights.
    assert find_pretrained(registry, "cards", mart_version=version, earliest_report_date="2024-03-31") is None
    between = find_pretrained(registry, "cards", mart_version=version, earliest_report_date="2024-06-30")
    assert between is not None and between.cutoff == "2024-04-01" and between.name == "pretrained-cards v1"
    on_cutoff = find_pretrained(registry, "cards", mart_version=version, earliest_report_date=CUTOFF)
    assert on_cutoff is not None and on_cutoff.cutoff == CUTOFF and on_cutoff.name == "pretrained-cards v2"


def test_the_lookup_draws_no_download_progress_bar_in_the_step_log(
        registry: str, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "")  # recorded, so restored after the test
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    assert find_pretrained(registry, "cards", mart_version=None, earliest_report_date=CUTOFF) is not None
    assert "Downloading artifacts" not in capfd.readouterr().err


def test_find_pretrained_skips_encoders_whose_vocabulary_changed(registry: str, mart_path: Path) -> None:
    manifest = read_manifest(mart_path)
    grown = {**manifest, "features": {**manifest["features"], "mcc": {
        **manifest["features"]["mcc"], "vocab_size": manifest["features"]["mcc"]["vocab_size"] + 5}}}
    assert find_pretrained(registry, "cards", mart_version=None, earliest_report_date="2025-01-01",
                           manifest=manifest) is not None
    assert find_pretrained(registry, "cards", mart_version=None, earliest_report_date="2025-01-01",
                           manifest=grown) is None


def _labelled(mart_path: Path) -> tuple[Mart, object, np.ndarray]:
    """The mart, every client's events before 2024-10-01, and a target its favourite merchant type decides."""
    mart = Mart.open(mart_path)
    ids = mart.client_ids
    seqs = extract_sequences(mart, ids, np.full(len(ids), np.datetime64("2024-10-01")), 256)
    return mart, seqs, (ids % 12 < 6).astype(np.float64)


def test_a_task_starts_from_the_registered_weights(registry: str, mart_path: Path, pretrained) -> None:
    mart, seqs, y = _labelled(mart_path)
    encoder = find_pretrained(registry, "cards", mart_version=mart.version, earliest_report_date="2024-10-01",
                              manifest=mart.manifest)
    assert encoder is not None
    # A learning rate of ~0 leaves the encoder where it started: exactly the pretrained weights.
    params = encoder.train_params(TrainParams(max_epochs=1, lr=1e-12, batch_size=64))
    model, history = train_model({"cards": seqs}, y, {"cards": seqs}, y, task_type="binary", metric="roc_auc",
                                 classes=[0, 1], manifests={"cards": mart.manifest}, params=params,
                                 init=encoder.state)
    assert len(history) == 1
    state = model.state_dict()
    for key, value in pretrained[0].state.items():
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=0)


def test_a_frozen_encoder_stays_pretrained_while_the_head_learns(pretrained, mart_path: Path) -> None:
    encoder, _ = pretrained
    mart, seqs, y = _labelled(mart_path)
    params = dataclasses.replace(encoder.train_params(TrainParams(max_epochs=2, batch_size=32)),
                                 freeze_encoder=True)
    model, _ = train_model({"cards": seqs}, y, {"cards": seqs}, y, task_type="binary", metric="roc_auc",
                           classes=[0, 1], manifests={"cards": mart.manifest}, params=params,
                           init=encoder.state)
    state = model.state_dict()
    frozen = [k for k in encoder.state if k.startswith(("events.", "sequences."))]
    assert frozen and all(torch.equal(state[k], encoder.state[k]) for k in frozen)
    assert not torch.equal(state["embed.0.weight"], encoder.state["embed.0.weight"])  # embed + head learn


def test_in_the_fusion_model_only_the_pretrained_domains_stay_frozen(pretrained, mart_path: Path) -> None:
    from anna_models.encoders import DomainModel
    from anna_models.search_space import fusion_candidates

    encoder, _ = pretrained
    mart, seqs, y = _labelled(mart_path)
    # "copy" reads the same events but has no pretrained encoder: it trains from scratch beside "cards".
    frozen, _ = fusion_candidates(TrainParams(max_epochs=2, batch_size=32), ["copy", "cards"],
                                  {"copy": None, "cards": encoder})
    model, _ = train_model({"copy": seqs, "cards": seqs}, y, {"copy": seqs, "cards": seqs}, y,
                           task_type="binary", metric="roc_auc", classes=[0, 1],
                           manifests={"copy": mart.manifest, "cards": mart.manifest}, params=frozen.params,
                           init=frozen.weights)
    state = model.state_dict()
    assert frozen.weights and all(torch.equal(state[k], v) for k, v in frozen.weights.items())
    torch.manual_seed(0)
    start = DomainModel(model.config).state_dict()  # train_model's starting weights (same seed)
    scratch = [k for k in state if k.startswith(("events.0.", "sequences.0."))]
    assert scratch and any(not torch.equal(state[k], start[k]) for k in scratch)
