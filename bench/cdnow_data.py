"""The CDNOW repurchase benchmark's data (datasets/cdnow/README.md): raw file → mart, sample, split, features.

Every rule of the benchmark's definition lives here, so the unit test checks exactly what the benchmark
runs: report dates 1997-07-01, 1997-10-01, 1998-01-01; a row for every customer with a purchase strictly
before the report date; target = any purchase in [report_date, report_date + 90 days); train on the two
earlier dates, test on 1998-01-01. Only purchases strictly before the report date may become features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DOMAIN = "purchases"
REPORT_DATES = tuple(pd.Timestamp(d) for d in ("1997-07-01", "1997-10-01", "1998-01-01"))
TEST_DATE = REPORT_DATES[-1]
HORIZON = pd.Timedelta(days=90)
DAY = np.timedelta64(1, "D")
WINDOWS = (30, 90, 180)  # days before the report date, for the aggregates


def read_raw(path: Path) -> pd.DataFrame:
    """CDNOW_master.txt → ``client_id`` int64, ``event_time`` (the purchase day), ``number_of_cds``,
    ``dollar_value``. The README says the file has no header; the copy in lifetimes has one, so a first
    line that is not a purchase is skipped."""
    raw = pd.read_csv(path, sep=r"\s+", header=None, dtype=str,
                      names=["client_id", "date", "number_of_cds", "dollar_value"])
    if len(raw) and not raw.iloc[0]["client_id"].isdigit():
        raw = raw.iloc[1:]
    return pd.DataFrame({
        "client_id": raw["client_id"].astype(np.int64).to_numpy(),
        "event_time": pd.to_datetime(raw["date"], format="%Y%m%d").to_numpy(dtype="datetime64[s]"),
        "number_of_cds": raw["number_of_cds"].astype(np.float32).to_numpy(),
        "dollar_value": raw["dollar_value"].astype(np.float32).to_numpy(),
    })


def build_sample(events: pd.DataFrame, report_dates: tuple[pd.Timestamp, ...] = REPORT_DATES) -> pd.DataFrame:
    """Sample rows ``client_id, report_date, target``: every client with a purchase strictly before the
    report date; target 1 when the client buys anything in [report_date, report_date + 90 days)."""
    rows = []
    times = events["event_time"]
    for date in report_dates:
        before = set(events.loc[times < date, "client_id"])
        bought = set(events.loc[(times >= date) & (times < date + HORIZON), "client_id"])
        clients = np.array(sorted(before), dtype=np.int64)
        rows.append(pd.DataFrame({"client_id": clients, "report_date": date,
                                  "target": np.isin(clients, list(bought)).astype(np.int64)}))
    sample = pd.concat(rows, ignore_index=True)
    sample["report_date"] = sample["report_date"].astype("datetime64[s]")
    return sample


def benchmark_part(sample: pd.DataFrame) -> np.ndarray:
    """(N,) "train" or "test" as the README splits: test on the latest report date, train on the others."""
    return np.where(sample["report_date"] == TEST_DATE, "test", "train")


def validation_clients(sample: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """(N,) bool: the train rows the peers stop early on — a random ``share`` of the train clients, all of
    a client's rows together (a client's two report dates are near-duplicates)."""
    train = benchmark_part(sample) == "train"
    clients = np.unique(sample.loc[train, "client_id"])
    rng = np.random.default_rng(seed)
    held = rng.choice(clients, size=round(share * len(clients)), replace=False)
    return train & sample["client_id"].isin(held).to_numpy()


def build_purchases_mart(events: pd.DataFrame, out_dir: Path) -> dict[str, Any]:
    """The benchmark's one mart: an event per purchase, amounts as numerics, the weekday as a category."""
    from anna_models.mart_writer import build_mart

    frame = events.assign(weekday=pd.DatetimeIndex(events["event_time"]).day_name())
    return build_mart(frame, DOMAIN, categorical=["weekday"],
                      numeric={"number_of_cds": "signed_log1p", "dollar_value": "signed_log1p"},
                      out_dir=out_dir, default_max_len=256)


