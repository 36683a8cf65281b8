"""End-to-end training on the demo data: every pipeline step, domains in parallel processes, vs the oracle.

Generates the demo (marts + samples) into the data directory when it is missing, then runs
validate_split → (extract, train) per domain in a process pool → blend → evaluate → register,
and prints each step's wall time, the encoders' throughput and the report's metrics next to the oracle.

    python bench/train_demo.py [--clients 20000] [--seed 0] [--data-dir DIR] [--workers 3]
                               [--sample default_12m] [--params '{"default": {"hidden": 64}}'] [--no-write]
                               [--pretrain-epochs 12 [--reuse-pretrained]]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anna_models import pipeline  # noqa: E402
from anna_models.config import DEFAULT_METRIC, DEMO_CLIENTS, RunConfig, StepContext  # noqa: E402

TASKS = {"default_12m": "binary", "product_next": "multiclass", "spend_3m": "regression"}
GOAL_SECONDS = 600


def ensure_demo(data_dir: Path, clients: int, seed: int) -> dict[str, Any]:
    """The demo's summary; generated (seconds for 20k clients) when absent, of another size or seed, or
    written by another version of the generator."""
    import hashlib

    from anna_models import demo_data

    digest = hashlib.sha1()
    for source in sorted(Path(demo_data.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    generator = digest.hexdigest()[:12]
    stamp = data_dir / "demo" / "bench-summary.json"
    if stamp.exists():
        summary = json.loads(stamp.read_text())
        if (summary["clients"], summary["seed"], summary.get("generator")) == (clients, seed, generator):
            return summary
    print(f"generating the demo ({clients} clients) into {data_dir} ...", flush=True)
    summary = demo_data.generate_demo(data_dir, clients=clients, seed=seed)
    summary["generator"] = generator
    stamp.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _per_domain(args: tuple[str, str, str]) -> dict[str, float]:
    """One worker: extract and train one domain; returns step seconds and the training throughput."""
    config_json, run_dir, domain = args
    ctx = StepContext(run_dir=Path(run_dir), config=RunConfig.from_json(config_json))
    timings: dict[str, float] = {}
    for step in pipeline.PER_DOMAIN:
        started = time.perf_counter()
        step(ctx, domain)
        timings[pipeline.step_name(step, domain)] = time.perf_counter() - started
    marker = json.loads(pipeline.marker_path(ctx.run_dir, f"train.{domain}").read_text())
    timings[f"{domain}.events_per_s"] = marker["events_per_s"]
    timings[f"{domain}.predict_clients_per_s"] = marker["predict_clients_per_s"]
    timings[f"{domain}.epochs"] = marker["epochs"]
    return timings


def pretrain_worker(args: tuple[str, str, dict, int | None]) -> dict[str, Any]:
    """One worker: pretrain one domain, save it to a folder; returns the folder, seconds and history."""
    from anna_models.coles import ColesParams
    from anna_models.pretrain import pretrain_domain, save_encoder

    mart_path, cutoff, coles, clients = args
    started = time.perf_counter()
    encoder, history = pretrain_domain(Path(mart_path), before=cutoff, params=ColesParams(**coles),
                                       clients=clients)
    seconds = time.perf_counter() - started
    folder = save_encoder(encoder, Path(mart_path).parents[1] / "pretrained" / Path(mart_path).name)
    return {"domain": encoder.domain, "folder": str(folder), "seconds": seconds, "history": history}


def pretrain_domains(data_dir: Path, summary: dict[str, Any], cutoff: str, epochs: int, seed: int,
                     workers: int, tracking_uri: str) -> dict[str, Any]:
    """Pretrain every domain's encoder on its events strictly before ``cutoff`` (domains in parallel
    processes) and register each in ``tracking_uri``, where the run's train step finds it as a user's
    run would. Returns per domain the seconds and the last epoch's view accuracy."""
    from anna_models.pretrain import load_encoder, log_encoder

    domains = sorted(summary["mart_versions"])
    jobs = [(str(data_dir / "marts" / d), cutoff, {"epochs": epochs, "seed": seed}, None) for d in domains]
    print(f"pretraining {', '.join(domains)} on events before {cutoff}, {epochs} epochs ...", flush=True)
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        done = {r["domain"]: r for r in pool.imap_unordered(pretrain_worker, jobs)}
    for domain, result in sorted(done.items()):
        log_encoder(load_encoder(Path(result["folder"])), tracking_uri)
        print(f"  pretrain.{domain:<19} {result['seconds']:7.1f} s, view accuracy "
              f"{result['history'][-1]['accuracy']:.3f}", flush=True)
    return {d: {"seconds": round(r["seconds"], 1), "view_accuracy": r["history"][-1]["accuracy"]}
            for d, r in sorted(done.items())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / f"anna-demo-{args.clients}-{args.seed}")
    summary = ensure_demo(data_dir, args.clients, args.seed)
    task_type = TASKS[args.sample]
    sample = pd.read_csv(data_dir / "demo" / "samples" / f"{args.sample}.csv", parse_dates=["report_date"])
    sample_path = data_dir / "samples" / f"bench-{args.sample}.parquet"
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    sample.to_parquet(sample_path, index=False)
    (data_dir / "mlflow").mkdir(exist_ok=True)
    # A store of its own with pretrained encoders: runs without them must not find them.
    store = "with-pretrained.db" if args.pretrain_epochs else "mlflow.db"
    tracking_uri = f"sqlite:///{(data_dir / 'mlflow' / store).resolve()}"
    pretrained: dict[str, Any] = {}
    if args.pretrain_epochs:
        t = time.perf_counter()
        cutoff = str(sample["report_date"].min().date())  # every row's events before it are allowed
        stamp = data_dir / "pretrained" / "bench-stamp.json"
        wanted = {"epochs": args.pretrain_epochs, "seed": args.seed, "cutoff": cutoff}
        if args.reuse_pretrained and stamp.exists() and json.loads(stamp.read_text())["wanted"] == wanted:
            pretrained = json.loads(stamp.read_text())["pretrained"]
            print(f"reusing the encoders pretrained and registered by an earlier call ({stamp})", flush=True)
        else:
            pretrained = pretrain_domains(data_dir, summary, cutoff, args.pretrain_epochs, args.seed,
                                          args.workers, tracking_uri)
            pretrained["(parallel)"] = {"seconds": round(time.perf_counter() - t, 1), "cutoff": cutoff}
            stamp.write_text(json.dumps({"wanted": wanted, "pretrained": pretrained}, indent=2))
    run_id = int(time.time())
    config = RunConfig(
        run_id=run_id,
        task_name=f"bench-{args.sample}",
        task_type=task_type,
        metric=DEFAULT_METRIC[task_type],
        domains=sorted(summary["mart_versions"]),
        sample_path=str(sample_path),
        sample_fingerprint="bench",
        marts_root=str(data_dir / "marts"),
        mart_versions=summary["mart_versions"],
        tracking_uri=tracking_uri,
        params=json.loads(args.params),
        seed=args.seed,
    )
    ctx = StepContext(run_dir=data_dir / "runs" / f"bench-{run_id}", config=config)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, fn: Any, *a: Any) -> None:
        t = time.perf_counter()
        fn(*a)
        timings[name] = time.perf_counter() - t
        print(f"  {name:<28} {timings[name]:7.1f} s", flush=True)

    for step in pipeline.PRE:
        timed(pipeline.step_name(step), step, ctx)
    t = time.perf_counter()
    jobs = [(config.to_json(), str(ctx.run_dir), d) for d in config.domains]
    # spawn: a forked child would inherit this process's torch thread pool state.
    with multiprocessing.get_context("spawn").Pool(min(args.workers, len(jobs))) as pool:
        for result in pool.imap_unordered(_per_domain, jobs):
            timings.update(result)
            for name, value in result.items():
                print(f"  {name:<28} {value:9.1f}", flush=True)
    timings["domains (parallel)"] = time.perf_counter() - t
    print(f"  {'domains (parallel)':<28} {timings['domains (parallel)']:7.1f} s", flush=True)
    for step in pipeline.POST:
        timed(pipeline.step_name(step), step, ctx)
    total = time.perf_counter() - started
    report = json.loads((ctx.run_dir / "report.json").read_text())
    return {
        "summary": summary,
        "timings": timings,
        "total": total,
        "report": report,
        "config": config,
        "run_dir": ctx.run_dir,
        "data_dir": data_dir,
        "pretrained": pretrained,
    }


