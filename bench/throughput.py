"""Issue 4's throughput benchmark: ANNA's encoder beside a ptls encoder of the same shape, on the same data.

Two datasets: the demo's card_transactions extracts for the default_12m sample (heavy-tailed lengths) and
a synthetic one with uniform lengths (Poisson events per client, a binary target that the amounts
reveal, 80/20 split).
Both sides: GRU hidden 64, the same embedding widths, a projection to 64 and last/max/mean pooling, then
Linear-ReLU-Dropout-Linear; AdamW at the same learning rate; batch size 128; CPU, ``--threads`` threads.
ANNA trains through ``anna_models.training.train_domain_encoder`` (length-bucketed batches of its
``EventTable``) and infers through ``predict``; the ``anna_torch_gru`` side is the same with torch's GRU
instead of ``anna_models.fused_gru`` (as on a machine without a C compiler). ptls trains in a plain loop
over a ``SeqToTargetDataset`` whose ``collate_fn`` pads a random batch to its longest row, as a ptls
user would, and infers over the same dataset in order, ``PTLS_PREDICT_BATCH`` rows a batch (ANNA plans
its own inference batches by length).

    python bench/throughput.py [--clients 20000] [--uniform-clients 50000] [--uniform-mean-length 200]
                               [--epochs 2] [--threads 2] [--passes 3] [--seed 0] [--data-dir DIR]
                               [--skip demo|uniform] [--no-write]

Columns: training events/s (real events of the epoch / the epoch's seconds, median of epochs after the
first), inference clients/s (median of ``--passes`` passes over the validation rows), validation ROC-AUC
after the last epoch, and the model share: the share of an epoch spent in forward, backward and the
optimiser step, the rest being the data path producing batches (timed inside the same epochs). ptls gets one
zero event for a client without history, since its encoders reject empty rows; such events are not counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anna_models.config import DEMO_CLIENTS, TrainParams  # noqa: E402
from anna_models.sequences import TIME_FEATURES, Sequences  # noqa: E402

DOMAIN = "card_transactions"
TARGETS = {"train_demo": 3.0, "train_uniform": 1.3, "inference": 5.0}
# ptls's inference batch: ANNA's former fixed batch. Larger ones are no faster for ptls: every random batch of
# heavy-tailed rows pads to the longest anyway, and wider steps fall out of the CPU's caches.
PTLS_PREDICT_BATCH = 512


@dataclass
class Dataset:
    """One benchmark dataset: train and validation rows of one domain, binary targets."""

    name: str
    train: Sequences
    y_train: np.ndarray
    valid: Sequences
    y_valid: np.ndarray
    manifest: dict
    params: TrainParams


def demo_dataset(args: argparse.Namespace, params: TrainParams) -> Dataset:
    """card_transactions' train/valid extracts of the demo's default_12m sample (the demo made if missing)."""
    import pandas as pd
    from train_demo import ensure_demo

    from anna_models import pipeline
    from anna_models.config import DEFAULT_METRIC, RunConfig, StepContext

    data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / f"anna-demo-{args.clients}-{args.seed}")
    summary = ensure_demo(data_dir, args.clients, args.seed)
    sample_path = data_dir / "samples" / "throughput-default_12m.parquet"
    sample_path.parent.mkdir(parents=True, exist_ok=True)
    pd.read_csv(data_dir / "demo" / "samples" / "default_12m.csv", parse_dates=["report_date"]).to_parquet(
        sample_path, index=False
    )
    config = RunConfig(
        run_id=0, task_name="throughput-default_12m", task_type="binary", metric=DEFAULT_METRIC["binary"],
        domains=[DOMAIN], sample_path=str(sample_path), sample_fingerprint="bench",
        marts_root=str(data_dir / "marts"), mart_versions=summary["mart_versions"],
        tracking_uri="sqlite:///unused.db", seed=args.seed,
    )
    # The generator's hash in the folder name: the steps' markers would otherwise keep stale extracts.
    run_dir = data_dir / "runs" / f"throughput-{summary.get('generator', 'x')}"
    ctx = StepContext(run_dir=run_dir, config=config)
    pipeline.validate_split(ctx)
    pipeline.extract(ctx, DOMAIN)
    seqs, manifest = pipeline._load_extracts(ctx, DOMAIN)
    y = pipeline._targets(ctx)
    base = pipeline.domain_params(ctx, DOMAIN)
    return Dataset(f"demo {DOMAIN} (default_12m)", seqs["train"], y["train"], seqs["valid"], y["valid"],
                   manifest, replace(params, max_len=base.max_len))


def uniform_dataset(clients: int, mean_length: float, seed: int, params: TrainParams) -> Dataset:
    """``clients`` clients with Poisson(``mean_length``) events: 3 categorical and 2 numeric features,
    time features from exponential gaps, a binary target drawn from a hidden per-client trait that also
    shifts the client's amounts; the first 80% train, the rest valid."""
    rng = np.random.default_rng(seed)
    lengths = rng.poisson(mean_length, clients).astype(np.int64)
    trait = rng.standard_normal(clients)
    offsets = np.zeros(clients + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n = int(offsets[-1])
    gaps = rng.exponential(2.0, n).astype(np.float32)  # days between events
    row = np.repeat(np.arange(clients), lengths)
    gaps[offsets[:-1][lengths > 0]] = 0.0  # a row's first event has no previous one
    elapsed = np.cumsum(gaps, dtype=np.float64)
    elapsed -= elapsed[offsets[:-1][row]]  # days since the row's first event
    days_before = elapsed[offsets[1:][row] - 1] - elapsed + 1.0  # the report date is a day after the last
    hour = rng.integers(0, 24, n).astype(np.float32) / 24
    weekday = rng.integers(0, 7, n).astype(np.float32) / 7
    time_features = np.stack([np.log1p(days_before), np.log1p(gaps), hour, weekday], axis=1, dtype=np.float32)
    seqs = Sequences(
        offsets=offsets,
        categorical={
            "mcc": rng.zipf(1.5, n).clip(1, 199).astype(np.int32),
            "channel": rng.integers(1, 6, n).astype(np.int32),
            "currency": rng.integers(1, 12, n).astype(np.int32),
        },
        # The target is learnable, so the sides' validation metrics can be compared: a hidden trait per
        # client shifts its amounts a little (event noise dominates) and sets the odds of the target.
        numeric={"amount": (rng.standard_normal(n) + 0.25 * trait[row]).astype(np.float32),
                 "balance": rng.standard_normal(n).astype(np.float32)},
        time_features=time_features,
    )
    y = (rng.random(clients) < 1 / (1 + np.exp(-1.5 * trait))).astype(np.float64)
    cut = int(clients * 0.8)
    train_rows, valid_rows = np.arange(cut), np.arange(cut, clients)
    return Dataset(f"uniform Poisson({mean_length:g}), {clients:,} clients", seqs.take(train_rows), y[:cut],
                   seqs.take(valid_rows), y[cut:], {}, params)


def run_anna(data: Dataset, passes: int, seed: int) -> dict[str, Any]:
    """Train and infer with ANNA's own code paths; the model share comes from the training history."""
    import torch

    from anna_models.training import predict, train_domain_encoder

    model, history = train_domain_encoder(
        data.train, data.y_train, data.valid, data.y_valid, task_type="binary", metric="roc_auc",
        classes=[0, 1], manifest=data.manifest, params=data.params, device="cpu", seed=seed,
    )
    steady = history[1:] or history
    torch.set_num_threads(data.params.threads)
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        predict(model, data.valid)
        seconds.append(time.perf_counter() - started)
    epoch_seconds = float(np.median([h["seconds"] for h in steady]))
    return {
        "events_per_s": float(np.median([h["events_per_s"] for h in steady])),
        "epoch_seconds": epoch_seconds,
        "clients_per_s": data.valid.n_rows / float(np.median(seconds)),
        "valid_auc": history[-1]["valid_metric"],
        "epochs": len(history),
        "model_share": float(np.median([h["model_share"] for h in steady])),
    }


def run_anna_torch_gru(data: Dataset, passes: int, seed: int) -> dict[str, Any]:
    """ANNA as on a machine without a C compiler: torch's own GRU instead of anna_models.fused_gru."""
    from anna_models import fused_gru

    fused_gru.available()  # loads (or fails to) once; then the library is hidden for this side only
    library, fused_gru._library = fused_gru._library, None
    try:
        return run_anna(data, passes, seed)
    finally:
        fused_gru._library = library


def ptls_records(seqs: Sequences, y: np.ndarray) -> list[dict[str, Any]]:
    """ptls's feature dicts, one per row: (T,) tensors per feature and a scalar ``target``.

    An empty row becomes one all-zero event (code 0 is padding): ptls's RNN encoder rejects empty batches
    and its last-step pooling indexes ``length - 1``.
    """
    import torch

    columns = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in seqs.categorical.items()}
    for k, v in seqs.numeric.items():
        values = np.nan_to_num(np.asarray(v, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        columns[k] = torch.from_numpy(values)
    for j, k in enumerate(TIME_FEATURES):
        columns[k] = torch.from_numpy(np.ascontiguousarray(seqs.time_features[:, j]))
    empty = {k: torch.zeros(1, dtype=v.dtype) for k, v in columns.items()}
    offsets = seqs.offsets.tolist()
    records = []
    for i in range(seqs.n_rows):
        a, b = offsets[i], offsets[i + 1]
        record = {k: v[a:b] for k, v in columns.items()} if b > a else dict(empty)
        record["target"] = float(y[i])
        records.append(record)
    return records


def ptls_model(data: Dataset) -> Any:
    """TrxEncoder (ANNA's embedding widths, numerics as they are) → GRU with last/max/mean pooling → head."""
    from ptls.nn import RnnSeqEncoder, TrxEncoder
    from torch import nn

    from anna_models.event_encoder import embedding_size
    from anna_models.training import encoder_config

    encoder = encoder_config(data.train, data.manifest, data.params)
    trx = TrxEncoder(
        embeddings={k: {"in": v, "out": embedding_size(v)} for k, v in encoder.categorical.items()},
        numeric_values={k: "identity" for k in [*sorted(data.train.numeric), *TIME_FEATURES]},
        linear_projection_size=data.params.hidden,
    )
    h = data.params.hidden
    seq = RnnSeqEncoder(trx_encoder=trx, hidden_size=h, type="gru", reducer="last_max_avg")
    head = [nn.Linear(3 * h, h), nn.ReLU(), nn.Dropout(data.params.dropout), nn.Linear(h, 1)]
    return nn.Sequential(seq, *head)


def run_ptls(data: Dataset, passes: int, seed: int) -> dict[str, Any]:
    """A plain training loop over ptls's padded batches; the same optimiser, epochs and threads as ANNA."""
    import torch
    from ptls.frames.supervised.seq_to_target_dataset import SeqToTargetDataset
    from torch.nn import functional as F

    from anna_models.metrics import compute_metric

    torch.set_num_threads(data.params.threads)
    torch.manual_seed(seed)
    train = SeqToTargetDataset(ptls_records(data.train, data.y_train), "target", target_dtype="float32")
    valid = SeqToTargetDataset(ptls_records(data.valid, data.y_valid), "target", target_dtype="float32")
    model = ptls_model(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=data.params.lr,
                                  weight_decay=data.params.weight_decay)
    generator = torch.Generator().manual_seed(seed)

    def loader(dataset: Any, train_order: bool) -> Any:
        return torch.utils.data.DataLoader(
            dataset, batch_size=data.params.batch_size if train_order else PTLS_PREDICT_BATCH,
            shuffle=train_order,
            collate_fn=dataset.collate_fn, generator=generator if train_order else None,
        )

    epoch_seconds, model_shares = [], []
    for _ in range(data.params.max_epochs):
        model.train()
        started, data_seconds = time.perf_counter(), 0.0
        batches = iter(loader(train, True))
        while True:
            fetched = time.perf_counter()
            batch, target = next(batches, (None, None))
            data_seconds += time.perf_counter() - fetched
            if batch is None:
                break
            loss = F.binary_cross_entropy_with_logits(model(batch)[:, 0], target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - started)
        model_shares.append(1.0 - data_seconds / epoch_seconds[-1])
    model.eval()
    seconds, scores = [], np.zeros(0)
    for _ in range(passes):
        started = time.perf_counter()
        with torch.inference_mode():
            scores = torch.cat([model(batch)[:, 0] for batch, _ in loader(valid, False)]).numpy()
        seconds.append(time.perf_counter() - started)
    steady = float(np.median(epoch_seconds[1:] or epoch_seconds))
    return {
        "events_per_s": data.train.n_events / steady,
        "epoch_seconds": steady,
        "clients_per_s": data.valid.n_rows / float(np.median(seconds)),
        "valid_auc": compute_metric("roc_auc", data.y_valid, 1 / (1 + np.exp(-scores))),
        "epochs": len(epoch_seconds),
        "model_share": float(np.median(model_shares[1:] or model_shares)),
    }


def compare(data: Dataset, passes: int, seed: int) -> dict[str, Any]:
    lengths = data.train.lengths
    print(f"{data.name}: {data.train.n_rows:,} train rows, {data.train.n_events:,} events, length mean "
          f"{lengths.mean():.0f}, p50 {np.median(lengths):.0f}, p99 {np.percentile(lengths, 99):.0f}, max "
          f"{lengths.max()}; {data.valid.n_rows:,} valid rows", flush=True)
    result: dict[str, Any] = {"dataset": data.name, "train_rows": data.train.n_rows,
                              "train_events": data.train.n_events, "valid_rows": data.valid.n_rows,
                              "mean_length": float(lengths.mean()), "max_length": int(lengths.max())}
    for side, fn in (("anna", run_anna), ("anna_torch_gru", run_anna_torch_gru), ("ptls", run_ptls)):
        started = time.perf_counter()
        result[side] = fn(data, passes, seed)
        print(f"  {side}: {result[side]} ({time.perf_counter() - started:.0f} s)", flush=True)
    result["ratio"] = {k: result["anna"][k] / result["ptls"][k] for k in ("events_per_s", "clients_per_s")}
    result["fused_gain"] = {k: result["anna"][k] / result["anna_torch_gru"][k]
                            for k in ("events_per_s", "clients_per_s")}
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| data | side | train events/s | inference clients/s | valid ROC-AUC | epoch s | model share |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, r in results.items():
        for side in ("anna", "anna_torch_gru", "ptls"):
            s = r[side]
            lines.append(f"| {key} | {side} | {s['events_per_s']:,.0f} | {s['clients_per_s']:,.0f} "
                         f"| {s['valid_auc']:.4f} | {s['epoch_seconds']:.1f} | {s['model_share']:.0%} |")
    lines += ["", "| data | train ANNA/ptls | target | inference ANNA/ptls | target | ROC-AUC ANNA − ptls "
              "| fused GRU gain, train / inference |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, r in results.items():
        train_target, infer_target = TARGETS[f"train_{key}"], TARGETS["inference"]
        ratio = r["ratio"]
        lines.append(
            f"| {key} | {ratio['events_per_s']:.2f}× {_mark(ratio['events_per_s'], train_target)} "
            f"| ≥ {train_target:g}× "
            f"| {ratio['clients_per_s']:.2f}× {_mark(ratio['clients_per_s'], infer_target)} "
            f"| ≥ {infer_target:g}× | {r['anna']['valid_auc'] - r['ptls']['valid_auc']:+.4f} "
            f"| {r['fused_gain']['events_per_s']:.2f}× / {r['fused_gain']['clients_per_s']:.2f}× |"
        )
    return "\n".join(lines)


def _mark(value: float, target: float) -> str:
    return "(met)" if value >= target else "(missed)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=DEMO_CLIENTS, help="demo size")
    parser.add_argument("--uniform-clients", type=int, default=50_000)
    parser.add_argument("--uniform-mean-length", type=float, default=200.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="timed inference passes (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--skip", choices=["demo", "uniform"], default=None)
    parser.add_argument("--no-write", action="store_true", help="do not update bench/results and docs")
    args = parser.parse_args()
    import ptls
    import torch

    # Early stopping off: both sides run exactly --epochs epochs.
    params = TrainParams(hidden=64, batch_size=128, max_epochs=args.epochs, patience=args.epochs,
                         threads=args.threads)
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    if args.skip != "demo":
        results["demo"] = compare(demo_dataset(args, params), args.passes, args.seed)
    if args.skip != "uniform":
        data = uniform_dataset(args.uniform_clients, args.uniform_mean_length, args.seed, params)
        results["uniform"] = compare(data, args.passes, args.seed)
    load_after = os.getloadavg()
    header = (f"CPU, {args.threads} torch threads, torch {torch.__version__}, ptls "
              f"{getattr(ptls, '__version__', '0.7.0')}, GRU hidden 64, batch 128, {args.epochs} epochs; "
              f"1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    text = f"{header}\n\n{table(results)}"
    print(text)
    if not args.no_write:
        from _report import write_result

        payload = {"threads": args.threads, "epochs": args.epochs, "targets": TARGETS,
                   "load_average": {"before": load_before, "after": load_after}, **results}
        write_result("throughput", payload, text)


if __name__ == "__main__":
    main()
