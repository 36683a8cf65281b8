"""Is the demo data fit for the product? A gradient-boosting proxy on per-client aggregates of each domain.

The neural pipeline must be able to beat every single domain by blending and get close to the oracle. This
check builds simple aggregates of each client's events strictly before the report date (through
``extract_sequences``, as the pipeline does), fits HistGradientBoosting per domain and on all domains
together, and scores the latest three report months (out of time) against the oracle on the same rows.

    python bench/check_demo_signal.py --clients 20000 [--data-dir DIR] [--all-tasks]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_NUM_THREADS", "1")  # HistGradientBoosting spins badly on a busy 2-core box

from anna_models.demo_data import DOMAINS, PRODUCTS, generate_demo  # noqa: E402
from anna_models.extract import extract_sequences  # noqa: E402
from anna_models.marts import Mart  # noqa: E402
from anna_models.sequences import Sequences  # noqa: E402

TEST_FROM = np.datetime64("2025-10-01")
TOP_CODES = 40  # shares of this many most frequent codes per categorical feature


def aggregates(seq: Sequences, vocab: dict[str, int], prefix: str) -> pd.DataFrame:
    """(N, F) per-row summaries: counts, numeric moments, recency, rhythm and category shares."""
    n, lengths = seq.n_rows, seq.lengths
    row = np.repeat(np.arange(n), lengths)
    count = np.maximum(lengths, 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return np.where(lengths > 0, np.bincount(row, weights=x, minlength=n) / count, np.nan)

    out = {"n_events": lengths.astype(float)}
    last = seq.offsets[1:] - 1
    for name, x in seq.numeric.items():
        out[f"{name}_mean"] = mean(x)
        out[f"{name}_std"] = np.sqrt(
            np.maximum(mean(x.astype(np.float64) ** 2) - out[f"{name}_mean"] ** 2, 0)
        )
        out[f"{name}_max"] = np.where(
            lengths > 0,
            np.maximum.reduceat(x, np.minimum(seq.offsets[:-1], max(len(x) - 1, 0))) if len(x) else 0,
            np.nan,
        )
        out[f"{name}_last"] = np.where(lengths > 0, x[np.maximum(last, 0)] if len(x) else 0, np.nan)
    tf = seq.time_features
    out["days_since_last"] = np.where(lengths > 0, tf[np.maximum(last, 0), 0] if len(tf) else 0, np.nan)
    out["span_days"] = np.where(
        lengths > 0, tf[np.minimum(seq.offsets[:-1], max(len(tf) - 1, 0)), 0] if len(tf) else 0, np.nan
    )
    out["gap_mean"] = mean(tf[:, 1])
    out["night_share"] = mean(((tf[:, 2] < 6 / 24) | (tf[:, 2] >= 22 / 24)).astype(float))
    out["weekend_share"] = mean((tf[:, 3] >= 5 / 7 - 1e-6).astype(float))
    for name, codes in seq.categorical.items():
        top = np.argsort(-np.bincount(codes, minlength=vocab[name]))[:TOP_CODES]
        for code in top:
            out[f"{name}_{code}"] = mean((codes == code).astype(float))
        if name in ("overdue_bucket",):  # the worst bucket ever reached is what a credit officer reads
            worst = np.zeros(n)
            np.maximum.at(worst, row, codes.astype(float))
            out[f"{name}_worst"] = worst
    frame = pd.DataFrame(out)
    frame.columns = [f"{prefix}.{c}" for c in frame.columns]
    return frame


def fit_score(
    task: str, x_train: pd.DataFrame, y_train: np.ndarray, x_test: pd.DataFrame, y_test: np.ndarray
) -> float:
    """Test metric of a HistGradientBoosting model: ROC-AUC, multiclass accuracy or regression R²."""
    from sklearn import ensemble, metrics

    params = {"max_iter": 400, "learning_rate": 0.05, "early_stopping": True, "random_state": 0}
    if task == "regression":
        model = ensemble.HistGradientBoostingRegressor(**params).fit(x_train, y_train)
        return float(metrics.r2_score(y_test, model.predict(x_test)))
    model = ensemble.HistGradientBoostingClassifier(**params).fit(x_train, y_train)
    if task == "multiclass":
        return float(metrics.accuracy_score(y_test, model.predict(x_test)))
    return float(metrics.roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))


def check_task(data_dir: Path, sample: str, task: str, marts: dict[str, Mart]) -> dict[str, float]:
    from sklearn import metrics

    truth = pd.read_parquet(data_dir / "demo" / "truth" / f"{sample}.parquet")
    dates = pd.to_datetime(truth["report_date"]).to_numpy("datetime64[s]")
    test = dates >= TEST_FROM
    features = {}
    for name, mart in marts.items():
        seq = extract_sequences(mart, truth["client_id"].to_numpy(), dates, mart.manifest["default_max_len"])
        vocab = {k: f["vocab_size"] for k, f in mart.features.items() if f["kind"] == "categorical"}
        features[name] = aggregates(seq, vocab, name)
    y = truth["target"].to_numpy()
    if task == "binary":
        oracle = metrics.roc_auc_score(y[test], truth["truth"][test])
    elif task == "multiclass":
        probs = truth[[f"truth_{p}" for p in PRODUCTS]].to_numpy()
        oracle = float((np.asarray(PRODUCTS)[probs.argmax(1)] == y)[test].mean())
    else:
        oracle = metrics.r2_score(y[test], truth["truth"][test])
    scores = {"oracle": float(oracle)}
    for name, x in [*features.items(), ("all domains", pd.concat(features.values(), axis=1))]:
        scores[name] = fit_score(task, x[~test], y[~test], x[test], y[test])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="an existing demo data directory (else generate one)")
    parser.add_argument("--all-tasks", action="store_true", help="also product_next and spend_3m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        if args.data_dir is None or not (data_dir / "marts").exists():
            summary = generate_demo(data_dir, args.clients, args.seed)
            print(f"generated {summary['clients']} clients in {summary['seconds']} s: {summary['events']}")
        marts = {spec.name: Mart.open(data_dir / "marts" / spec.name) for spec in DOMAINS}
        tasks = [("default_12m", "binary", "ROC-AUC")]
        if args.all_tasks:
            tasks += [("product_next", "multiclass", "accuracy"), ("spend_3m", "regression", "R²")]
        for sample, task, metric in tasks:
            started = time.perf_counter()
            scores = check_task(data_dir, sample, task, marts)
            singles = {k: v for k, v in scores.items() if k not in ("oracle", "all domains")}
            best = max(singles, key=singles.get)
            print(
                f"\n{sample} ({task}, test {metric}, out of time from {TEST_FROM}; "
                f"{time.perf_counter() - started:.0f} s)"
            )
            for name, value in scores.items():
                print(f"  {name:<22} {value:.4f}")
            print(f"  oracle - all domains   {scores['oracle'] - scores['all domains']:+.4f}")
            print(f"  all - best single      {scores['all domains'] - singles[best]:+.4f}  (best: {best})")


if __name__ == "__main__":
    main()