def oracle_scores(result: dict[str, Any], data_dir: Path, sample: str) -> dict[str, float | None]:
    """The oracle's metric over the whole sample (oracle.json) and on this run's test rows (demo/truth)."""
    from anna_models.metrics import compute_metric

    config, run_dir = result["config"], result["run_dir"]
    whole = result["summary"].get("oracle", {}).get(sample, {}).get(config.metric)
    truth_path = data_dir / "demo" / "truth" / f"{sample}.parquet"
    if not truth_path.exists():
        return {"whole": whole, "test": None}
    truth = pd.read_parquet(truth_path)
    truth["report_date"] = pd.to_datetime(truth["report_date"]).astype("datetime64[s]")
    split = pd.read_parquet(run_dir / "split.parquet")
    test = split[split["part"] == "test"].merge(truth, on=["client_id", "report_date"], how="left")
    if config.task_type == "binary":
        score = 1 / (1 + np.exp(-test["truth"].to_numpy()))
    elif config.task_type == "multiclass":
        classes = json.loads((run_dir / "split.json").read_text())["classes"]
        score = test[[f"truth_{c}" for c in classes]].to_numpy()
    else:
        score = test["truth"].to_numpy()
    return {"whole": whole, "test": compute_metric(config.metric, test["y"].to_numpy(), score)}


