"""The cdnow-repurchase-90d benchmark (datasets/cdnow/README.md): ANNA's pipeline and its peers, one split.

    python bench/cdnow.py PATH/TO/CDNOW_master.txt [--seeds 0,1,2] [--skip ptls,bgnbd,...] [--work-dir DIR]
                          [--params '{"default": {...}}'] [--no-write]

Builds the ``purchases`` mart and the sample in a work folder (reused when the raw file is unchanged), then
per seed trains ANNA through the pipeline's steps, as a user's run does, and the peers: LightGBM on
17 per-client aggregates, BG/NBD (lifetimes, deterministic: run once) and a supervised GRU of
pytorch-lifestream. Every model is scored on exactly the README's test rows (report date 1998-01-01).

Peers import only when they run (``.venv-bench`` has them); ``cdnow_data`` holds the benchmark's rules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cdnow_data as data  # noqa: E402

PEERS = ("anna", "lightgbm", "lightgbm_anna_parts", "bgnbd", "ptls")
VALID_SHARE = 0.15  # train clients the peers stop early on
THREADS = 2


def _stamp(raw: Path) -> str:
    """The raw file (path, size, time) and the data rules' source: a change to either rebuilds the mart."""
    stat = raw.stat()
    digest = hashlib.sha1(f"{raw.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(Path(data.__file__).read_bytes())
    return digest.hexdigest()[:12]


def prepare(raw: Path, work_dir: Path | None) -> dict[str, Any]:
    """Events, the sample (with the README's ``part``), its aggregates, and the mart + sample files."""
    raw = Path(raw)
    work_dir = Path(work_dir or Path(tempfile.gettempdir()) / f"anna-cdnow-{_stamp(raw)[:8]}")
    events = data.read_raw(raw)
    sample = data.build_sample(events)
    sample_path, mart_dir = work_dir / "samples" / "cdnow.parquet", work_dir / "marts" / data.DOMAIN
    stamp = work_dir / "prepared.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("raw") == _stamp(raw):
        manifest = json.loads((mart_dir / "manifest.json").read_text())
    else:
        sample_path.parent.mkdir(parents=True, exist_ok=True)
        sample.to_parquet(sample_path, index=False)
        manifest = data.build_purchases_mart(events, mart_dir)
        stamp.write_text(json.dumps({"raw": _stamp(raw), "mart_version": manifest["version"]}))
    sample["part"] = data.benchmark_part(sample)
    return {"work_dir": work_dir, "events": events, "sample": sample, "sample_path": sample_path,
            "manifest": manifest, "features": data.aggregates(events, sample)}


def scores_of(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"roc_auc": float(roc_auc_score(y, score)), "pr_auc": float(average_precision_score(y, score))}


# ---------------------------------------------------------------- ANNA


def run_pipeline(prep: dict[str, Any], seed: int, params: dict[str, Any], sample_path: Path,
                 ) -> tuple[Path, float, dict[str, float]]:
    """A user's run on ``sample_path``: every pipeline step in order (one domain: no fusion model).
    Returns the run's folder, its wall time and each step's seconds."""
    from anna_models import pipeline
    from anna_models.config import RunConfig, StepContext

    work_dir: Path = prep["work_dir"]
    (work_dir / "mlflow").mkdir(exist_ok=True)
    run_id = int(time.time() * 1000) % 2**31
    config = RunConfig(
        run_id=run_id, task_name="cdnow-repurchase-90d", task_type="binary", metric="roc_auc",
        domains=[data.DOMAIN], sample_path=str(sample_path), sample_fingerprint="bench-cdnow",
        marts_root=str(work_dir / "marts"), mart_versions={data.DOMAIN: prep["manifest"]["version"]},
        tracking_uri=f"sqlite:///{(work_dir / 'mlflow' / 'mlflow.db').resolve()}", params=params, seed=seed,
    )
    ctx = StepContext(run_dir=work_dir / "runs" / f"seed{seed}-{run_id}", config=config)
    steps: list[tuple[str, Callable[[], Any]]] = [
        (pipeline.step_name(s), lambda s=s: s(ctx)) for s in pipeline.PRE]
    steps += [(pipeline.step_name(s, d), lambda s=s, d=d: s(ctx, d))
              for d in config.domains for s in pipeline.PER_DOMAIN]
    steps += [(pipeline.step_name(s), lambda s=s: s(ctx)) for s in pipeline.POST]
    timings, started = {}, time.perf_counter()
    for name, step in steps:
        t = time.perf_counter()
        step()
        timings[name] = round(time.perf_counter() - t, 2)
    return ctx.run_dir, time.perf_counter() - started, timings


def blended_test_rows(run_dir: Path) -> pd.DataFrame:
    """The run's test rows: ``client_id``, ``report_date``, ``y`` and the blended ``score_0``."""
    split = pd.read_parquet(run_dir / "split.parquet")
    blended = pd.read_parquet(run_dir / "blend" / "predictions.parquet")
    return blended[blended["part"] == "test"].merge(split[["row", "client_id", "report_date", "y"]], on="row")


def run_anna(prep: dict[str, Any], seed: int, params: dict[str, Any]) -> dict[str, Any]:
    """A user's run on the benchmark's sample, then its blended test scores, checked to be exactly the
    README's test rows."""
    from anna_models import pipeline

    run_dir, seconds, timings = run_pipeline(prep, seed, params, prep["sample_path"])
    test = blended_test_rows(run_dir)
    expected = prep["sample"][prep["sample"]["part"] == "test"]
    if not _same_rows(test, expected):
        raise RuntimeError("ANNA's test rows differ from the README's test rows (report date 1998-01-01)")
    report = json.loads((run_dir / "report.json").read_text())
    epochs = json.loads(pipeline.marker_path(run_dir, f"train.{data.DOMAIN}").read_text())["epochs"]
    return {**scores_of(test["y"].to_numpy(), test["score_0"].to_numpy()), "seconds": seconds,
            "timings": timings, "epochs": epochs,
            "domain_test_roc_auc": report["domains"][data.DOMAIN]["test"]["metrics"]["roc_auc"],
            "split": {p: {k: v[k] for k in ("rows", "date_min", "date_max")}
                      for p, v in report["split"]["parts"].items()} | {"kind": report["split"]["kind"]}}


def _same_rows(found: pd.DataFrame, expected: pd.DataFrame) -> bool:
    def keys(frame: pd.DataFrame) -> set[tuple[int, np.datetime64]]:
        dates = frame["report_date"].to_numpy(dtype="datetime64[s]")
        return set(zip(frame["client_id"].to_numpy(dtype=np.int64).tolist(), dates.tolist(), strict=True))

    return len(found) == len(expected) and keys(found) == keys(expected)


# ---------------------------------------------------------------- peers


def run_lightgbm(prep: dict[str, Any], seed: int, *, anna_parts: bool = False) -> dict[str, Any]:
    """LightGBM on the aggregates; stops early on a random 15% of the train clients, or, with
    ``anna_parts``, fits on 1997-07-01 and stops on 1997-10-01 (out of time, one date each)."""
    started = time.perf_counter()
    sample, x = prep["sample"], prep["features"]
    if anna_parts:
        valid = (sample["report_date"] == data.REPORT_DATES[1]).to_numpy()
        fit = (sample["report_date"] == data.REPORT_DATES[0]).to_numpy()
    else:
        valid = data.validation_clients(sample, VALID_SHARE, seed)
        fit = (sample["part"] == "train").to_numpy() & ~valid
    test = (sample["part"] == "test").to_numpy()
    y = sample["target"].to_numpy()
    score, trees = fit_lightgbm(x[fit], y[fit], x[valid], y[valid], x[test], seed)
    return {**scores_of(y[test], score), "seconds": time.perf_counter() - started, "trees": trees}


def fit_lightgbm(x_fit: pd.DataFrame, y_fit: np.ndarray, x_stop: pd.DataFrame, y_stop: np.ndarray,
                 x_score: pd.DataFrame, seed: int) -> tuple[np.ndarray, int]:
    """The LightGBM peer: fits on ``x_fit``, stops early on ``x_stop``'s ROC-AUC after 200 rounds without
    gain; returns the probabilities of ``x_score`` and the number of trees kept."""
    import lightgbm as lgb

    model = lgb.LGBMClassifier(
        n_estimators=3000, learning_rate=0.02, num_leaves=15, min_child_samples=100, subsample=0.8,
        subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0, random_state=seed, n_jobs=THREADS, verbose=-1,
    )
    model.fit(x_fit, y_fit, eval_X=(x_stop,), eval_y=(y_stop,), eval_metric="auc",
              callbacks=[lgb.early_stopping(200, verbose=False)])
    return model.predict_proba(x_score)[:, 1], int(model.best_iteration_)


def run_bgnbd(prep: dict[str, Any]) -> dict[str, Any]:
    """BG/NBD fitted on every client's history before 1998-01-01 (it needs no labels); the score is the
    expected number of purchase days in the next 90."""
    from lifetimes import BetaGeoFitter

    started = time.perf_counter()
    rfm = data.rfm_summary(prep["events"], data.TEST_DATE)
    model = BetaGeoFitter(penalizer_coef=0.0)
    model.fit(rfm["frequency"], rfm["recency"], rfm["T"])
    expected = model.conditional_expected_number_of_purchases_up_to_time(
        data.HORIZON.days, rfm["frequency"], rfm["recency"], rfm["T"])
    test = prep["sample"][prep["sample"]["part"] == "test"]
    score = pd.Series(np.asarray(expected), index=rfm.index).reindex(test["client_id"]).to_numpy()
    return {**scores_of(test["target"].to_numpy(), score), "seconds": time.perf_counter() - started,
            "params": {k: float(v) for k, v in model.params_.items()}}


def ptls_records(prep: dict[str, Any], rows: np.ndarray) -> list[dict[str, Any]]:
    """pytorch-lifestream's input for sample rows ``rows``: per row a dict of (T,) tensors (purchases before
    the report date, oldest first) and ``target``. Numerics are log1p of CDs, dollars, days before the
    report date and days since the previous purchase; the weekday is a category (codes 1..7)."""
    import torch

    sample = prep["sample"]
    ordered, start, end = data.histories(prep["events"], sample)
    days = ordered["event_time"].to_numpy(dtype="datetime64[D]").view(np.int64)
    report = sample["report_date"].to_numpy(dtype="datetime64[D]").view(np.int64)
    cds = np.log1p(ordered["number_of_cds"].to_numpy(np.float32))
    dollars = np.log1p(ordered["dollar_value"].to_numpy(np.float32))
    weekday = ((days + 3) % 7 + 1).astype(np.int64)  # 1970-01-01 was a Thursday
    records = []
    for i in rows:
        lo, hi = start[i], end[i]
        t = days[lo:hi]
        gap = np.diff(t, prepend=t[0]).astype(np.float32)
        records.append({
            "event_time": torch.from_numpy(t.copy()),
            "weekday": torch.from_numpy(weekday[lo:hi].copy()),
            "cds": torch.from_numpy(cds[lo:hi].copy()),
            "dollars": torch.from_numpy(dollars[lo:hi].copy()),
            "days_before": torch.from_numpy(np.log1p(report[i] - t).astype(np.float32)),
            "gap": torch.from_numpy(np.log1p(gap)),
            "target": float(sample["target"].iat[i]),
        })
    return records


def run_ptls(prep: dict[str, Any], seed: int, epochs: int = 20) -> dict[str, Any]:
    """ptls's supervised GRU (hidden 64): fits on the train rows minus the validation clients for
    ``epochs`` epochs, keeps the epoch with the best validation ROC-AUC, scores the test rows."""
    import logging
    from functools import partial

    import pytorch_lightning as pl
    import torch
    import torchmetrics
    from ptls.data_load.utils import collate_feature_dict
    from ptls.frames import PtlsDataModule
    from ptls.frames.supervised import SeqToTargetDataset, SequenceToTarget
    from ptls.nn import Head, RnnSeqEncoder, TrxEncoder

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    pl.seed_everything(seed, verbose=False)
    sample = prep["sample"]
    valid = data.validation_clients(sample, VALID_SHARE, seed)
    fit = (sample["part"] == "train").to_numpy() & ~valid
    test = np.flatnonzero((sample["part"] == "test").to_numpy())
    records = {name: ptls_records(prep, rows) for name, rows in
               (("fit", np.flatnonzero(fit)), ("valid", np.flatnonzero(valid)), ("test", test))}
    prepared = time.perf_counter()
    encoder = RnnSeqEncoder(
        trx_encoder=TrxEncoder(
            embeddings={"weekday": {"in": 8, "out": 4}},
            numeric_values={k: "identity" for k in ("cds", "dollars", "days_before", "gap")},
        ),
        hidden_size=64, type="gru",
    )
    model = SequenceToTarget(
        seq_encoder=encoder,
        head=Head(input_size=64, use_batch_norm=True, objective="classification", num_classes=1),
        loss=torch.nn.BCELoss(), metric_list={"auroc": torchmetrics.AUROC(task="binary")},
        optimizer_partial=partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-5),
        lr_scheduler_partial=partial(torch.optim.lr_scheduler.StepLR, step_size=5, gamma=0.5),
    )
    datamodule = PtlsDataModule(
        train_data=SeqToTargetDataset(records["fit"], target_col_name="target", target_dtype=torch.float),
        valid_data=SeqToTargetDataset(records["valid"], target_col_name="target", target_dtype=torch.float),
        train_batch_size=128, valid_batch_size=1024,
    )
    with tempfile.TemporaryDirectory() as checkpoints:
        best = pl.callbacks.ModelCheckpoint(dirpath=checkpoints, monitor="valid/auroc", mode="max")
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[best],
                             num_sanity_val_steps=0)
        trainer.fit(model, datamodule)
        model = SequenceToTarget.load_from_checkpoint(best.best_model_path, seq_encoder=encoder,
                                                      head=model.head, loss=model.loss)
        for record in records["test"]:
            del record["target"]
        loader = torch.utils.data.DataLoader(records["test"], batch_size=1024,
                                             collate_fn=collate_feature_dict)
        score = torch.cat(trainer.predict(model, loader)).float().numpy()
        best_epoch = int(torch.load(best.best_model_path, weights_only=False)["epoch"])
    return {**scores_of(sample["target"].to_numpy()[test], score), "seconds": time.perf_counter() - started,
            "best_epoch": best_epoch, "best_valid_roc_auc": float(best.best_model_score),
            "prepare_seconds": prepared - started}


