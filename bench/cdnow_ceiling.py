"""How high can any model score on CDNOW's test quarter? The headroom above the peers, measured.

    python bench/cdnow_ceiling.py PATH/TO/CDNOW_master.txt [--seeds 0,1,2] [--skip anna] [--no-write]

The cdnow benchmark trains on the quarters of 1997-07-01 and 1997-10-01 and tests on 1998-01-01. To see
how much signal the test quarter holds at all, this benchmark also fits models *on the test quarter's
own labels*, where nothing shifts between fit and test (no Christmas quarter missing from training, no
longer tenures than seen in training):

- ``out_of_time``: the README's split, as in bench/cdnow.py: fit on the two earlier dates, score 1998-01-01.
- ``in_quarter``: the 23,570 rows of 1998-01-01 alone, 5-fold cross-fitted: each row is scored by a model
  fitted on the other four fifths (a new fold assignment per seed), so every test row is scored once.
- ``all_labels``: the same folds, each model fitted on the other four fifths *and* every row of the two
  earlier dates: every label there is but the scored row's own fold, the most any model could learn from.
- ``anna_in_quarter``: ANNA's pipeline on a sample of the 1998-01-01 rows alone (one report date: its
  stratified random split, test 15% of the clients), beside both LightGBMs fitted on that run's own train
  and valid rows and scored on its test rows: the same rows, so the difference is the models'.

Two feature sets for LightGBM: the peer's 17 aggregates (``cdnow_data.aggregates``) and ``rich``, those
plus what else a data scientist would try on purchase histories: the ages and amounts of the last four
purchase days, the first purchase's amount and day of the year, purchase days in 60/120/270-day windows,
and BG/NBD's probability that the customer is still active and its expected purchases in 90 days (fitted
per report date on the history before it, without labels). Every feature is point-in-time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cdnow_data as data  # noqa: E402
from cdnow import blended_test_rows, fit_lightgbm, prepare, run_pipeline, scores_of  # noqa: E402

FOLDS = 5
LAST_DAYS = 4  # the last purchase days whose age and amounts become features
DAY_WINDOWS = (60, 120, 270)


def history_features(events: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    """Per sample row (row order kept), from purchase days strictly before its report date: the age in
    days, dollars and CDs of the last ``LAST_DAYS`` purchase days (``age_0`` is the latest), the first
    day's dollars and day of the year, and the purchase days in each of ``DAY_WINDOWS``."""
    days = events.groupby(["client_id", "event_time"], as_index=False).agg(
        cds=("number_of_cds", "sum"), dollars=("dollar_value", "sum"))
    joined = sample[["client_id", "report_date"]].reset_index(names="row").merge(days, on="client_id")
    joined = joined[joined["event_time"] < joined["report_date"]].sort_values(["row", "event_time"])
    joined["age"] = ((joined["report_date"] - joined["event_time"]) / data.DAY).astype(np.float64)
    joined["from_last"] = joined.groupby("row").cumcount(ascending=False)  # 0: the latest purchase day
    columns: dict[str, pd.Series] = {}
    for k in range(LAST_DAYS):
        day = joined[joined["from_last"] == k].set_index("row")
        for name in ("age", "dollars", "cds"):
            columns[f"{name}_{k}"] = day[name]
    first = joined.groupby("row").first()
    columns["first_dollars"] = first["dollars"]
    columns["first_day_of_year"] = first["event_time"].dt.day_of_year.astype(np.float64)
    windowed = [f"days_{w}d" for w in DAY_WINDOWS]
    for window, name in zip(DAY_WINDOWS, windowed, strict=True):
        columns[name] = joined[joined["age"] <= window].groupby("row").size().astype(np.float64)
    out = pd.DataFrame(columns).reindex(np.arange(len(sample))).rename_axis(index=None)
    out[windowed] = out[windowed].fillna(0.0)  # no purchase day in the window
    return out.astype(np.float64)