def measure_throughput(run_dir: Path, domain: str, threads: int) -> dict[str, float]:
    """One process with ``threads`` threads, default GRU encoder: training events/s, inference clients/s."""
    import torch

    from anna_models.config import TrainParams
    from anna_models.sequences import Sequences
    from anna_models.training import predict, train_domain_encoder

    source = run_dir / "extract" / domain
    train, test = Sequences.load(source / "train.npz"), Sequences.load(source / "test.npz")
    split = pd.read_parquet(run_dir / "split.parquet")
    y = split.loc[split["part"] == "train", "y"].to_numpy()
    manifest = json.loads((source / "manifest.json").read_text())
    params = TrainParams(max_epochs=2, threads=threads)
    model, history = train_domain_encoder(
        train,
        y,
        test,
        np.zeros(test.n_rows),
        task_type="binary",
        metric="log_loss",
        classes=[0, 1],
        manifest=manifest,
        params=params,
    )
    torch.set_num_threads(threads)
    started = time.perf_counter()
    predict(model, test)
    seconds = time.perf_counter() - started
    return {
        "events_per_s": history[-1]["events_per_s"],  # the second epoch: allocator and caches warm
        "mean_length": float(train.lengths.mean()),
        "clients_per_s": test.n_rows / seconds,
        "inference_events_per_s": test.n_events / seconds,
    }


def measure_scoring(result: dict[str, Any], threads: int) -> dict[str, float]:
    """Retro-inference speed: the score sample through the packaged ensemble, marts opened beforehand."""
    import torch

    from anna_models.pyfunc import load_ensemble

    torch.set_num_threads(threads)
    ensemble = load_ensemble(result["run_dir"] / "package")
    frame = pd.read_csv(result["data_dir"] / "demo" / "samples" / "default_12m_score.csv")
    ensemble.score_frame(frame.head(10))  # opens the marts once, as a serving process does
    started = time.perf_counter()
    ensemble.score_frame(frame)
    seconds = time.perf_counter() - started
    return {"rows": len(frame), "seconds": round(seconds, 3), "clients_per_s": len(frame) / seconds}


def stopped_on(entry: dict[str, Any]) -> str:
    """Where a model's trials were compared: "valid" or "N stopping rows" (report.json's ``stopping``)."""
    stopping = entry.get("stopping") or {"on": "valid"}
    return "valid" if stopping["on"] == "valid" else f"{stopping['rows']:,} stopping rows"


