"""Point-in-time extraction: ANNA's ``extract_sequences`` against DuckDB running the same query, 2 threads.

    python bench/extraction.py [--events 20000000] [--rows 100000] [--max-len 256] [--repeats 3]
                               [--data-dir DIR] [--quick]

The mart is bench_data.py's synthetic card mart (log-normal events per client), built once and cached in
``--data-dir`` (default: <tmp>/anna-bench). The sample is ``--rows`` (client_id, report_date) rows, 2% of
them unknown clients. ANNA's first call runs in this fresh process after the mart is opened and indexed
(the index is timed apart); steady state is the median of the calls after it.

DuckDB gets the same query: the sample joined to the events on client_id with ``event_time <
report_date``, ``row_number() OVER (PARTITION BY sample row ORDER BY event_time DESC) <= K``, the same
output columns (codes, normalised numerics, the four time features, float32) ordered per row oldest
first, materialised as an Arrow table, ``SET threads=2``. It reads the mart's Parquet parts, an in-memory
Arrow table of them, or a DuckDB in-memory table of them; ANNA is compared with the fastest. Every
DuckDB result is checked against ANNA's, event by event, before any number is written.
"""

from __future__ import annotations

import os

THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import write_result  # noqa: E402
from bench.bench_data import synthetic_mart  # noqa: E402

