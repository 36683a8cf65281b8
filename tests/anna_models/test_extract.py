"""Point-in-time extraction: never an event at or after the report date; the latest ``max_len`` in order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anna_models.extract import extract_sequences
from anna_models.mart_writer import MartWriter
from anna_models.marts import TRANSFORMS, Mart


def _mart(path, client_id, event_time, codes, amounts) -> Mart:
    """A mart of the given rows (any order); ``mcc`` codes 1..5, ``amount`` raw."""
    client_id = np.asarray(client_id, dtype=np.int64)
    seconds = np.asarray(event_time, dtype="datetime64[s]").view(np.int64)
    order = np.lexsort((seconds, client_id))
    writer = MartWriter(
        path, "cards", categorical={"mcc": ["a", "b", "c", "d"]}, numeric={"amount": "signed_log1p"}
    )
    cut = len(order) // 2  # two parts: clients are split between them where the id changes
    while 0 < cut < len(order) and client_id[order][cut] == client_id[order][cut - 1]:
        cut += 1
    for part in (order[:cut], order[cut:]):
        writer.append(
            client_id[part],
            seconds[part].view("datetime64[s]"),
            {"mcc": np.asarray(codes)[part], "amount": np.asarray(amounts, float)[part]},
        )
    writer.close()
    return Mart.open(path)


def _reference(mart: Mart, client_id, report_date, max_len: int) -> list[pd.DataFrame]:
    """Slow and obviously right: filter, sort, keep the tail, compute the time features with pandas."""
    spec = mart.features["amount"]
    events = pd.DataFrame(
        {
            "client_id": mart.client_id,
            "time": pd.to_datetime(mart.event_time, unit="s"),
            "mcc": mart.categorical["mcc"],
            "amount": (TRANSFORMS[spec["transform"]](mart.numeric["amount"]) - spec["mean"]) / spec["std"],
        }
    )
    by_client = dict(tuple(events.groupby("client_id")))
    rows = []
    for client, date in zip(client_id, pd.to_datetime(report_date), strict=True):
        history = by_client.get(client, events.iloc[:0])
        kept = history[history["time"] < date].sort_values("time", kind="stable").tail(max_len).copy()
        kept["days_before"] = np.log1p((date - kept["time"]).dt.total_seconds() / 86400)
        kept["days_since_previous"] = np.log1p(kept["time"].diff().dt.total_seconds().fillna(0) / 86400)
        kept["hour"] = kept["time"].dt.hour / 24
        kept["weekday"] = kept["time"].dt.day_of_week / 7
        rows.append(kept)
    return rows


def _assert_matches_reference(seq, expected: list[pd.DataFrame]) -> None:
    assert seq.offsets.dtype == np.int64 and seq.time_features.dtype == np.float32
    np.testing.assert_array_equal(seq.lengths, [len(rows) for rows in expected])
    for i, rows in enumerate(expected):
        span = slice(seq.offsets[i], seq.offsets[i + 1])
        np.testing.assert_array_equal(seq.categorical["mcc"][span], rows["mcc"].to_numpy())
        np.testing.assert_allclose(
            seq.numeric["amount"][span], rows["amount"].to_numpy(), rtol=1e-5, atol=1e-5
        )
        features = rows[["days_before", "days_since_previous", "hour", "weekday"]].to_numpy()
        np.testing.assert_allclose(seq.time_features[span], features, rtol=1e-5, atol=1e-6)


@pytest.fixture
def edge_mart(tmp_path) -> Mart:
    """Client 1 has events around 2025-03-01 midnight; client 2 only after it; client 3 one long ago."""
    times = [
        "2025-02-27T08:00",
        "2025-02-28T23:59:59",
        "2025-03-01T00:00:00",
        "2025-03-01T00:00:01",
        "2025-03-01T15:30",
        "2025-03-05",
        "2025-03-02",
        "2025-04-01",
        "2024-01-01T12:00",
    ]
    return _mart(
        tmp_path / "edge",
        [1, 1, 1, 1, 1, 1, 2, 2, 3],
        times,
        [2, 3, 4, 5, 5, 5, 2, 2, 3],
        [10, 20, 30, 40, 50, 60, 70, 80, 90],
    )


def test_events_at_or_after_the_report_date_are_never_used(edge_mart):
    seq = extract_sequences(
        edge_mart,
        np.array([1, 1, 2, 3]),
        np.array(["2025-03-01"] * 3 + ["2024-01-01T12:00"], dtype="datetime64[s]"),
        256,
    )
    np.testing.assert_array_equal(seq.lengths, [2, 2, 0, 0])  # midnight itself and later that day: excluded
    np.testing.assert_array_equal(seq.categorical["mcc"], [2, 3, 2, 3])
    day_before = extract_sequences(
        edge_mart, np.array([1]), np.array(["2025-03-01T00:00:01"], dtype="datetime64[s]"), 256
    )
    np.testing.assert_array_equal(
        day_before.categorical["mcc"], [2, 3, 4]
    )  # one second later: midnight counts


def test_unknown_and_silent_clients_get_empty_rows(edge_mart):
    ids = np.array([0, 2, 4, 10**12, -5])
    seq = extract_sequences(edge_mart, ids, np.full(5, np.datetime64("2025-03-02", "s")), 8)
    np.testing.assert_array_equal(seq.lengths, [0, 0, 0, 0, 0])
    assert seq.n_events == 0 and seq.time_features.shape == (0, 4) and seq.numeric["amount"].shape == (0,)


def test_max_len_keeps_the_most_recent_events_oldest_first(edge_mart):
    seq = extract_sequences(
        edge_mart, np.array([1, 1]), np.array(["2025-03-06", "2025-03-01T15:30"], dtype="datetime64[s]"), 3
    )
    np.testing.assert_array_equal(seq.lengths, [3, 3])
    times = edge_mart.event_time.view("datetime64[s]")
    expected = [
        np.datetime64("2025-03-01T00:00:01"),
        np.datetime64("2025-03-01T15:30"),
        np.datetime64("2025-03-05"),
    ]
    np.testing.assert_array_equal(
        times[np.isin(edge_mart.categorical["mcc"], [5]) & (edge_mart.client_id == 1)], expected
    )
    np.testing.assert_array_equal(seq.categorical["mcc"][:3], [5, 5, 5])
    np.testing.assert_array_equal(seq.categorical["mcc"][3:], [3, 4, 5])
    assert np.all(np.diff(seq.time_features[:3, 0]) < 0)  # days before the report date shrink: oldest first


def test_time_features_and_normalised_numerics_of_a_known_row(edge_mart):
    seq = extract_sequences(edge_mart, np.array([1]), np.array(["2025-03-01"], dtype="datetime64[s]"), 10)
    days_before = np.log1p([(2 * 86400 - 8 * 3600) / 86400, 1 / 86400])
    gaps = np.log1p([0.0, (86400 + 16 * 3600 - 1) / 86400])
    expected = np.c_[days_before, gaps, [8 / 24, 23 / 24], [3 / 7, 4 / 7]]  # Thursday, Friday
    np.testing.assert_allclose(seq.time_features, expected, rtol=1e-5, atol=1e-7)
    spec = edge_mart.features["amount"]
    np.testing.assert_allclose(
        seq.numeric["amount"], (np.log1p([10, 20]) - spec["mean"]) / spec["std"], rtol=1e-5
    )


def test_report_dates_in_any_datetime_unit_give_the_same_rows(edge_mart):
    ids = np.array([1, 1, 2])
    days = np.array(["2025-03-01", "2025-03-05", "2025-04-02"], dtype="datetime64[D]")
    by_day = extract_sequences(edge_mart, ids, days, 256)
    from_pandas = extract_sequences(
        edge_mart, pd.Series(ids).to_numpy(), pd.to_datetime(pd.Series(days.astype(str))).to_numpy(), 256
    )
    np.testing.assert_array_equal(by_day.offsets, from_pandas.offsets)
    np.testing.assert_array_equal(by_day.lengths, [2, 5, 2])


def test_bad_arguments_are_refused(edge_mart):
    with pytest.raises(ValueError, match="max_len"):
        extract_sequences(edge_mart, np.array([1]), np.array(["2025-01-01"], dtype="datetime64[s]"), 0)
    with pytest.raises(ValueError, match="equal length"):
        extract_sequences(edge_mart, np.array([1, 2]), np.array(["2025-01-01"], dtype="datetime64[s]"), 5)
    with pytest.raises(ValueError, match="NaT"):
        extract_sequences(edge_mart, np.array([1]), np.array(["NaT"], dtype="datetime64[s]"), 5)


def test_an_empty_query_and_an_empty_mart(edge_mart, tmp_path):
    none = extract_sequences(edge_mart, np.zeros(0, np.int64), np.zeros(0, "datetime64[s]"), 5)
    assert none.n_rows == 0 and none.n_events == 0
    MartWriter(tmp_path / "empty", "empty", categorical={"mcc": ["a"]}, numeric={"amount": "none"}).close()
    seq = extract_sequences(
        Mart.open(tmp_path / "empty"),
        np.array([1, 2]),
        np.array(["2025-01-01"] * 2, dtype="datetime64[s]"),
        5,
    )
    np.testing.assert_array_equal(seq.lengths, [0, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_slow_reference_on_random_marts(tmp_path, seed):
    rng = np.random.default_rng(seed)
    clients = np.unique(rng.integers(1, 400, 40)) * 7
    counts = rng.integers(0, 30, len(clients))
    client_id = np.repeat(clients, counts)
    start = np.datetime64("2024-01-01T00:00:00").astype(np.int64)
    # Whole hours and midnights make ties between events and with report dates common.
    seconds = start + np.where(
        rng.random(len(client_id)) < 0.3,
        rng.integers(0, 700, len(client_id)) * 86400,
        rng.integers(0, 700 * 24, len(client_id)) * 3600,
    )
    seconds[: len(seconds) // 10] = seconds[len(seconds) // 10 : 2 * (len(seconds) // 10)]  # duplicate times
    mart = _mart(
        tmp_path / f"random{seed}",
        client_id,
        seconds.view("datetime64[s]"),
        rng.integers(1, 6, len(client_id)),
        rng.lognormal(5, 2, len(client_id)) * rng.choice([-1, 1], len(client_id)),
    )
    n = 200
    ids = np.where(rng.random(n) < 0.85, rng.choice(clients, n), rng.integers(-10, 3000, n))
    dates = start + rng.integers(-30, 760, n) * 86400  # also before the first and after the last event
    dates[:40] = rng.choice(seconds, 40)  # report dates exactly at event times
    for max_len in (1, 4, 1000):
        seq = extract_sequences(mart, ids, dates.view("datetime64[s]"), max_len)
        _assert_matches_reference(seq, _reference(mart, ids, dates.view("datetime64[s]"), max_len))


@pytest.mark.parametrize("threads", [1, 3])
def test_small_blocks_and_threads_give_the_reference_rows(tmp_path, monkeypatch, threads):
    """Output is filled in blocks of rows, on threads: block edges and empty rows must not shift an event."""
    rng = np.random.default_rng(7)
    clients = np.arange(1, 60) * 3
    counts = rng.integers(0, 12, len(clients))
    client_id = np.repeat(clients, counts)
    start = np.datetime64("2024-01-01T00:00:00").astype(np.int64)
    seconds = start + rng.integers(0, 90, len(client_id)) * 86400 + rng.integers(0, 3, len(client_id)) * 3600
    mart = _mart(
        tmp_path / "blocks",
        client_id,
        seconds.view("datetime64[s]"),
        rng.integers(1, 6, len(client_id)),
        rng.lognormal(3, 1, len(client_id)),
    )
    n = 300
    ids = np.where(rng.random(n) < 0.8, rng.choice(clients, n), -1)  # runs of empty rows between kept ones
    dates = (start + rng.integers(0, 100, n) * 86400).view("datetime64[s]")
    whole = extract_sequences(mart, ids, dates, 5)
    monkeypatch.setattr("anna_models.extract.BLOCK_EVENTS", 7)  # many blocks, each ending mid-sample
    seq = extract_sequences(mart, ids, dates, 5, threads=threads)
    _assert_matches_reference(seq, _reference(mart, ids, dates, 5))
    np.testing.assert_array_equal(seq.offsets, whole.offsets)
    np.testing.assert_array_equal(seq.time_features, whole.time_features)  # bit for bit, any block size
    np.testing.assert_array_equal(seq.categorical["mcc"], whole.categorical["mcc"])
    np.testing.assert_array_equal(seq.numeric["amount"], whole.numeric["amount"])


def test_threads_below_one_are_refused(edge_mart):
    with pytest.raises(ValueError, match="threads"):
        extract_sequences(
            edge_mart, np.array([1]), np.array(["2025-03-01"], dtype="datetime64[s]"), 5, threads=0
        )