# ---------------------------------------------------------------- report


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


LABELS = {
    "anna": "ANNA (pipeline: searched encoder + LightGBM on aggregates + blender)",
    "lightgbm": "LightGBM, 17 aggregates",
    "lightgbm_anna_parts": "LightGBM, 17 aggregates, fit on 1997-07-01, stop on 1997-10-01",
    "bgnbd": "BG/NBD (lifetimes)",
    "ptls": "ptls supervised GRU (hidden 64, 20 epochs)",
}


def summarise(runs: dict[str, list[dict[str, Any]]], seeds: list[int], load: str) -> tuple[str, dict]:
    lines = ["| model | test ROC-AUC | test PR-AUC | wall time per run (s) | runs |",
             "| --- | --- | --- | --- | --- |"]
    results: dict[str, Any] = {"seeds": seeds, "load": load, "models": {}}
    for name in sorted(runs, key=PEERS.index):
        entries = runs[name]
        roc, pr = [e["roc_auc"] for e in entries], [e["pr_auc"] for e in entries]
        secs = [e["seconds"] for e in entries]
        bold = "**" if name == "anna" else ""
        lines.append(f"| {bold}{LABELS[name]}{bold} | {bold}{_mean_std(roc)}{bold} | {_mean_std(pr)} | "
                     f"{statistics.mean(secs):.0f} | {len(entries)} |")
        results["models"][name] = {"roc_auc": roc, "pr_auc": pr, "seconds": [round(s, 1) for s in secs],
                                   "details": [{k: v for k, v in e.items() if k not in ("roc_auc", "pr_auc")}
                                               for e in entries]}
    lines += ["", " ".join([
        "Every model is scored on the same rows: the customers at report date 1998-01-01 (the README's test",
        "split). LightGBM and ptls fit on both earlier report dates and stop early on 15% of those clients",
        "(ptls keeps its best of 20 epochs); BG/NBD is fitted without labels on the history before",
        "1998-01-01 and is deterministic (one run).",
    ])]
    if runs.get("anna"):
        split = runs["anna"][0]["split"]
        lines += ["", f"ANNA's own split ({split['kind']}, `anna_models.split`): " + ", ".join(
            f"{p} {split[p]['rows']:,} rows ({split[p]['date_min']} .. {split[p]['date_max']})"
            for p in ("train", "valid", "test"))
            + "; the encoder trains on train and stops early on a client-grouped share of it (the run's "
            "`stopping_share`; 0 stops on valid), the blender fits on valid; the blended test scores are "
            "checked to be exactly the README's test rows."]
        steps = runs["anna"][0]["timings"]
        mean_steps = {k: statistics.mean(e["timings"][k] for e in runs["anna"]) for k in steps}
        lines += ["", "ANNA's steps, mean s: " + ", ".join(f"{k} {v:.1f}" for k, v in mean_steps.items())
                  + "; epochs " + ", ".join(str(e["epochs"]) for e in runs["anna"])]
    lines += ["", f"Load at the end: {load}."]
    return "\n".join(lines), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path, help="CDNOW_master.txt (the project never ships it)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--skip", default="", help=f"comma-separated, of {','.join(PEERS)}")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--params", default="{}", help="ANNA's RunConfig.params as JSON")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/results and docs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(PEERS)
    if unknown:
        parser.error(f"--skip: unknown {sorted(unknown)}; known: {', '.join(PEERS)}")

    t = time.perf_counter()
    prep = prepare(args.raw, args.work_dir)
    sample = prep["sample"]
    print(f"prepared {len(sample):,} sample rows ({(sample['part'] == 'test').sum():,} test) and the mart "
          f"in {prep['work_dir']} ({time.perf_counter() - t:.1f} s)", flush=True)
    # LightGBM first: after torch has started its OpenMP threads in this process it runs several times slower.
    jobs: dict[str, Callable[[int], dict[str, Any]]] = {
        "lightgbm": lambda seed: run_lightgbm(prep, seed),
        "lightgbm_anna_parts": lambda seed: run_lightgbm(prep, seed, anna_parts=True),
        "bgnbd": lambda seed: run_bgnbd(prep),
        "anna": lambda seed: run_anna(prep, seed, json.loads(args.params)),
        "ptls": lambda seed: run_ptls(prep, seed),
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, job in jobs.items():
        if name in skip:
            continue
        for seed in seeds[:1] if name == "bgnbd" else seeds:
            entry = job(seed)
            runs.setdefault(name, []).append(entry)
            print(f"  {name:<20} seed {seed}: ROC-AUC {entry['roc_auc']:.4f}  PR-AUC {entry['pr_auc']:.4f}  "
                  f"{entry['seconds']:.0f} s", flush=True)
    load = "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"
    text, results = summarise(runs, seeds, load)
    print(text)
    if not args.no_write:
        from _report import write_result

        write_result("cdnow", results, text)


if __name__ == "__main__":
    main()
