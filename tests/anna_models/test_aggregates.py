"""Automatic aggregates: the numbers a data scientist would compute by hand, rows without events included;
LightGBM on them learns, stops early without the valid rows, and scores the same after a save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anna_models.aggregates import client_aggregates
from anna_models.metrics import compute_metric
from anna_models.sequences import TIME_FEATURES, Sequences

FEATURES = {
    "amount": {"kind": "numeric", "transform": "signed_log1p", "mean": 2.0, "std": 1.5},
    "channel": {"kind": "categorical", "vocab_size": 4, "values": ["<pad>", "<unk>", "pos", "web"]},
    "mcc": {"kind": "categorical", "vocab_size": 100},
}


def normalised(amount: np.ndarray) -> np.ndarray:
    """What extraction stores for raw amounts: (signed_log1p(x) - mean) / std."""
    spec = FEATURES["amount"]
    return ((np.sign(amount) * np.log1p(np.abs(amount)) - spec["mean"]) / spec["std"]).astype(np.float32)


def sequences(days_before: list[list[float]], amounts: list[list[float]], channel: list[list[int]],
              mcc: list[list[int]]) -> Sequences:
    """Rows of events given oldest first, as extraction lays them out."""
    lengths = [len(d) for d in days_before]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.array([d for row in days_before for d in row], dtype=np.float64)
    time_features = np.zeros((len(flat), len(TIME_FEATURES)), dtype=np.float32)
    time_features[:, 0] = np.log1p(flat)
    time_features[:, 2] = 12 / 24
    time_features[:, 3] = np.arange(len(flat)) % 7 / 7
    return Sequences(
        offsets=offsets,
        categorical={"channel": np.array([c for row in channel for c in row], dtype=np.int32),
                     "mcc": np.array([c for row in mcc for c in row], dtype=np.int32)},
        numeric={"amount": normalised(np.array([a for row in amounts for a in row], dtype=np.float64))},
        time_features=time_features,
    )


def test_aggregates_match_a_hand_computation_and_rows_without_events_are_missing() -> None:
    seqs = sequences(
        days_before=[[200.0, 100.0, 40.0, 10.0], [], [5.0]],
        amounts=[[1000.0, -50.0, 300.0, 20.0], [], [70.0]],
        channel=[[2, 2, 3, 1], [], [3]],
        mcc=[[5, 6, 5, 7], [], [9]],
    )
    result = client_aggregates(seqs, FEATURES)
    table = {name: result.values[:, j] for j, name in enumerate(result.names)}
    assert result.values.shape == (3, len(result.names)) and result.values.dtype == np.float32
    assert len(set(result.names)) == len(result.names)

    np.testing.assert_allclose(table["count"], [4, 0, 1])
    np.testing.assert_allclose(table["recency_days"][[0, 2]], [10, 5], rtol=1e-4)
    np.testing.assert_allclose(table["tenure_days"][[0, 2]], [200, 5], rtol=1e-4)
    np.testing.assert_allclose(table["mean_gap_days"][0], 190 / 3, rtol=1e-4)
    np.testing.assert_allclose(table["count_30d"], [1, 0, 1])
    np.testing.assert_allclose(table["count_90d"], [2, 0, 1])
    np.testing.assert_allclose(table["count_180d"], [3, 0, 1])
    # Amounts back in currency units: sums are real totals.
    np.testing.assert_allclose(table["amount.sum"][[0, 2]], [1270, 70], rtol=1e-4)
    np.testing.assert_allclose(table["amount.max"][0], 1000, rtol=1e-4)
    np.testing.assert_allclose(table["amount.last"][0], 20, rtol=1e-4)
    np.testing.assert_allclose(table["amount.std"][0], np.std([1000, -50, 300, 20]), rtol=1e-4)
    np.testing.assert_allclose(table["amount.sum_90d"][0], 320, rtol=1e-4)
    np.testing.assert_allclose(table["amount.mean_90d"][0], 160, rtol=1e-4)
    np.testing.assert_allclose(table["amount.max_30d"][0], 20, rtol=1e-4)
    np.testing.assert_allclose(table["channel.share_pos"][0], 0.5)
    np.testing.assert_allclose(table["channel.share_web"][[0, 2]], [0.25, 1.0])
    np.testing.assert_allclose(table["channel.share_unk"][0], 0.25)
    np.testing.assert_allclose(table["mcc.distinct"], [3, 0, 1])
    assert "mcc.share_5" in table and "mcc.share_40" not in table  # a big vocab: its most frequent codes

    # A row without events: counts 0, everything else undefined (missing for LightGBM), never an error.
    empty = {name: value[1] for name, value in table.items()}
    assert all(empty[n] == 0 for n in ("count", "count_30d", "mcc.distinct", "amount.sum"))
    undefined = ("recency_days", "amount.mean", "amount.max", "channel.share_pos")
    assert np.isnan([empty[n] for n in undefined]).all()
    # A window with no events: its sum is 0, its mean and max undefined.
    assert table["amount.sum_30d"][1] == 0 and np.isnan(table["amount.max_30d"][1])

    # The columns come from the mart's features, not the rows at hand: any subset of rows, same columns.
    alone = client_aggregates(seqs.take(np.array([1])), FEATURES)
    assert alone.names == result.names
    np.testing.assert_array_equal(alone.values, result.values[[1]])


def demo_like(n: int, seed: int) -> tuple[Sequences, np.ndarray, np.ndarray]:
    """Clients whose default risk grows with spending in the last 30 days and with web purchases."""
    rng = np.random.default_rng(seed)
    lengths = rng.poisson(20, n)
    total = int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    row = np.repeat(np.arange(n), lengths)
    days = rng.uniform(0, 365, total)
    days = days[np.lexsort((-days, row))]  # each row's events oldest first (row is sorted already)
    amount = rng.lognormal(4, 1, total) * (1 + 3 * (rng.random(n) < 0.3))[row]
    channel = np.where(rng.random(total) < rng.random(n)[row], 3, 2).astype(np.int32)
    recent = np.bincount(row, weights=amount * (days < 30), minlength=n)
    web = np.bincount(row, weights=channel == 3, minlength=n) / np.maximum(lengths, 1)
    spend = np.log1p(recent)
    logit = 1.5 * (spend - spend.mean()) / spend.std() + 2 * (web - 0.5) - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    time_features = np.zeros((total, len(TIME_FEATURES)), dtype=np.float32)
    time_features[:, 0] = np.log1p(days)
    seqs = Sequences(offsets=offsets, numeric={"amount": normalised(amount)},
                     categorical={"channel": channel, "mcc": rng.integers(1, 100, total).astype(np.int32)},
                     time_features=time_features)
    return seqs, y, np.arange(n) // 2  # two rows per client


def test_lightgbm_on_aggregates_learns_and_scores_the_same_after_saving(tmp_path: Path) -> None:
    from anna_models.boosting import AggregateModel, train_aggregate_model
    from anna_models.split import stopping_rows

    seqs, y, clients = demo_like(3000, seed=0)
    train, test = np.arange(2000), np.arange(2000, 3000)
    reports: list[dict] = []
    model, history = train_aggregate_model(
        {"cards": seqs.take(train)}, y[train], client_id=clients[train], task_type="binary",
        metric="roc_auc", classes=[0, 1], features={"cards": FEATURES}, params={"num_threads": 1}, seed=0,
        progress=lambda **fields: reports.append(fields))
    outputs = model.predict({"cards": seqs.take(test)})
    assert outputs.shape == (1000,)
    assert compute_metric("roc_auc", y[test], outputs) > 0.75
    assert history and 1 <= model.rounds < 2000  # early stopping ended it
    # Progress ends on the rounds the model keeps, and their stopping metric: the best in the history.
    last = reports[-1]
    assert (last["epoch"], last["unit"], last["metric_name"]) == (model.rounds, "round", "auc")
    kept = next(h["valid_metric"] for h in history if h["epoch"] == model.rounds)
    assert last["metric"] == pytest.approx(kept) == max(h["valid_metric"] for h in history)
    assert any(f["name"].startswith("cards.amount.") and "30d" in f["name"] for f in model.importance(5))

    model.save(tmp_path / "lightgbm")
    assert (tmp_path / "lightgbm" / "booster.txt").read_text().startswith("tree")  # LightGBM's text model
    again = AggregateModel.load(tmp_path / "lightgbm")
    np.testing.assert_array_equal(again.predict({"cards": seqs.take(test)}), outputs)

    # Early stopping rows are whole clients, never both sides of a client.
    hold = stopping_rows(clients[train], 0.2, seed=0)
    assert 0.1 < hold.mean() < 0.3
    assert not set(clients[train][hold]) & set(clients[train][~hold])


def test_lightgbm_multiclass_and_regression_outputs() -> None:
    from anna_models.boosting import train_aggregate_model

    seqs, y, clients = demo_like(1200, seed=1)
    klass = np.clip(y + (np.random.default_rng(1).random(1200) < 0.3), 0, 2)
    model, _ = train_aggregate_model({"cards": seqs}, klass, client_id=clients, task_type="multiclass",
                                     metric="log_loss", classes=["a", "b", "c"], features={"cards": FEATURES},
                                     params={"num_threads": 1, "num_rounds": 50})
    assert model.predict({"cards": seqs}).shape == (1200, 3)
    amounts = np.random.default_rng(2).normal(size=1200) + 3 * y
    model, _ = train_aggregate_model({"cards": seqs}, amounts, client_id=clients, task_type="regression",
                                     metric="rmse", classes=[], features={"cards": FEATURES},
                                     params={"num_threads": 1, "num_rounds": 50, "learning_rate": 0.1})
    predicted = model.predict({"cards": seqs})
    assert predicted.shape == (1200,) and compute_metric("r2", amounts, predicted) > 0.3
    with pytest.raises(ValueError, match="unknown LightGBM parameter"):
        train_aggregate_model({"cards": seqs}, amounts, client_id=clients, task_type="regression",
                              metric="rmse", classes=[], features={"cards": FEATURES}, params={"leaves": 3})


def test_lightgbm_settings_name_the_setting_to_fix() -> None:
    from anna_models.boosting import DEFAULT_PARAMS, lightgbm_settings

    assert lightgbm_settings(None) == DEFAULT_PARAMS
    assert lightgbm_settings({"num_leaves": 7, "lambda_l2": 0})["num_leaves"] == 7
    for params, message in (({"leaves": 3}, "unknown LightGBM parameter"),
                            ({"num_leaves": 2.5}, "num_leaves must be an int"),
                            ({"num_rounds": True}, "num_rounds must be an int"),
                            ({"learning_rate": "fast"}, "learning_rate must be a float"),
                            ({"feature_fraction": 1.5}, r"feature_fraction must be within 1e-06\.\.1"),
                            ({"min_child_samples": 0}, "min_child_samples must be within")):
        with pytest.raises(ValueError, match=message):
            lightgbm_settings(params)