def summarise(result: dict[str, Any], sample: str, throughput: dict[str, dict]) -> tuple[str, dict[str, Any]]:
    """Markdown table and JSON results: per domain and blended metrics, oracle, timings, throughput."""
    report, metric = result["report"], result["config"].metric
    oracle = oracle_scores(result, result["data_dir"], sample)
    lines = [f"| model | valid {metric} | test {metric} |", "| --- | --- | --- |"]
    for domain, entry in report["domains"].items():
        valid, test = entry["valid"]["metrics"][metric], entry["test"]["metrics"][metric]
        lines.append(f"| {domain} | {valid:.4f} | {test:.4f} |")
    if "fusion" in report:
        fusion = report["fusion"]
        lines.append(
            f"| fusion (all domains) | {fusion['valid']['metrics'][metric]:.4f} | "
            f"{fusion['test']['metrics'][metric]:.4f} |"
        )
    if "lightgbm" in report:
        boosted = report["lightgbm"]
        lines.append(f"| LightGBM (aggregates of all domains) | {boosted['valid']['metrics'][metric]:.4f} | "
                     f"{boosted['test']['metrics'][metric]:.4f} |")
    blended = report["blend"]["test"]["metrics"][metric]
    lines.append(f"| **blend** | {report['blend']['valid']['metrics'][metric]:.4f} | **{blended:.4f}** |")
    if oracle["test"] is not None:
        lines.append(f"| oracle (same test rows) | | {oracle['test']:.4f} |")
    if oracle["whole"] is not None:
        lines.append(f"| oracle (whole sample, oracle.json) | | {oracle['whole']:.4f} |")
    best_single = max(e["test"]["metrics"][metric] for e in report["domains"].values())
    timings = result["timings"]
    steps = {k: v for k, v in timings.items() if "_per_s" not in k and not k.endswith(".epochs")}
    gap = "".join(f"; oracle ({k}) − blend = {v - blended:+.4f}" for k, v in oracle.items() if v is not None)
    if oracle["test"] is not None and "lightgbm" in report:  # the peer's gap, on the same rows
        boosted_test = report["lightgbm"]["test"]["metrics"][metric]
        gap += f"; oracle (test) − LightGBM = {oracle['test'] - boosted_test:+.4f}"
    lines += [
        "",
        f"Wall time {result['total']:.0f} s (goal < {GOAL_SECONDS} s); "
        f"blend − best single domain = {blended - best_single:+.4f}{gap}",
        "",
        "Steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()),
    ]
    if throughput:
        lines += [
            "",
            f"Throughput (one process, {result['threads']} thread(s), GRU hidden 64, after the run): "
            + "; ".join(
                f"{d}: train {t['events_per_s']:,.0f} events/s (mean length {t['mean_length']:.0f}), "
                f"inference {t['clients_per_s']:,.0f} clients/s"
                for d, t in throughput.items()
            ),
        ]
    if result.get("scoring"):
        lines += [
            "",
            f"Scoring through the packaged ensemble (extraction + the models the blender reads + blender), "
            f"{result['threads']} thread(s): {result['scoring']['clients_per_s']:,.0f} clients/s "
            f"on {result['scoring']['rows']:,} rows",
        ]
    fusion_trials = report.get("fusion", {}).get("trials", [])
    lines += [
        "",
        "Encoder start chosen by each domain's search: " + ", ".join(
            f"{d} {next((t['init'] for t in e.get('trials', []) if t.get('chosen')), 'scratch')}"
            for d, e in report["domains"].items())
        + ("; pretrained (CoLES, once per mart, not in the wall time): " + ", ".join(
            f"{d} {v['seconds']:.0f} s" for d, v in result["pretrained"].items())
           if result["pretrained"] else "; no pretrained encoders registered"),
        "",
        *([f"Fusion model's trials ({metric} on {stopped_on(report.get('fusion', {}))}): " + "; ".join(
            f"{t['init']} {t['best_valid_metric']:.4f}{' (chosen)' if t.get('chosen') else ''}"
            for t in fusion_trials), ""] if len(fusion_trials) > 1 else []),
        f"Split: {report['split']['kind']}, rows "
        + ", ".join(f"{p} {v['rows']}" for p, v in report["split"]["parts"].items()),
    ]
    results = {
        "clients": result["summary"]["clients"],
        "seconds": round(result["total"], 1),
        "metric": metric,
        "blend_test": blended,
        "best_single_test": best_single,
        "oracle": oracle,
        "throughput": throughput,
        "scoring": result.get("scoring"),
        "domains_test": {d: e["test"]["metrics"][metric] for d, e in report["domains"].items()},
        "fusion_test": report.get("fusion", {}).get("test", {}).get("metrics", {}).get(metric),
        "lightgbm_test": report.get("lightgbm", {}).get("test", {}).get("metrics", {}).get(metric),
        "pretrained": result["pretrained"],
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    return "\n".join(lines), results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=DEMO_CLIENTS,
                        help="demo size; another size than the default writes a section of its own "
                             "(e.g. train_demo_default_12m_100k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sample", default="default_12m", choices=sorted(TASKS))
    parser.add_argument("--params", default="{}", help="RunConfig.params as JSON")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/results and docs")
    parser.add_argument("--no-throughput", action="store_true", help="skip the speed check")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the speed check")
    parser.add_argument("--pretrain-epochs", type=int, default=0,
                        help="first pretrain every domain's encoder (CoLES) for this many epochs and "
                             "register it, so the run's search may start from it; results go to a section "
                             "of their own")
    parser.add_argument("--reuse-pretrained", action="store_true",
                        help="with --pretrain-epochs: skip pretraining when an earlier call pretrained "
                             "and registered the encoders with the same epochs, seed and cutoff")
    args = parser.parse_args()
    result = run(args)
    result["threads"] = args.threads
    throughput = {}
    if not args.no_throughput:
        for domain in result["config"].domains:
            throughput[domain] = measure_throughput(result["run_dir"], domain, args.threads)
        result["scoring"] = measure_scoring(result, args.threads)
    text, results = summarise(result, args.sample, throughput)
    print(text)
    if not args.no_write:
        from _report import write_result

        suffix = "_pretrained" if args.pretrain_epochs else ""
        if args.clients != DEMO_CLIENTS:  # a larger (or smaller) demo gets a section of its own
            suffix += f"_{args.clients // 1000}k" if args.clients % 1000 == 0 else f"_{args.clients}"
        write_result(f"train_demo_{args.sample}{suffix}", results, text)


if __name__ == "__main__":
    main()
