"""Domain encoders on a GPU (bf16 autocast) against the same machine's CPU: speed and validation metric.

Generates the demo when missing, splits and extracts every domain, then trains each domain's encoder
(the run's default parameters, early stopping on the valid metric) once per variant, one after another,
and times inference on the test rows. Prints a markdown table; ``--out`` also writes results.json.

    python bench/train_gpu.py [--clients 20000] [--seed 0] [--data-dir DIR] [--cpu-threads N]
                              [--gpu-batch-sizes 128,512] [--no-cpu] [--out DIR]

Columns: training events/s (median over epochs after the first, whose cuDNN set-up is not steady
state), inference clients/s (median of three passes over the test rows after one warm-up), the best
valid metric, and the share of an epoch's time that producing its batches alone takes (the rest is
forward, backward and the optimiser step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anna_models import pipeline  # noqa: E402
from anna_models.config import DEFAULT_METRIC, RunConfig, StepContext, TrainParams  # noqa: E402


def prepare(args: argparse.Namespace) -> StepContext:
    """The demo's split and every domain's extracts, in a run folder of their own (re-used when present)."""
    import pandas as pd
    from train_demo import ensure_demo

    data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / f"anna-demo-{args.clients}-{args.seed}")
    summary = ensure_demo(data_dir, args.clients, args.seed)
    sample = pd.read_csv(data_dir / "demo" / "samples" / "default_12m.csv", parse_dates=["report_date"])
    sample_path = data_dir / "samples" / "gpu-default_12m.parquet"
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    sample.to_parquet(sample_path, index=False)
    config = RunConfig(
        run_id=0, task_name="gpu-default_12m", task_type="binary", metric=DEFAULT_METRIC["binary"],
        domains=sorted(summary["mart_versions"]), sample_path=str(sample_path), sample_fingerprint="bench",
        marts_root=str(data_dir / "marts"), mart_versions=summary["mart_versions"],
        tracking_uri="sqlite:///unused.db", seed=args.seed,
    )
    ctx = StepContext(run_dir=data_dir / "runs" / "gpu-bench", config=config)
    pipeline.validate_split(ctx)
    for domain in config.domains:
        pipeline.extract(ctx, domain)
    return ctx


def loader_seconds(seqs: Any, params: TrainParams, device: str, seed: int) -> float:
    """One epoch's batches produced and placed on ``device`` with no model: the data-loading time."""
    import torch

    from anna_models.batching import plan_batches
    from anna_models.devices import resolve_device
    from anna_models.training import _Tables, model_config

    dev = resolve_device(device)
    config = model_config({"d": seqs}, {}, params, task_type="binary", classes=[0, 1], y_train=np.zeros(1))
    tables = _Tables({"d": seqs}, config, dev)
    plan = plan_batches(tables.lengths, batch_size=params.batch_size, rng=np.random.default_rng(seed))
    for _ in range(2):  # the first pass pays allocator and cache warm-up
        started = time.perf_counter()
        for _rows, _batches in tables.batches(plan):
            pass
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - started
    return seconds


def measure(ctx: StepContext, domain: str, *, device: str, threads: int, batch_size: int) -> dict[str, Any]:
    """Train one domain's encoder on ``device``; time it, inference, and data loading alone."""
    import torch

    from anna_models.training import predict, train_domain_encoder

    seqs, manifest = pipeline._load_extracts(ctx, domain)
    y = pipeline._targets(ctx)
    params = replace(pipeline.domain_params(ctx, domain), threads=threads, batch_size=batch_size)
    started = time.perf_counter()
    model, history = train_domain_encoder(
        seqs["train"], y["train"], seqs["valid"], y["valid"], task_type="binary", metric=ctx.config.metric,
        classes=[0, 1], manifest=manifest, params=params, device=device, seed=ctx.config.seed,
    )
    train_seconds = time.perf_counter() - started
    steady = [h["events_per_s"] for h in history[1:]] or [history[0]["events_per_s"]]
    epoch_seconds = float(np.median([h["seconds"] for h in history[1:]] or [history[0]["seconds"]]))
    torch.set_num_threads(threads)
    test = seqs["test"]
    predict(model, test, device=device)
    passes = []
    for _ in range(3):
        t = time.perf_counter()
        predict(model, test, device=device)
        passes.append(time.perf_counter() - t)
    loading = loader_seconds(seqs["train"], params, device, ctx.config.seed)
    return {
        "domain": domain, "device": device, "threads": threads, "batch_size": batch_size,
        "epochs": len(history), "train_seconds": round(train_seconds, 2),
        "events_per_s": float(np.median(steady)), "clients_per_s": test.n_rows / float(np.median(passes)),
        "valid_metric": max(h["valid_metric"] for h in history),
        "loading_share": loading / max(epoch_seconds, 1e-9),
        "mean_length": float(seqs["train"].lengths.mean()),
    }