def bgnbd_features(events: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    """Per sample row: BG/NBD's probability that the customer is still active, and its expected purchase
    days in the next 90, from a model fitted (without labels) on the history before that report date."""
    from lifetimes import BetaGeoFitter

    out = pd.DataFrame({"p_alive": np.nan, "bgnbd_90d": np.nan}, index=np.arange(len(sample)))
    for date in data.REPORT_DATES:
        rfm = data.rfm_summary(events, date)
        model = BetaGeoFitter(penalizer_coef=0.001).fit(rfm["frequency"], rfm["recency"], rfm["T"])
        rows = (sample["report_date"] == date).to_numpy()
        at = rfm.reindex(sample.loc[rows, "client_id"])
        out.loc[rows, "p_alive"] = np.asarray(
            model.conditional_probability_alive(at["frequency"], at["recency"], at["T"]))
        out.loc[rows, "bgnbd_90d"] = np.asarray(model.conditional_expected_number_of_purchases_up_to_time(
            data.HORIZON.days, at["frequency"], at["recency"], at["T"]))
    return out


def out_of_time(prep: dict[str, Any], x: pd.DataFrame, seed: int) -> float:
    """The README's split, as the cdnow peer: fit on the earlier dates, stop on 15% of their clients."""
    sample, y = prep["sample"], prep["sample"]["target"].to_numpy()
    stop = data.validation_clients(sample, 0.15, seed)
    fit = (sample["part"] == "train").to_numpy() & ~stop
    test = (sample["part"] == "test").to_numpy()
    score, _ = fit_lightgbm(x[fit], y[fit], x[stop], y[stop], x[test], seed)
    return scores_of(y[test], score)["roc_auc"]


def cross_fitted(prep: dict[str, Any], x: pd.DataFrame, seed: int, *, with_earlier: bool) -> float:
    """5-fold cross-fitted on the test quarter: each fold is scored by a model fitted on the other four
    (and, ``with_earlier``, on every row of the two earlier dates too), which stops early on 15% of its
    rows. One ROC-AUC over all 23,570 rows of 1998-01-01."""
    sample, y = prep["sample"], prep["sample"]["target"].to_numpy()
    quarter = (sample["part"] == "test").to_numpy()
    rng = np.random.default_rng(seed)
    fold = np.full(len(sample), -1)
    fold[quarter] = rng.permutation(np.arange(quarter.sum()) % FOLDS)
    stop_key = rng.random(len(sample))
    score = np.empty(len(sample))
    for k in range(FOLDS):
        held = fold == k
        usable = (quarter | with_earlier) & ~held
        stop, fit = usable & (stop_key < 0.15), usable & (stop_key >= 0.15)
        score[held], _ = fit_lightgbm(x[fit], y[fit], x[stop], y[stop], x[held], seed)
    return scores_of(y[quarter], score[quarter])["roc_auc"]


def anna_in_quarter(prep: dict[str, Any], features: dict[str, pd.DataFrame], seed: int) -> dict[str, Any]:
    """ANNA's pipeline on the test quarter alone, and each LightGBM on the same run's parts."""
    sample = prep["sample"]
    quarter = sample[sample["part"] == "test"][["client_id", "report_date", "target"]].reset_index(drop=True)
    path = prep["work_dir"] / "samples" / "cdnow-test-quarter.parquet"
    quarter.to_parquet(path, index=False)
    run_dir, seconds, _ = run_pipeline(prep, seed, {}, path)
    split = pd.read_parquet(run_dir / "split.parquet")  # rows in the quarter sample's order
    test = blended_test_rows(run_dir)
    result = {"anna": scores_of(test["y"].to_numpy(), test["score_0"].to_numpy())["roc_auc"],
              "seconds": round(seconds, 1), "test_rows": len(test)}
    quarter_rows = np.flatnonzero((sample["part"] == "test").to_numpy())
    parts, y = split["part"].to_numpy(), split["y"].to_numpy()
    by_part = {p: parts == p for p in ("train", "valid", "test")}
    for name, x in features.items():
        xq = x.iloc[quarter_rows].reset_index(drop=True)
        score, _ = fit_lightgbm(xq[by_part["train"]], y[by_part["train"]], xq[by_part["valid"]],
                                y[by_part["valid"]], xq.loc[test["row"].to_numpy()], seed)
        result[f"lightgbm_{name}"] = scores_of(test["y"].to_numpy(), score)["roc_auc"]
    return result


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 \
        else f"{values[0]:.4f}"


def summarise(found: dict[str, list[float]], anna: list[dict[str, Any]], n_features: dict[str, int],
              seeds: list[int], load: str) -> str:
    lines = ["| features | out of time (README split) | test quarter, 5-fold cross-fitted | earlier dates "
             "+ test quarter, 5-fold cross-fitted |", "| --- | ---: | ---: | ---: |"]
    for name in n_features:
        lines.append(f"| LightGBM, {name} ({n_features[name]} features) | " + " | ".join(
            _mean_std(found[f"{k}_{name}"]) for k in ("oot", "inq", "all")) + " |")
    lines += ["", f"ROC-AUC on the 23,570 rows of 1998-01-01, mean ± std over seeds {seeds}."]
    if anna:
        lines += ["", "ANNA's pipeline fitted in the test quarter (its random split), beside LightGBM on "
                  "the same run's train/valid rows, all scored on that run's test rows:", "",
                  "| seed | test rows | ANNA | LightGBM, 17 | LightGBM, rich | ANNA s |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for seed, r in zip(seeds, anna, strict=True):
            lines.append(f"| {seed} | {r['test_rows']:,} | {r['anna']:.4f} | {r['lightgbm_17']:.4f} | "
                         f"{r['lightgbm_rich']:.4f} | {r['seconds']:.0f} |")
        gaps = [r["anna"] - max(r["lightgbm_17"], r["lightgbm_rich"]) for r in anna]
        lines += ["", f"ANNA − the better LightGBM on the same rows: {_mean_std(gaps)}."]
    best = max(statistics.mean(v) for v in found.values())
    lines += ["", f"Best mean of any model here: **{best:.4f}**; the issue's goal for ANNA on the README "
              "split is 0.812. Load at the end: " + load + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, help="CDNOW_master.txt (the project never ships it)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--skip", default="", help="'anna' skips ANNA's in-quarter runs")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    t = time.perf_counter()
    prep = prepare(args.raw, args.work_dir)
    rich = pd.concat([prep["features"], history_features(prep["events"], prep["sample"]),
                      bgnbd_features(prep["events"], prep["sample"])], axis=1)
    features = {"17": prep["features"], "rich": rich}
    print(f"prepared in {time.perf_counter() - t:.1f} s", flush=True)
    found: dict[str, list[float]] = {}
    for name, x in features.items():  # LightGBM before torch starts its threads in this process
        for seed in seeds:
            found.setdefault(f"oot_{name}", []).append(out_of_time(prep, x, seed))
            found.setdefault(f"inq_{name}", []).append(cross_fitted(prep, x, seed, with_earlier=False))
            found.setdefault(f"all_{name}", []).append(cross_fitted(prep, x, seed, with_earlier=True))
            print(f"  LightGBM {name:>4} seed {seed}: " + ", ".join(
                f"{k} {found[f'{k}_{name}'][-1]:.4f}" for k in ("oot", "inq", "all")), flush=True)
    anna = []
    if "anna" not in args.skip.split(","):
        for seed in seeds:
            anna.append(anna_in_quarter(prep, features, seed))
            print(f"  ANNA in quarter seed {seed}: {anna[-1]}", flush=True)
    load = "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"
    text = summarise(found, anna, {k: v.shape[1] for k, v in features.items()}, seeds, load)
    print(text)
    if not args.no_write:
        from _report import write_result

        write_result("cdnow_ceiling", {"lightgbm": found, "anna_in_quarter": anna, "seeds": seeds,
                                       "features": {k: list(v.columns) for k, v in features.items()}}, text)


if __name__ == "__main__":
    main()
