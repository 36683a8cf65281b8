"""Length-bucketed batching: every row once, tight padding, exact gathers, empty rows allowed."""

from __future__ import annotations

import numpy as np
import pytest

from anna_models.batching import EventTable, plan_batches
from anna_models.sequences import Sequences


def heavy_tailed_sequences(n: int, seed: int = 0, empty_share: float = 0.1) -> Sequences:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.lognormal(2.5, 1.2, n).astype(np.int64), 300)
    lengths[rng.random(n) < empty_share] = 0
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    e = int(offsets[-1])
    return Sequences(
        offsets=offsets,
        categorical={
            "mcc": rng.integers(1, 50, e).astype(np.int32),
            "channel": rng.integers(1, 4, e).astype(np.int32),
        },
        numeric={"amount": rng.normal(size=e).astype(np.float32)},
        time_features=rng.random((e, 4)).astype(np.float32),
    )


@pytest.mark.parametrize("shuffle", [False, True])
def test_plan_covers_every_row_once_within_limits(shuffle: bool) -> None:
    seqs = heavy_tailed_sequences(2000)
    rng = np.random.default_rng(1) if shuffle else None
    plan = plan_batches(seqs.lengths, batch_size=64, max_tokens=4096, rng=rng)
    rows = np.concatenate(plan)
    assert np.array_equal(np.sort(rows), np.arange(seqs.n_rows))
    for batch in plan:
        assert 1 <= len(batch) <= 64
        width = max(int(seqs.lengths[batch].max()), 1)
        assert len(batch) == 1 or len(batch) * width <= 4096


def test_bucketing_keeps_padding_small_and_batches_change_between_epochs() -> None:
    seqs = heavy_tailed_sequences(5000)
    lengths = np.maximum(seqs.lengths, 1)
    rng = np.random.default_rng(0)
    epoch1 = plan_batches(seqs.lengths, batch_size=128, rng=rng)
    epoch2 = plan_batches(seqs.lengths, batch_size=128, rng=rng)
    padded = sum(len(b) * lengths[b].max() for b in epoch1)
    assert padded / lengths.sum() < 1.3  # random batches of heavy-tailed data pad several-fold
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(5000), 40))
    assert random_padded / lengths.sum() > 3
    first_batches = {tuple(sorted(b)) for b in epoch1}
    assert sum(tuple(sorted(b)) in first_batches for b in epoch2) < len(epoch2) / 2


def test_batch_gathers_each_rows_events_in_order_and_pads_with_zeros() -> None:
    seqs = heavy_tailed_sequences(300, seed=3)
    table = EventTable(seqs)
    rows = np.array([5, 0, 17, 42, 299])
    batch = table.batch(rows)
    width = max(int(seqs.lengths[rows].max()), 1)
    assert tuple(batch.categorical.shape) == (5, width, 2)  # sorted names: channel, mcc
    assert tuple(batch.dense.shape) == (5, width, 1 + 4)
    for i, row in enumerate(rows):
        start, n = seqs.offsets[row], seqs.lengths[row]
        assert int(batch.lengths[i]) == n
        np.testing.assert_array_equal(
            batch.categorical[i, :n, 1].numpy(), seqs.categorical["mcc"][start : start + n]
        )
        np.testing.assert_allclose(batch.dense[i, :n, 0].numpy(), seqs.numeric["amount"][start : start + n])
        np.testing.assert_allclose(batch.dense[i, :n, 1:].numpy(), seqs.time_features[start : start + n])
        assert (batch.categorical[i, n:] == 0).all() and (batch.dense[i, n:] == 0).all()


def test_all_empty_batch_and_unseen_codes() -> None:
    seqs = heavy_tailed_sequences(50, seed=4)
    empty = np.flatnonzero(seqs.lengths == 0)[:3]
    table = EventTable(seqs, vocab_sizes={"mcc": 10, "channel": 4})
    batch = table.batch(empty)
    assert tuple(batch.categorical.shape[:2]) == (len(empty), 1) and (batch.lengths == 0).all()
    codes = table.categorical[:-1, 1].numpy()
    assert codes.max() < 10 and (codes[seqs.categorical["mcc"] >= 10] == 1).all()  # unseen → "unknown"