def aggregates(events: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    """Per sample row, features of the client's purchases strictly before its report date (row order kept).

    Counts, sums, means and maxima of CDs and dollars, recency and tenure, distinct purchase days, the
    mean gap between them, the last purchase, and counts and dollars in windows of 30/90/180 days.
    """
    joined = sample[["client_id", "report_date"]].reset_index(names="row").merge(events, on="client_id")
    joined = joined[joined["event_time"] < joined["report_date"]]
    days_before = (joined["report_date"] - joined["event_time"]) / DAY
    joined = joined.assign(days_before=days_before.to_numpy(dtype=np.float64))
    by_row = joined.groupby("row")
    out = pd.DataFrame({
        "n_purchases": by_row.size(),
        "cds_sum": by_row["number_of_cds"].sum(),
        "cds_mean": by_row["number_of_cds"].mean(),
        "dollars_sum": by_row["dollar_value"].sum(),
        "dollars_mean": by_row["dollar_value"].mean(),
        "dollars_max": by_row["dollar_value"].max(),
        "recency_days": by_row["days_before"].min(),
        "tenure_days": by_row["days_before"].max(),
        "n_days": by_row["event_time"].nunique(),
    })
    last = joined.sort_values(["row", "event_time"]).groupby("row").tail(1).set_index("row")
    out["last_dollars"] = last["dollar_value"]
    out["mean_gap_days"] = (out["tenure_days"] - out["recency_days"]) / (out["n_days"] - 1).clip(lower=1)
    windowed = []
    for window in WINDOWS:
        inside = joined[joined["days_before"] <= window].groupby("row")
        out[f"n_{window}d"] = inside.size()
        out[f"dollars_{window}d"] = inside["dollar_value"].sum()
        windowed += [f"n_{window}d", f"dollars_{window}d"]
    out = out.reindex(np.arange(len(sample)))
    out[windowed] = out[windowed].fillna(0.0)  # no purchase in the window; other NaNs: no history at all
    return out.astype(np.float64)


def rfm_summary(events: pd.DataFrame, report_date: pd.Timestamp) -> pd.DataFrame:
    """BG/NBD's inputs per client with a purchase before ``report_date``, in days and by purchase day:
    ``frequency`` (repeat days), ``recency`` (first to last day), ``T`` (first day to the report date)."""
    days = events.loc[events["event_time"] < report_date, ["client_id", "event_time"]].drop_duplicates()
    by_client = days.groupby("client_id")["event_time"]
    first, last = by_client.min(), by_client.max()
    return pd.DataFrame({
        "frequency": by_client.size() - 1,
        "recency": (last - first) / DAY,
        "T": (report_date - first) / DAY,
    }).astype(np.float64)



def histories(events: pd.DataFrame, sample: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Point-in-time histories: the events sorted by (client, time), and (N,) ``start`` and ``end`` per
    sample row: ``sorted[start[i]:end[i]]`` are row ``i``'s purchases strictly before its report date."""
    ordered = events.sort_values(["client_id", "event_time"], kind="stable").reset_index(drop=True)
    clients = ordered["client_id"].to_numpy(dtype=np.int64)
    seconds = ordered["event_time"].to_numpy(dtype="datetime64[s]").view(np.int64)
    row_clients = sample["client_id"].to_numpy(dtype=np.int64)
    report = sample["report_date"].to_numpy(dtype="datetime64[s]").view(np.int64)
    start = np.searchsorted(clients, row_clients, side="left")
    stop = np.searchsorted(clients, row_clients, side="right")
    # One sorted key per event, (client, time) as client rank * span + time, finds each row's end at once.
    t0 = min(seconds.min(initial=0), report.min(initial=0))
    span = max(seconds.max(initial=0), report.max(initial=0)) - t0 + 1
    ranks = np.searchsorted(np.unique(clients), clients)
    key = ranks * span + (seconds - t0)
    row_ranks = np.searchsorted(np.unique(clients), row_clients)
    end = np.searchsorted(key, row_ranks * span + (report - t0), side="left")
    end = np.clip(end, start, stop)  # a client without any event: start == stop
    return ordered, start, end