TIME_EXPRESSIONS = {
    # ANNA's TIME_FEATURES, in order; ``rn`` counts kept events from the newest, ``older`` is the event
    # before this one, so the oldest kept event (rn = K, or no older event at all) has no gap.
    "log_days_before_report": "ln(1 + (epoch_ms(report_date) - epoch_ms(event_time)) / 86400000.0)",
    "log_days_since_previous": "CASE WHEN rn = {max_len} OR older IS NULL THEN 0 "
    "ELSE ln(1 + (epoch_ms(event_time) - epoch_ms(older)) / 86400000.0) END",
    "hour_of_day": "hour(event_time) / 24.0",
    "day_of_week": "(isodow(event_time) - 1) / 7.0",
}
NUMERIC_EXPRESSIONS = {"none": "{x}", "signed_log1p": "sign({x}) * ln(1 + abs({x}))"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cached_mart(data_dir: Path, n_events: int, seed: int) -> tuple[Path, float | None]:
    """The synthetic mart's folder, built unless an earlier run left it there; the build's seconds."""
    path = data_dir / f"cards-{n_events}-{seed}"
    if (path / "manifest.json").exists():
        return path, None
    started = time.perf_counter()
    synthetic_mart(path, n_events, seed)  # atomic: a half-built mart never has a manifest
    return path, time.perf_counter() - started


def duckdb_query(features: dict, max_len: int, events: str, *, break_ties: bool = True) -> str:
    """The point-in-time extraction as one SQL query over ``sample`` and the events relation ``events``.

    With ``break_ties``, events at the same second are ordered by mart position, as ANNA keeps them, so
    both keep the same events; without, DuckDB may keep either of two tied events at the K-th place.
    """
    columns = []
    for name, spec in features.items():
        if spec["kind"] == "categorical":
            columns.append(f"{name}::INTEGER AS {name}")
        else:
            value = NUMERIC_EXPRESSIONS[spec["transform"]].format(x=name)
            columns.append(
                f"(CASE WHEN isnan({name}) THEN 0 ELSE ({value} - {spec['mean']!r}) / {spec['std']!r} END)"
                f"::FLOAT AS {name}"
            )
    for name, expression in TIME_EXPRESSIONS.items():
        columns.append(f"({expression.format(max_len=max_len)})::FLOAT AS {name}")
    names = ", ".join(f"e.{name}" for name in features)
    order = "e.event_time DESC, e.pos DESC" if break_ties else "e.event_time DESC"
    return f"""
        WITH kept AS (
            SELECT s.row, s.report_date, e.event_time, {names},
                   row_number() OVER w AS rn, lead(e.event_time) OVER w AS older
            FROM sample AS s JOIN {events} AS e
              ON e.client_id = s.client_id AND e.event_time < s.report_date
            WINDOW w AS (PARTITION BY s.row ORDER BY {order})
            QUALIFY rn <= {max_len}
        )
        SELECT row, {", ".join(columns)} FROM kept ORDER BY row, rn DESC
    """


def time_calls(call: Callable[[], object], repeats: int) -> tuple[object, float, float]:
    """The last result, the first call's seconds and the median of the ``repeats`` calls after it."""
    timings, result = [], None
    for _ in range(repeats + 1):
        result = None  # free the previous result first, as a caller replacing it would
        started = time.perf_counter()
        result = call()
        timings.append(time.perf_counter() - started)
    return result, timings[0], statistics.median(timings[1:])


def check_same_events(seq, table, features: dict) -> None:
    """Assert that DuckDB's rows hold exactly ANNA's events: lengths, codes, numerics, time features."""
    from anna_models.sequences import TIME_FEATURES

    rows = table.column("row").to_numpy()
    assert np.array_equal(np.bincount(rows, minlength=seq.n_rows), seq.lengths), "per-row lengths differ"
    assert np.all(np.diff(rows) >= 0), "rows out of order"
    for name, spec in features.items():
        theirs = table.column(name).to_numpy()
        if spec["kind"] == "categorical":
            assert np.array_equal(theirs, seq.categorical[name]), f"{name} codes differ"
        else:
            np.testing.assert_allclose(theirs, seq.numeric[name], rtol=1e-5, atol=1e-5, err_msg=name)
    for k, name in enumerate(TIME_FEATURES):
        theirs = table.column(name).to_numpy()
        np.testing.assert_allclose(theirs, seq.time_features[:, k], rtol=1e-5, atol=1e-5, err_msg=name)


def open_indexed(path: Path):
    """The opened mart with its per-process index built, and the seconds each took."""
    from anna_models.marts import Mart

    started = time.perf_counter()
    mart = Mart.open(path)
    open_s = time.perf_counter() - started
    started = time.perf_counter()
    mart.search_key  # noqa: B018 - built once per opened mart, timed apart from the queries
    mart.hour_and_weekday  # noqa: B018
    for name in mart.numeric:
        mart.normalised(name)
    return mart, open_s, time.perf_counter() - started


def sample_rows(mart, n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(client_id, report_date) of ``n_rows`` sample rows, 2% of them clients the mart does not know."""
    rng = np.random.default_rng(seed)
    client_id = np.where(rng.random(n_rows) < 0.98, rng.choice(mart.client_ids, n_rows), -1)
    report_date = np.datetime64("2025-01-01", "s") + rng.integers(0, 365, n_rows) * 86_400
    return client_id, report_date


def anna_once(path: Path, n_rows: int, max_len: int, repeats: int, seed: int, threads: int) -> dict:
    """Run in a fresh child process: open and index the mart, then time ``extract_sequences`` calls."""
    from anna_models.extract import extract_sequences

    mart, open_s, index_s = open_indexed(path)
    rss_before_mb = peak_rss_mb()
    client_id, report_date = sample_rows(mart, n_rows, seed)
    seq, first_s, steady_s = time_calls(
        lambda: extract_sequences(mart, client_id, report_date, max_len, threads=threads), repeats
    )
    return {
        "threads": threads,
        "output_events": seq.n_events,
        "open_s": round(open_s, 2),
        "index_s": round(index_s, 2),
        "first_call_s": round(first_s, 3),
        "steady_call_s": round(steady_s, 3),
        "first_call_events_per_s": round(seq.n_events / first_s),
        "steady_events_per_s": round(seq.n_events / steady_s),
        "peak_rss_mb_before": round(rss_before_mb),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def bench(n_events: int, n_rows: int, max_len: int, repeats: int, data_dir: Path, seed: int) -> dict:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from anna_models.extract import extract_sequences
    from anna_models.marts import PART_GLOB

    path, build_s = cached_mart(data_dir, n_events, seed)
    anna = {}
    for threads in (1, THREADS):  # each in a fresh process: its first call and peak RSS are its own
        child = [f"--anna-once={threads}", f"--data-path={path}", f"--rows={n_rows}", f"--max-len={max_len}"]
        out = subprocess.run(
            [sys.executable, __file__, *child, f"--repeats={repeats}", f"--seed={seed}"],
            check=True,
            capture_output=True,
            text=True,
        )
        anna[f"{threads}_threads"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"ANNA, {threads} thread(s), fresh process: {anna[f'{threads}_threads']}", flush=True)

    mart, _, _ = open_indexed(path)
    client_id, report_date = sample_rows(mart, n_rows, seed)
    seq = extract_sequences(mart, client_id, report_date, max_len)
    assert all(run["output_events"] == seq.n_events for run in anna.values())
    con = duckdb.connect()
    con.execute(f"SET threads = {THREADS}")
    con.register(
        "sample", pa.table({"row": np.arange(n_rows), "client_id": client_id, "report_date": report_date})
    )
    parts = [str(p) for p in sorted(path.glob(PART_GLOB))]
    scan = f"(SELECT *, file_row_number AS pos FROM read_parquet({parts!r}, file_row_number = true))"
    arrow_events = pq.read_table(parts)  # a client lives in one part, so position = mart order
    arrow_events = arrow_events.append_column("pos", pa.array(np.arange(arrow_events.num_rows)))
    con.register("arrow_events", arrow_events)
    con.execute(f"CREATE TABLE table_events AS SELECT * FROM {scan}")
    sources = {  # name: (events relation, whether ties in time are broken as ANNA breaks them)
        "parquet": (scan, True),
        "arrow": ("arrow_events", True),
        "duckdb_table": ("table_events", True),
        "duckdb_table, ties unbroken": ("table_events", False),
    }
    duck = {}
    for source, (events, break_ties) in sources.items():
        query = duckdb_query(mart.features, max_len, events, break_ties=break_ties)
        table, first_s, steady_s = time_calls(lambda q=query: con.sql(q).to_arrow_table(), repeats)
        if break_ties:
            check_same_events(seq, table, mart.features)
        else:  # the same rows and lengths; which of two tied events is kept may differ
            rows = table.column("row").to_numpy()
            assert np.array_equal(np.bincount(rows, minlength=seq.n_rows), seq.lengths), "lengths differ"
        duck[source] = {
            "first_call_s": round(first_s, 3),
            "steady_call_s": round(steady_s, 3),
            "steady_events_per_s": round(seq.n_events / steady_s),
        }
        checked = "same events as ANNA" if break_ties else "same lengths as ANNA"
        print(f"DuckDB {source}: {checked}; {duck[source]}", flush=True)
        del table
    fastest = min(duck, key=lambda s: duck[s]["steady_call_s"])
    return {
        "mart_events": len(mart.client_id),
        "mart_clients": len(mart.client_ids),
        "rows": n_rows,
        "max_len": max_len,
        "threads": THREADS,
        "repeats": repeats,
        "output_events": seq.n_events,
        "mart_build_s": None if build_s is None else round(build_s, 2),
        "anna": anna,
        "duckdb_version": duckdb.__version__,
        "duckdb": duck,
        "fastest_duckdb": fastest,
        "ratio": {
            f"{key}_{kind}": round(duck[fastest]["steady_call_s"] / run[f"{kind}_call_s"], 1)
            for key, run in anna.items()
            for kind in ("first", "steady")
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def markdown(r: dict) -> str:
    one = r["anna"]["1_threads"]
    lines = [
        f"{r['rows']:,} sample rows, K={r['max_len']}, mart of {r['mart_events']:,} events "
        f"({r['mart_clients']:,} clients), {r['output_events']:,} events out; DuckDB with "
        f"`SET threads={r['threads']}`. ANNA runs in a fresh process per thread count: it opens the mart in "
        f"{one['open_s']} s and indexes it in {one['index_s']} s (once per process, not in the calls); "
        f"peak RSS {one['peak_rss_mb']:,} MiB, {one['peak_rss_mb_before']:,} MiB of it before the first "
        "call.",
        "",
        "| engine | reads | first call s | steady s | first-call events/s | steady events/s | "
        "vs fastest DuckDB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    fastest = r["duckdb"][r["fastest_duckdb"]]["steady_call_s"]
    for key, run in r["anna"].items():
        lines.append(
            f"| ANNA `extract_sequences(threads={run['threads']})` | opened mart | {run['first_call_s']} | "
            f"{run['steady_call_s']} | {run['first_call_events_per_s']:,} | {run['steady_events_per_s']:,} | "
            f"**{r['ratio'][key + '_steady']}×** faster |"
        )
    for source, d in r["duckdb"].items():
        lines.append(
            f"| DuckDB {r['duckdb_version']} | {source} | {d['first_call_s']} | {d['steady_call_s']} | | "
            f"{d['steady_events_per_s']:,} | {fastest / d['steady_call_s']:.2f}× |"
        )
    runs = "; ".join(
        f"{run['threads']} thread(s) **{run['first_call_events_per_s']:,}** first call, "
        f"**{run['steady_events_per_s']:,}** steady, **{r['ratio'][key + '_steady']}×** the fastest DuckDB "
        f"({r['ratio'][key + '_first']}× counting the first call)"
        for key, run in r["anna"].items()
    )
    lines += [
        "",
        f"ANNA, events/s (first call in a fresh process; steady = median of {r['repeats']} calls after it): "
        f"{runs}. Fastest DuckDB: {r['fastest_duckdb']}. DuckDB returns the same events (checked event by "
        "event; ties in time broken by mart position on both sides; the \"ties unbroken\" row shows what "
        "that costs DuckDB and is checked for lengths only); its query is `duckdb_query` in "
        f"bench/extraction.py. 1-minute load average at the end: {r['load_average_1m']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="events in the mart (default 20M)")
    parser.add_argument("--rows", type=int, help="sample rows (default 100k)")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="calls after the first, for the median")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "anna-bench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--anna-once", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.anna_once:
        run = anna_once(args.data_path, args.rows, args.max_len, args.repeats, args.seed, args.anna_once)
        print(json.dumps(run))
        return
    n_events = args.events or (2_000_000 if args.quick else 20_000_000)
    n_rows = args.rows or (20_000 if args.quick else 100_000)
    results = bench(n_events, n_rows, args.max_len, args.repeats, args.data_dir, args.seed)
    print(f"DuckDB ({results['fastest_duckdb']}) time / ANNA time: {results['ratio']}", flush=True)
    write_result("extraction", results, markdown(results))


if __name__ == "__main__":
    main()
