"""The split rules (docs/architecture.md): which sample rows train, which stop training early, which test.

Every model trains on the train rows and stops early (and, for the encoders, chooses among AutoML trials)
on a client-grouped share of them (``stopping_rows``), so the valid rows stay held out for the blender
and for the valid metrics the report shows.

Out of time when report dates span at least ``OOT_MIN_MONTHS`` months: the latest report dates are the
test rows and the ones before them valid, unless fewer than ``OOT_VALID_MIN_MONTHS`` months precede the
test months; then a month held out would take a third or half of the training rows, so valid is a random
share of the earlier rows' clients instead. Otherwise stratified random, a client's rows kept in one part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PARTS = ("train", "valid", "test")
OOT_MIN_MONTHS = 6  # report dates spanning at least this many months are split out of time
OOT_VALID_MIN_MONTHS = 4  # fewer months before the test months: valid is random clients of them
TEST_SHARE, VALID_SHARE = 0.20, 0.15
MIN_STOPPING_ROWS = 10  # fewer stopping rows (or fit rows) than this: stop on valid instead (see can_stop_on)


def split_sample(sample: pd.DataFrame, task_type: str, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(N,) part names and a description: out of time when report dates span ≥ 6 months (valid out of
    time too when ≥ 4 months precede the test months, else random clients), else stratified random."""
    months = sample["report_date"].dt.to_period("M")
    distinct = np.sort(months.unique())
    span = (distinct[-1] - distinct[0]).n + 1 if len(distinct) else 0
    if span >= OOT_MIN_MONTHS and len(distinct) >= 3:
        n_test = max(1, round(TEST_SHARE * len(distinct)))
        test = months.isin(distinct[-n_test:]).to_numpy()
        if len(distinct) - n_test >= OOT_VALID_MIN_MONTHS:
            n_valid = max(1, round(VALID_SHARE * len(distinct)))
            valid = months.isin(distinct[-n_test - n_valid : -n_test]).to_numpy()
            kind = "out_of_time"
        else:
            # By client, not by row: a client's rows a quarter apart have nearly the same history.
            clients, inverse = np.unique(sample["client_id"].to_numpy(), return_inverse=True)
            key = np.random.default_rng(seed).random(len(clients))[inverse]
            valid = ~test & (key < VALID_SHARE / (1 - TEST_SHARE))
            kind = "out_of_time_test"
        parts = np.where(test, "test", np.where(valid, "valid", "train"))
        return parts, {"kind": kind, "months": len(distinct)}
    share = _random_share(sample, task_type, seed)
    parts = np.where(share <= 0.70, "train", np.where(share <= 0.85, "valid", "test"))
    return parts, {"kind": "stratified_random", "months": len(distinct)}


def _random_share(sample: pd.DataFrame, task_type: str, seed: int) -> np.ndarray:
    """(N,) each row's random rank within its target stratum, in (0, 1]; cutting it at 70% / 85% splits
    every stratum alike. The random key is drawn per client, so a client's rows (same stratum) share a
    part: nearly identical histories a few weeks apart in train and test would flatter the test metric."""
    rng = np.random.default_rng(seed)
    clients, inverse = np.unique(sample["client_id"].to_numpy(), return_inverse=True)
    if task_type == "regression":
        strata = pd.qcut(sample["target"].rank(method="first"), q=min(10, len(sample)), labels=False)
    else:
        strata = pd.Series(pd.factorize(sample["target"])[0], index=sample.index)
    frame = pd.DataFrame({"stratum": np.asarray(strata), "key": rng.random(len(clients))[inverse]})
    return frame.groupby("stratum")["key"].rank(pct=True).to_numpy()


def stopping_rows(client_id: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(N,) bool: the train rows of a random ``share`` of their clients, on which a model stops early. By
    client, so that a client's rows a few months apart (nearly the same history) never sit on both sides."""
    clients, inverse = np.unique(np.asarray(client_id), return_inverse=True)
    return np.random.default_rng(seed + 1).random(len(clients))[inverse] < share


def can_stop_on(stop: np.ndarray, y: np.ndarray, task_type: str) -> bool:
    """Whether ``stop`` (bool over the train rows) leaves ``MIN_STOPPING_ROWS`` rows on each side and, for
    classification, more than one class on each side: otherwise its metric says nothing."""
    stop, y = np.asarray(stop, dtype=bool), np.asarray(y)
    if min(stop.sum(), (~stop).sum()) < MIN_STOPPING_ROWS:
        return False
    return task_type == "regression" or (len(np.unique(y[stop])) > 1 and len(np.unique(y[~stop])) > 1)


def encode_target(target: pd.Series, task_type: str) -> tuple[np.ndarray, list]:
    """(N,) model targets and the sorted classes: floats for regression, class indices otherwise."""
    if task_type == "regression":
        return target.to_numpy(dtype=np.float64), []
    classes = sorted(target.unique().tolist())
    if task_type == "binary" and len(classes) != 2:
        raise ValueError(f"a binary task needs exactly 2 target values, the sample has {len(classes)}")
    if len(classes) < 2:
        raise ValueError("the sample's target has a single value; nothing to learn")
    return np.searchsorted(np.asarray(classes), target.to_numpy()).astype(np.int64), classes


def prepare_split(sample: pd.DataFrame, task_type: str, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Check a raw sample, encode its target and split it: rows with y, part and row, and the split info."""
    missing = {"client_id", "report_date", "target"} - set(sample.columns)
    if missing:
        raise ValueError(f"the sample lacks column(s) {sorted(missing)}")
    sample = sample[["client_id", "report_date", "target"]].reset_index(drop=True)
    sample["client_id"] = sample["client_id"].astype(np.int64)
    sample["report_date"] = pd.to_datetime(sample["report_date"]).astype("datetime64[s]")
    if sample.isna().any().any():
        raise ValueError("the sample has empty cells in client_id, report_date or target")
    y, classes = encode_target(sample["target"], task_type)
    parts, info = split_sample(sample, task_type, seed)
    sample["y"], sample["part"], sample["row"] = y, parts, np.arange(len(sample))
    for part in PARTS:
        if not (parts == part).any():
            raise ValueError(f"the split left no rows for {part!r}; the sample has {len(sample)} rows")
    dates = sample.groupby("part")["report_date"]
    info["parts"] = {part: {"rows": int((parts == part).sum()), "date_min": str(dates.min()[part].date()),
                            "date_max": str(dates.max()[part].date())} for part in PARTS}
    info["classes"] = classes
    return sample, info


def read_split(run_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The split rows (split.parquet) and their description (split.json) that validate_split wrote."""
    run_dir = Path(run_dir)
    return pd.read_parquet(run_dir / "split.parquet"), json.loads((run_dir / "split.json").read_text())
