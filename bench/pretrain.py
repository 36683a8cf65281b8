"""Pretrained (CoLES) domain encoders vs training from scratch, on the demo targets.

Pretrains each domain's encoder once on the events before the earliest report date of the demo samples,
registers it in a local MLflow store and finds it again as a run would (``find_pretrained``); then, for
each demo target and domain, trains the pipeline's domain model from scratch and from the pretrained
encoder with the same params and seed on the same rows (the pipeline's validate_split and extract steps),
and reports the epochs each needs and their test metrics.

    python bench/pretrain.py [--clients 20000] [--pretrain-epochs 12] [--pretrain-clients N] [--workers 2]
                             [--targets default_12m,product_next,spend_3m] [--data-dir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_demo import TASKS, ensure_demo, pretrain_worker  # noqa: E402

from anna_models import pipeline  # noqa: E402
from anna_models.config import DEFAULT_METRIC, DEMO_CLIENTS, RunConfig, StepContext  # noqa: E402
from anna_models.metrics import HIGHER_IS_BETTER, is_better  # noqa: E402

MODES = ("scratch", "fine-tuned", "frozen")  # frozen: the pretrained encoder stays, embed + head learn


def _fine_tune(args: tuple[str, str, str, str | None, str]) -> dict[str, Any]:
    """One worker: train one domain model of one target from scratch or from the encoder in ``folder``."""
    from anna_models.metrics import compute_metric
    from anna_models.pretrain import load_encoder
    from anna_models.training import predict, to_scores, train_model

    config_json, run_dir, domain, folder, mode = args
    ctx = StepContext(run_dir=Path(run_dir), config=RunConfig.from_json(config_json))
    cfg = ctx.config
    seqs, manifest = pipeline._load_extracts(ctx, domain)
    split = pd.read_parquet(ctx.run_dir / "split.parquet")
    y = {p: split.loc[split["part"] == p, "y"].to_numpy() for p in ("train", "valid", "test")}
    classes = json.loads((ctx.run_dir / "split.json").read_text())["classes"]
    params = pipeline.domain_params(ctx, domain)
    encoder = load_encoder(Path(folder)) if folder and mode != "scratch" else None
    if encoder is not None:
        params = replace(encoder.train_params(params), freeze_encoder=mode == "frozen")
    started = time.perf_counter()
    model, history = train_model({domain: seqs["train"]}, y["train"], {domain: seqs["valid"]}, y["valid"],
                                 task_type=cfg.task_type, metric=cfg.metric, classes=classes,
                                 manifests={domain: manifest}, params=params, seed=cfg.seed,
                                 init=encoder.state if encoder else None)
    seconds = time.perf_counter() - started
    outputs, _ = predict(model, seqs["test"])
    test = compute_metric(cfg.metric, y["test"], to_scores(cfg.task_type, outputs))
    return {"target": cfg.task_name, "domain": domain, "mode": mode, "seconds": seconds,
            "history": [h["valid_metric"] for h in history], "test": test}


def epochs_to_reach(history: list[float], goal: float, metric: str) -> int | None:
    """First epoch (1-based) whose valid metric is at least as good as ``goal``; None if none is."""
    for epoch, value in enumerate(history, 1):
        if value == goal or is_better(metric, value, goal):
            return epoch
    return None


def best_epoch(history: list[float], metric: str) -> tuple[int, float]:
    values = np.asarray(history, dtype=np.float64)
    index = int(np.nanargmax(values) if HIGHER_IS_BETTER[metric] else np.nanargmin(values))
    return index + 1, float(values[index])


def target_dir(data_dir: Path, config: RunConfig) -> Path:
    return data_dir / "runs" / f"bench-pretrain-{config.task_name}-{config.run_id}"


def prepare_target(data_dir: Path, summary: dict, sample_name: str, seed: int) -> RunConfig:
    """Split the target's sample and extract every domain through the pipeline's own steps."""
    task_type = TASKS[sample_name]
    sample = pd.read_csv(data_dir / "demo" / "samples" / f"{sample_name}.csv", parse_dates=["report_date"])
    sample_path = data_dir / "samples" / f"bench-pretrain-{sample_name}.parquet"
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    sample.to_parquet(sample_path, index=False)
    config = RunConfig(run_id=int(time.time()), task_name=sample_name, task_type=task_type,
                       metric=DEFAULT_METRIC[task_type], domains=sorted(summary["mart_versions"]),
                       sample_path=str(sample_path), sample_fingerprint="bench-pretrain",
                       marts_root=str(data_dir / "marts"), mart_versions=summary["mart_versions"],
                       tracking_uri="", params={}, seed=seed)
    ctx = StepContext(run_dir=target_dir(data_dir, config), config=config)
    for step in pipeline.PRE:
        step(ctx)
    for domain in config.domains:
        pipeline.extract(ctx, domain)
    return config


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from anna_models.pretrain import find_pretrained, load_encoder, log_encoder, save_encoder

    data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / f"anna-demo-{args.clients}-{args.seed}")
    summary = ensure_demo(data_dir, args.clients, args.seed)
    targets = args.targets.split(",")
    dates = [pd.read_csv(data_dir / "demo" / "samples" / f"{t}.csv")["report_date"].min() for t in TASKS]
    cutoff = str(min(dates))[:10]  # events strictly before it: allowed for every report date of every sample
    domains = sorted(summary["mart_versions"])
    coles = {"epochs": args.pretrain_epochs, "seed": args.seed}
    context = multiprocessing.get_context("spawn")  # a forked child would inherit torch's thread pool state
    print(f"pretraining {', '.join(domains)} on events before {cutoff} ...", flush=True)
    started = time.perf_counter()
    with context.Pool(args.workers) as pool:
        jobs = [(str(data_dir / "marts" / d), cutoff, coles, args.pretrain_clients) for d in domains]
        pretrained = {r["domain"]: r for r in pool.imap_unordered(pretrain_worker, jobs)}
    pretrain_wall = time.perf_counter() - started
    for domain, result in sorted(pretrained.items()):
        last = result["history"][-1]
        print(f"  {domain:<22} {result['seconds']:6.1f} s, loss {last['loss']:.3f}, "
              f"view accuracy {last['accuracy']:.3f}", flush=True)
    # Through the registry, as a run finds it: log every encoder, then find it by the run's earliest date.
    tracking_uri = f"sqlite:///{(data_dir / 'mlflow' / 'bench-pretrain.db').resolve()}"
    (data_dir / "mlflow").mkdir(exist_ok=True)
    for domain in domains:
        log_encoder(load_encoder(Path(pretrained[domain]["folder"])), tracking_uri)
        found = find_pretrained(tracking_uri, domain, mart_version=summary["mart_versions"][domain],
                                earliest_report_date=cutoff)
        assert found is not None and found.cutoff <= cutoff, f"{domain}: the registry did not give it back"
        # The runs below start from what the registry gave back, not from the folder logged.
        folder = save_encoder(found, data_dir / "pretrained" / f"{domain}.registry")
        pretrained[domain]["folder"] = str(folder)
        pretrained[domain]["registered"] = found.name

    configs = {t: prepare_target(data_dir, summary, t, args.seed) for t in targets}
    jobs = [(configs[t].to_json(), str(target_dir(data_dir, configs[t])), d, pretrained[d]["folder"], mode)
            for t in targets for d in domains for mode in MODES]
    jobs.sort(key=lambda j: (j[2] != "card_transactions", j[4] == "frozen"))  # the longest jobs first
    results: dict[tuple[str, str, str], dict] = {}
    with context.Pool(args.workers) as pool:
        for result in pool.imap_unordered(_fine_tune, jobs):
            results[(result["target"], result["domain"], result["mode"])] = result
            print(f"  {result['target']:<13} {result['domain']:<22} {result['mode']:<10} "
                  f"{result['seconds']:6.1f} s test {result['test']:.4f}", flush=True)
    text, results_json = summarise(targets, domains, configs, results, pretrained, pretrain_wall, cutoff,
                                   args)
    # Every learning curve, also with --no-write (bench/results keeps them only for the recorded run).
    (data_dir / "bench-pretrain.json").write_text(json.dumps(results_json, indent=2))
    return text, results_json


def summarise(targets: list[str], domains: list[str], configs: dict[str, RunConfig], results: dict,
              pretrained: dict, pretrain_wall: float, cutoff: str, args: argparse.Namespace
              ) -> tuple[str, dict[str, Any]]:
    lines = [f"Pretraining (CoLES, events before {cutoff}, {args.pretrain_epochs} epochs, "
             f"{args.workers} processes): {pretrain_wall:.0f} s wall; "
             + ", ".join(f"{d} {p['seconds']:.0f} s (view accuracy {p['history'][-1]['accuracy']:.2f})"
                         for d, p in sorted(pretrained.items())),
             "",
             "Epochs: scratch's best epoch, and the epoch at which the pretrained encoder first reaches "
             "scratch's best valid metric (fine-tuned / frozen). Test metric of each.",
             "",
             "| target | domain | metric | scratch best epoch | fine-tuned reaches it | frozen reaches it "
             "| scratch test | fine-tuned test | frozen test |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows = []
    for target in targets:
        metric = configs[target].metric
        for domain in domains:
            runs = {mode: results[(target, domain, mode)] for mode in MODES}
            scratch_epoch, scratch_best = best_epoch(runs["scratch"]["history"], metric)
            row: dict[str, Any] = {"target": target, "domain": domain, "metric": metric,
                                   "scratch_best_epoch": scratch_epoch, "scratch_best_valid": scratch_best}
            for mode, run in runs.items():
                history = run["history"]
                row[mode] = {"history": history, "test": run["test"], "seconds": round(run["seconds"], 1),
                             "epochs": len(history), "best_valid": best_epoch(history, metric)[1],
                             "reaches_scratch_best": epochs_to_reach(history, scratch_best, metric)}
            rows.append(row)
            reach = [row[m]["reaches_scratch_best"] or "never" for m in MODES[1:]]
            tests = " | ".join(f"{runs[m]['test']:.4f}" for m in MODES)
            lines.append(f"| {target} | {domain} | {metric} | {scratch_epoch} | {reach[0]} | {reach[1]} "
                         f"| {tests} |")
    stats: dict[str, Any] = {}
    scratch_seconds = sum(r["scratch"]["seconds"] for r in rows)
    for mode in MODES[1:]:
        reached = [r for r in rows if r[mode]["reaches_scratch_best"] is not None]
        ratios = [r[mode]["reaches_scratch_best"] / r["scratch_best_epoch"] for r in reached]
        stats[mode] = {
            "reached": len(reached),
            "at_most_half": sum(ratio <= 0.5 for ratio in ratios),
            "median_epochs_ratio": float(np.median(ratios)) if ratios else None,
            "better_test": sum(is_better(r["metric"], r[mode]["test"], r["scratch"]["test"]) for r in rows),
            "seconds": round(sum(r[mode]["seconds"] for r in rows), 1),
        }
        lines += ["", f"{mode.capitalize()}: reached scratch's best valid metric in {len(reached)} of "
                  f"{len(rows)} cases, in at most half scratch's epochs in {stats[mode]['at_most_half']} "
                  f"(median epochs ratio {stats[mode]['median_epochs_ratio'] or float('nan'):.2f}); better "
                  f"test metric in {stats[mode]['better_test']} of {len(rows)}; training "
                  f"{stats[mode]['seconds']:.0f} s in all vs {scratch_seconds:.0f} s from scratch."]
    lines += ["", "Same params, seed and rows in every mode; max_epochs and patience are a run's defaults."]
    results_json = {"clients": args.clients, "cutoff": cutoff, "pretrain_epochs": args.pretrain_epochs,
                    "pretrain_wall_s": round(pretrain_wall, 1),
                    "pretrain": {d: {"seconds": round(p["seconds"], 1), "history": p["history"]}
                                 for d, p in pretrained.items()},
                    "rows": rows, "summary": stats}
    return "\n".join(lines), results_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=DEMO_CLIENTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--pretrain-clients", type=int, default=None, help="pretrain on a subset of clients")
    parser.add_argument("--targets", default=",".join(TASKS))
    parser.add_argument("--no-write", action="store_true", help="do not update bench/results and docs")
    args = parser.parse_args()
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    text, results = run(args)
    results["seconds"] = round(time.perf_counter() - started, 1)
    # Wall times mean little on a shared machine; say how busy it was (epochs and metrics do not change).
    results["load_1min_end"] = os.getloadavg()[0]
    text += (f"\n\nWhole benchmark: {results['seconds']:.0f} s; 1-minute load average {load_start:.1f} at "
             f"the start, {results['load_1min_end']:.1f} at the end.")
    print(text)
    if not args.no_write:
        from _report import write_result

        write_result("pretrain", results, text)


if __name__ == "__main__":
    main()