def check_cuda(ctx: StepContext, domain: str) -> list[str]:
    """CUDA (bf16 autocast) against CPU float32 on the same weights, per architecture; one CUDA epoch each."""
    import torch

    from anna_models.encoders import DomainModel
    from anna_models.training import model_config, predict, train_domain_encoder

    seqs, manifest = pipeline._load_extracts(ctx, domain)
    y = pipeline._targets(ctx)
    gru = torch.nn.GRU(8, 8, batch_first=True).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bare = gru(torch.randn(4, 5, 8, device="cuda"))[0].dtype
    lines = [f"a bare cuDNN GRU under bf16 autocast returns {bare}"]
    for architecture in ("gru", "lstm", "transformer"):
        params = replace(pipeline.domain_params(ctx, domain), architecture=architecture, max_epochs=1)
        torch.manual_seed(0)
        config = model_config({domain: seqs["valid"]}, {domain: manifest}, params, task_type="binary",
                              classes=[0, 1], y_train=y["train"])
        model = DomainModel(config).eval()
        out_cpu, emb_cpu = predict(model, seqs["valid"])
        out_gpu, emb_gpu = predict(model, seqs["valid"], device="cuda")
        home = next(model.parameters()).device
        rel = np.linalg.norm(emb_gpu - emb_cpu) / np.linalg.norm(emb_cpu)
        trained, history = train_domain_encoder(
            seqs["train"], y["train"], seqs["valid"], y["valid"], task_type="binary",
            metric=ctx.config.metric, classes=[0, 1], manifest=manifest, params=params, device="cuda", seed=0,
        )
        finite = all(np.isfinite(p.detach().numpy()).all() for p in trained.parameters())
        lines.append(
            f"{architecture}: embeddings cuda-bf16 vs cpu-fp32 rel err {rel:.2e}, outputs max abs diff "
            f"{np.abs(out_gpu - out_cpu).max():.2e}, model back on {home}; one CUDA epoch: loss "
            f"{history[0]['train_loss']:.4f}, valid {history[0]['valid_metric']:.4f}, finite weights {finite}"
        )
    return lines


def table(rows: list[dict[str, Any]], metric: str) -> str:
    lines = [
        f"| domain | device | batch | train events/s | inference clients/s | valid {metric} | epochs "
        "| loading share |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        where = f"CPU, {r['threads']} threads" if r["device"] == "cpu" else f"{r['device']} bf16"
        lines.append(
            f"| {r['domain']} | {where} | {r['batch_size']} | {r['events_per_s']:,.0f} "
            f"| {r['clients_per_s']:,.0f} "
            f"| {r['valid_metric']:.4f} | {r['epochs']} | {r['loading_share']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu-batch-sizes", default="128", help="comma-separated training batch sizes")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU reference")
    parser.add_argument("--out", default=None, help="folder for results.json")
    args = parser.parse_args()
    import torch

    ctx = prepare(args)
    if torch.cuda.is_available():
        for line in check_cuda(ctx, ctx.config.domains[0]):
            print(line, flush=True)
    variants: list[tuple[str, int, int]] = []
    if not args.no_cpu:
        variants.append(("cpu", args.cpu_threads, TrainParams.batch_size))
    if torch.cuda.is_available():
        variants += [("cuda", 1, int(b)) for b in args.gpu_batch_sizes.split(",")]
    rows = []
    for domain in ctx.config.domains:
        for device, threads, batch_size in variants:
            rows.append(measure(ctx, domain, device=device, threads=threads, batch_size=batch_size))
            print(json.dumps(rows[-1]), flush=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    header = (f"{platform.machine()}, {os.cpu_count()} cores, GPU {gpu}, torch {torch.__version__}, "
              f"{args.clients:,} clients, GRU hidden 64")
    text = f"{header}\n\n{table(rows, ctx.config.metric)}"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps({"machine": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
