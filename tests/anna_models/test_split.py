"""The split rules when report dates span months but only a few of them precede the test months."""

import numpy as np
import pandas as pd

from anna_models.split import MIN_STOPPING_ROWS, can_stop_on, split_sample, stopping_rows


def quarterly_sample(clients: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Every client at three quarterly report dates, like the CDNOW benchmark's sample."""
    rng = np.random.default_rng(seed)
    dates = pd.to_datetime(["1997-07-01", "1997-10-01", "1998-01-01"])
    return pd.DataFrame({
        "client_id": np.repeat(np.arange(clients), 3),
        "report_date": np.tile(dates, clients),
        "target": rng.random(3 * clients) < 0.3,
    })


def test_few_months_before_the_test_month_keep_the_test_out_of_time_and_validate_on_random_clients() -> None:
    sample = quarterly_sample()
    parts, info = split_sample(sample, "binary", seed=0)
    assert info["kind"] == "out_of_time_test"
    test_dates = set(sample.loc[parts == "test", "report_date"])
    assert test_dates == {pd.Timestamp("1998-01-01")}
    assert (parts[sample["report_date"] == pd.Timestamp("1998-01-01")] == "test").all()
    # Both earlier report dates train, and both are in valid: no month is lost to validation.
    for part in ("train", "valid"):
        assert set(sample.loc[parts == part, "report_date"]) == {pd.Timestamp("1997-07-01"),
                                                                 pd.Timestamp("1997-10-01")}
    earlier = parts != "test"
    assert abs((parts[earlier] == "valid").mean() - 0.15 / 0.80) < 0.03
    # A client's earlier rows are all train or all valid.
    by_client = sample[earlier].assign(part=parts[earlier]).groupby("client_id")["part"].nunique()
    assert (by_client == 1).all()
    again, _ = split_sample(sample, "binary", seed=0)
    other, _ = split_sample(sample, "binary", seed=1)
    assert np.array_equal(parts, again) and not np.array_equal(parts, other)


def test_enough_months_before_the_test_months_validate_out_of_time() -> None:
    rng = np.random.default_rng(0)
    months = pd.date_range("2024-01-01", periods=8, freq="MS")
    sample = pd.DataFrame({"client_id": np.arange(800), "report_date": np.repeat(months, 100),
                           "target": rng.random(800) < 0.3})
    parts, info = split_sample(sample, "binary", seed=0)
    assert info["kind"] == "out_of_time"
    last_valid = sample.loc[parts == "valid", "report_date"].max()
    assert last_valid < sample.loc[parts == "test", "report_date"].min()
    first_valid = sample.loc[parts == "valid", "report_date"].min()
    assert sample.loc[parts == "train", "report_date"].max() < first_valid


def test_stopping_rows_take_whole_clients_and_too_few_rows_stop_on_valid() -> None:
    client_id = np.repeat(np.arange(1000), 3)  # three report dates per client
    stop = stopping_rows(client_id, 0.15, seed=0)
    per_client = pd.Series(stop).groupby(client_id).nunique()
    assert (per_client == 1).all()  # a client's rows sit on one side only
    assert 0.12 < stop.mean() < 0.18
    assert not np.array_equal(stop, stopping_rows(client_id, 0.15, seed=1))

    y = np.tile([0, 1, 0], 1000)
    assert can_stop_on(stop, y, "binary")
    few = stopping_rows(client_id[:30], 0.15, seed=0)  # 10 clients: a handful of stopping rows
    assert few.sum() < MIN_STOPPING_ROWS and not can_stop_on(few, y[:30], "binary")
    assert not can_stop_on(stop, np.where(stop, 0, y), "binary")  # one class only: nothing to stop on
    assert can_stop_on(stop, np.where(stop, 0.0, y), "regression")
