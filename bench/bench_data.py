"""Data-side throughput: demo generation (events/s, peak memory as clients grow) and point-in-time extraction.

    python bench/bench_data.py [--clients 20000 100000] [--events 20000000] [--rows 100000] [--quick]

Each demo size is generated in a fresh process so that its peak RSS is its own. Extraction runs on a
synthetic mart of ``--events`` card-like events (log-normal events per client) for ``--rows`` sample rows
at K=256, with numpy/torch limited to 2 threads.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import write_result  # noqa: E402

MAX_LEN = 256
CLIENTS_PER_PART = 20_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def generate_once(clients: int, seed: int) -> dict:
    """Run in a child process: generate the demo into a temporary folder, report speed and peak memory."""
    from anna_models.demo_data import generate_demo

    with tempfile.TemporaryDirectory() as tmp:
        summary = generate_demo(Path(tmp), clients, seed)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    return {
        "clients": clients,
        "seconds": summary["seconds"],
        "events": summary["events"],
        "events_total": summary["events_total"],
        "events_per_second": summary["events_per_second"],
        "peak_rss_mb": round(peak_rss_mb()),
        "disk_mb": round(size / 2**20),
    }


def bench_generation(sizes: list[int], seed: int) -> list[dict]:
    runs = []
    for clients in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--generate-once", str(clients), "--seed", str(seed)],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"generated {clients} clients: {runs[-1]}", flush=True)
    return runs


def synthetic_mart(path: Path, n_events: int, seed: int) -> None:
    """A card-like mart of about ``n_events`` events: heavy-tailed counts, two categoricals, one amount."""
    from anna_models.mart_writer import MartWriter

    rng = np.random.default_rng(seed)
    n_clients = max(n_events // 150, 1)
    counts = np.maximum(rng.lognormal(np.log(150) - 0.5, 1.0, n_clients), 1)
    counts = np.maximum((counts * n_events / counts.sum()).astype(np.int64), 1)
    start = np.datetime64("2024-01-01", "s").astype(np.int64)
    writer = MartWriter(
        path,
        "synthetic_cards",
        categorical={"mcc": [str(5000 + i) for i in range(300)], "channel": list("abcde")},
        numeric={"amount": "signed_log1p"},
    )
    for lo in range(0, n_clients, CLIENTS_PER_PART):
        part = counts[lo : lo + CLIENTS_PER_PART]
        n = int(part.sum())
        client_id = np.repeat(np.arange(lo, lo + len(part), dtype=np.int64) + 1, part)
        seconds = start + rng.integers(0, 730 * 86_400, n)
        order = np.lexsort((seconds, client_id))
        columns = {
            "mcc": rng.integers(2, 302, n),
            "channel": rng.integers(1, 7, n),
            "amount": rng.lognormal(6, 1.2, n).astype(np.float32),
        }
        writer.append(
            client_id, seconds[order].view("datetime64[s]"), {k: v[order] for k, v in columns.items()}
        )
    writer.close()


def bench_extraction(n_events: int, n_rows: int, seed: int, repeats: int) -> dict:
    import torch

    from anna_models.extract import extract_sequences
    from anna_models.marts import Mart

    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        synthetic_mart(Path(tmp) / "cards", n_events, seed)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        mart = Mart.open(Path(tmp) / "cards")
        open_s = time.perf_counter() - started
    started = time.perf_counter()
    mart.search_key  # noqa: B018 - built once per opened mart, timed apart from the queries
    mart.hour_and_weekday  # noqa: B018
    mart.normalised("amount")
    index_s = time.perf_counter() - started
    client_id = np.where(rng.random(n_rows) < 0.98, rng.choice(mart.client_ids, n_rows), -1)  # 2% unknown
    report_date = np.datetime64("2025-01-01", "s") + rng.integers(0, 365, n_rows) * 86_400
    timings, events = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        seq = extract_sequences(mart, client_id, report_date, MAX_LEN)
        timings.append(time.perf_counter() - started)
        events = seq.n_events
    steady = statistics.median(timings[1:]) if len(timings) > 1 else timings[0]
    return {
        "mart_events": len(mart.client_id),
        "mart_clients": len(mart.client_ids),
        "rows": n_rows,
        "max_len": MAX_LEN,
        "output_events": events,
        "mart_build_s": round(build_s, 2),
        "open_s": round(open_s, 2),
        "index_s": round(index_s, 2),
        "first_call_s": round(timings[0], 3),
        "steady_call_s": round(steady, 3),
        "first_call_events_per_s": round(events / timings[0]),
        "steady_events_per_s": round(events / steady),
        "threads": 2,
    }


def markdown(generation: list[dict], extraction: dict) -> str:
    lines = [
        "Demo generation (raw Parquet + marts + samples, one process per size):",
        "",
        "| clients | events | seconds | events/s | peak RSS MiB | disk MiB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in generation:
        lines.append(
            f"| {run['clients']:,} | {run['events_total']:,} | {run['seconds']:.1f} | "
            f"{run['events_per_second']:,} | {run['peak_rss_mb']:,} | {run['disk_mb']:,} |"
        )
    per_domain = ", ".join(f"{k} {v:,}" for k, v in generation[0]["events"].items())
    lines += [
        "",
        f"Events at {generation[0]['clients']:,} clients: {per_domain}.",
        "",
        f"Extraction: {extraction['rows']:,} rows, K={extraction['max_len']}, mart of "
        f"{extraction['mart_events']:,} events ({extraction['mart_clients']:,} clients), 2 threads: "
        f"{extraction['output_events']:,} events out; open {extraction['open_s']} s, index "
        f"{extraction['index_s']} s, first call {extraction['first_call_s']} s "
        f"({extraction['first_call_events_per_s']:,} events/s), steady {extraction['steady_call_s']} s "
        f"(**{extraction['steady_events_per_s']:,} events/s**).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", help="demo sizes (default 20000 100000)")
    parser.add_argument("--events", type=int, help="events in the extraction mart (default 20M)")
    parser.add_argument("--rows", type=int, help="sample rows to extract (default 100k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--generate-once", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_once:
        print(json.dumps(generate_once(args.generate_once, args.seed)))
        return
    sizes = args.clients or ([2_000, 10_000] if args.quick else [20_000, 100_000])
    n_events = args.events or (2_000_000 if args.quick else 20_000_000)
    n_rows = args.rows or (20_000 if args.quick else 100_000)
    generation = bench_generation(sizes, args.seed)
    extraction = bench_extraction(n_events, n_rows, args.seed, repeats=3 if args.quick else 6)
    write_result(
        "data", {"generation": generation, "extraction": extraction}, markdown(generation, extraction)
    )


if __name__ == "__main__":
    main()
