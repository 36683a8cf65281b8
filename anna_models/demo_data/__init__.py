"""Synthetic bank data for the demo: three event domains driven by hidden client traits, and labelled samples.

Each client has hidden traits (affluence, stress, discipline, impulsiveness, digital and saving habits).
Targets are drawn from the traits alone; the traits show in the events noisily and mostly in different
domains (impulsiveness in card spending, stress in account flows, discipline in bureau overdues), so a model
must read all three domains to approach the oracle. Clients are generated in fixed-size chunks, each from
its own ``PCG64((seed, chunk))`` stream, and each chunk goes straight to the raw Parquet parts and the marts:
memory stays flat however many clients are asked for, and the output depends only on ``(clients, seed)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anna_models.demo_data.account import ACCOUNT
from anna_models.demo_data.card import CARD, expected_log_spend_3m
from anna_models.demo_data.clients import (
    FIRST_CLIENT_ID,
    Clients,
    default_logit,
    draw_clients,
    product_logits,
)
from anna_models.demo_data.credit import CREDIT
from anna_models.demo_data.events import DomainSpec, Events, write_raw
from anna_models.demo_data.samples import PRODUCTS, SAMPLES, draw_samples, oracle_scores, write_samples
from anna_models.demo_data.window import (
    DAY,
    HOUR,
    NEVER,
    WINDOW_END,
    WINDOW_MONTHS,
    WINDOW_START,
    month_of,
    month_start,
)
from anna_models.mart_writer import MartWriter

__all__ = [
    "CLIENTS_PER_CHUNK",
    "DAY",
    "DOMAINS",
    "FIRST_CLIENT_ID",
    "HOUR",
    "NEVER",
    "PRODUCTS",
    "SAMPLES",
    "WINDOW_END",
    "WINDOW_MONTHS",
    "WINDOW_START",
    "Clients",
    "DomainSpec",
    "Events",
    "default_logit",
    "expected_log_spend_3m",
    "generate_demo",
    "month_of",
    "month_start",
    "oracle_scores",
    "product_logits",
]

# Read by generate_demo at call time, so tests may shrink it on this module.
CLIENTS_PER_CHUNK = 10_000
DOMAINS = (CARD, ACCOUNT, CREDIT)


def generate_demo(
    out_dir: Path, clients: int, seed: int, progress: Callable[[float, str], None] | None = None
) -> dict[str, Any]:
    """Write the demo's raw data, marts, samples and oracle scores under ``out_dir``; return a summary.

    Layout: ``demo/raw/<domain>/part-XXXXX.parquet``, ``marts/<domain>/``, ``demo/samples/*.csv`` and
    ``oracle.json``, and ``demo/truth/<sample>.parquet`` (each row's hidden truth, for evaluation only).
    """
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    writers = {}
    for spec in DOMAINS:
        raw_dir = out_dir / "demo" / "raw" / spec.name
        raw_dir.mkdir(parents=True, exist_ok=True)
        for old in raw_dir.glob("part-*.parquet"):
            old.unlink()
        writers[spec.name] = MartWriter(
            out_dir / "marts" / spec.name,
            spec.name,
            categorical=spec.categorical,
            numeric=spec.numeric,
            default_max_len=spec.default_max_len,
        )
    counts = dict.fromkeys(writers, 0)
    samples: dict[str, list[pd.DataFrame]] = {name: [] for name in SAMPLES}
    n_chunks = -(-clients // CLIENTS_PER_CHUNK)
    # Parquet writing releases the GIL: one thread writes chunk i while chunk i+1 is drawn, and waiting for
    # it before handing over the next keeps at most two chunks in memory.
    with ThreadPoolExecutor(max_workers=1) as writer_thread:
        writing: Future | None = None
        for chunk in range(n_chunks):
            rng = np.random.Generator(np.random.PCG64([seed, chunk]))
            first = chunk * CLIENTS_PER_CHUNK
            c = draw_clients(rng, FIRST_CLIENT_ID + first, min(CLIENTS_PER_CHUNK, clients - first))
            rows, default_at = draw_samples(rng, c)
            events = {spec.name: spec.generate(rng, c, default_at) for spec in DOMAINS}
            # A client with no event in any mart is unknown to ANNA, and sample validation rejects it.
            seen = np.unique(np.concatenate([e.client_id for e in events.values()]))
            for name, frame in rows.items():
                samples[name].append(frame[np.isin(frame["client_id"].to_numpy(), seen)])
            for name, domain_events in events.items():
                counts[name] += len(domain_events.client_id)
            if writing is not None:
                writing.result()
            writing = writer_thread.submit(_write_chunk, out_dir, chunk, events, writers)
            if progress is not None:
                progress((chunk + 1) / n_chunks, f"{first + len(c)} of {clients} clients")
        if writing is not None:
            writing.result()
    versions = {name: writer.close()["version"] for name, writer in writers.items()}
    oracle = write_samples(out_dir / "demo", samples)
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    return {
        "clients": clients,
        "seed": seed,
        "seconds": round(seconds, 3),
        "events": counts,
        "events_total": total,
        "events_per_second": round(total / seconds),
        "mart_versions": versions,
        "paths": {
            "raw": str(out_dir / "demo" / "raw"),
            "marts": str(out_dir / "marts"),
            "samples": str(out_dir / "demo" / "samples"),
        },
        "oracle": oracle,
    }


def _write_chunk(
    out_dir: Path, chunk: int, events: dict[str, Events], writers: dict[str, MartWriter]
) -> None:
    """Write one chunk of every domain: its raw part and its mart part."""
    for spec in DOMAINS:
        domain_events = events[spec.name]
        write_raw(out_dir / "demo" / "raw" / spec.name / f"part-{chunk:05d}.parquet", domain_events, spec)
        codes = {k: domain_events.columns[k] + 2 for k in spec.categorical}  # 0 = padding, 1 = unknown
        writers[spec.name].append(
            domain_events.client_id,
            domain_events.event_time.view("datetime64[s]"),
            codes | {k: domain_events.columns[k] for k in spec.numeric},
        )
