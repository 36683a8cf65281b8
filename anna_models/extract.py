"""Point-in-time extraction: for each sample row, the client's latest events strictly before its report date.

Every path (training, retro-inference, production scoring) goes through ``extract_sequences``, so a model
never sees an event at or after the date it is scored for.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from anna_models.marts import Mart
from anna_models.sequences import TIME_FEATURES, Sequences

SECONDS_PER_DAY = 86_400
# Output is filled in blocks of about this many events, so that every intermediate lives in a small scratch
# buffer that stays in cache and is reused: on a fresh process, touching new memory (not arithmetic) is most
# of the cost, so the only large memory a call touches is the output it returns.
BLOCK_EVENTS = 1 << 15


def extract_sequences(
    mart: Mart, client_id: np.ndarray, report_date: np.ndarray, max_len: int, *, threads: int = 1
) -> Sequences:
    """The most recent ``max_len`` events of ``client_id[i]`` with ``event_time < report_date[i]``, per row.

    ``client_id`` is (N,) int64 and ``report_date`` (N,) datetime64 (any unit; cut to whole seconds).
    Unknown clients and clients without events before their date get length 0. ``threads`` threads fill
    the output (the result is the same for any number).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    client_id = np.asarray(client_id, dtype=np.int64)
    report = np.asarray(report_date).astype("datetime64[s]").view(np.int64)
    if client_id.shape != report.shape or client_id.ndim != 1:
        raise ValueError(
            f"client_id and report_date must be 1-d of equal length, got {client_id.shape} and {report.shape}"
        )
    if np.any(report == np.iinfo(np.int64).min):
        raise ValueError("report_date has missing values (NaT)")

    ends, counts = _kept_ranges(mart, client_id, report, max_len)
    offsets = np.zeros(len(client_id) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    n_events = int(offsets[-1])
    seq = Sequences(
        offsets=offsets,
        categorical={name: np.empty(n_events, codes.dtype) for name, codes in mart.categorical.items()},
        numeric={name: np.empty(n_events, np.float32) for name in mart.numeric},
        time_features=np.empty((n_events, len(TIME_FEATURES)), dtype=np.float32),
    )
    if n_events:
        _fill(seq, mart, ends, counts, report, threads)
    return seq


def _kept_ranges(
    mart: Mart, client_id: np.ndarray, report: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the mart row after its last kept event, and how many events it keeps (one key search)."""
    key, span, t0 = mart.search_key
    rank = np.searchsorted(mart.client_ids, client_id)
    rank = np.minimum(rank, max(len(mart.client_ids) - 1, 0))
    known = mart.client_ids[rank] == client_id if len(mart.client_ids) else np.zeros(len(client_id), bool)
    # Dates before the first event give offset 0 (nothing is earlier); dates after the last give span-1,
    # later than every stored event, so clipping never changes which events count as "before".
    query = rank * span + np.clip(report - t0, 0, span - 1)
    # Searching in sorted order walks the key's cache lines in one direction: ~5x faster for 100k rows.
    order = np.argsort(query, kind="stable")
    ends = np.empty(len(query), dtype=np.int64)
    ends[order] = np.searchsorted(key, query[order], side="left")
    first = mart.client_start[rank] if len(mart.client_ids) else np.zeros(len(client_id), np.int64)
    counts = np.where(known, np.minimum(ends - first, max_len), 0).astype(np.int64)
    return ends.astype(np.int64), counts


def _fill(
    seq: Sequences, mart: Mart, ends: np.ndarray, counts: np.ndarray, report: np.ndarray, threads: int
) -> None:
    """Write every output column of ``seq``, block by block of rows, on ``threads`` threads.

    Row ``i`` keeps mart rows ``ends[i]-counts[i] .. ends[i]-1``; ``report`` is (N,) int64 seconds.
    """
    offsets = seq.offsets
    # Blocks end at row boundaries: block j holds the rows starting in events [j*B, (j+1)*B), so fewer
    # than B + max_len events. numpy lets go of the GIL inside take and ufuncs, so threads filling
    # disjoint blocks run (and fault in the output's fresh pages) in parallel.
    bounds = np.unique(
        np.r_[0, np.searchsorted(offsets, np.arange(BLOCK_EVENTS, seq.n_events, BLOCK_EVENTS)), len(counts)]
    )
    bounds = bounds[np.r_[True, np.diff(offsets[bounds]) > 0]]  # no empty blocks
    if len(bounds) < 2:
        return
    shares = np.array_split(np.arange(len(bounds) - 1), min(threads, len(bounds) - 1))
    # The mart's per-process columns are built here, once, not raced for by the threads.
    columns = {**mart.categorical, **{name: mart.normalised(name) for name in mart.numeric}}
    fill = functools.partial(_fill_blocks, seq, mart, columns, ends, counts, report, bounds)
    if len(shares) == 1:
        fill(shares[0])
        return
    with ThreadPoolExecutor(max_workers=len(shares)) as pool:
        list(pool.map(fill, shares))  # list(): re-raise any worker's error here


def _fill_blocks(
    seq: Sequences,
    mart: Mart,
    columns: dict[str, np.ndarray],
    ends: np.ndarray,
    counts: np.ndarray,
    report: np.ndarray,
    bounds: np.ndarray,
    blocks: np.ndarray,
) -> None:
    """Fill blocks ``blocks`` (rows ``bounds[j]:bounds[j+1]`` each) through scratch buffers of this call.

    ``columns`` maps each categorical and numeric output to the (E,) mart column it is gathered from.
    """
    offsets = seq.offsets
    size = int(np.diff(offsets[bounds])[blocks].max())
    index, times = np.empty(size, np.intp), np.empty(size, np.int64)
    days, whole = np.empty(size, np.float32), np.empty(size, np.int64)
    outputs = {**seq.categorical, **seq.numeric}
    for j in blocks.tolist():
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        e0, e1 = int(offsets[lo]), int(offsets[hi])
        n = e1 - e0
        rows = lo + np.flatnonzero(counts[lo:hi])
        row_start = offsets[rows] - e0  # (R,) where each kept row's events begin in this block
        # Mart row of every output event, as a running sum: +1 inside a row, a jump where the next row begins.
        block_index = index[:n]
        block_index.fill(1)
        jumps = ends[rows] - counts[rows]
        jumps[1:] -= ends[rows[:-1]] - 1
        block_index[row_start] = jumps
        np.cumsum(block_index, out=block_index)

        for name, values in columns.items():
            np.take(values, block_index, out=outputs[name][e0:e1], mode="clip")

        # Time features: each computed contiguously in ``days`` and copied into its column once (ufuncs
        # writing straight into a strided column are several times slower).
        out, block_times, block_days = seq.time_features[e0:e1], times[:n], days[:n]
        np.take(mart.event_time, block_index, out=block_times, mode="clip")
        before = np.repeat(report[rows], counts[rows])
        np.subtract(before, block_times, out=before)
        block_days[:] = before
        block_days *= np.float32(1 / SECONDS_PER_DAY)
        out[:, 0] = np.log1p(block_days, out=block_days)
        np.subtract(block_times[1:], block_times[:-1], out=block_days[1:], casting="unsafe")
        block_days[row_start] = 0.0  # a row's first kept event has no previous one
        block_days *= np.float32(1 / SECONDS_PER_DAY)
        out[:, 1] = np.log1p(block_days, out=block_days)
        # Hour and weekday from the times already in cache: cheaper than gathering two more mart columns.
        # ``before`` is free again and holds the integer steps (floor division, as for times before 1970).
        block_whole = whole[:n]
        np.floor_divide(block_times, SECONDS_PER_DAY, out=block_whole)  # days since 1970-01-01
        np.multiply(block_whole, SECONDS_PER_DAY, out=before)
        np.subtract(block_times, before, out=before)  # seconds into the day
        np.floor_divide(before, 3_600, out=before)
        block_days[:] = before
        out[:, 2] = np.multiply(block_days, np.float32(1 / 24), out=block_days)
        block_whole += 3  # 1970-01-01 was a Thursday (weekday 3)
        np.floor_divide(block_whole, 7, out=before)
        before *= 7
        np.subtract(block_whole, before, out=before)
        block_days[:] = before
        out[:, 3] = np.multiply(block_days, np.float32(1 / 7), out=block_days)
