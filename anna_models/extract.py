"""Point-in-time extraction: for each sample row, the client's latest events strictly before its report date.

Every path (training, retro-inference, production scoring) goes through ``extract_sequences``, so a model
never sees an event at or after the date it is scored for.
"""

from __future__ import annotations

import numpy as np

from anna_models.marts import Mart
from anna_models.sequences import TIME_FEATURES, Sequences

SECONDS_PER_DAY = 86_400


def extract_sequences(mart: Mart, client_id: np.ndarray, report_date: np.ndarray, max_len: int) -> Sequences:
    """The most recent ``max_len`` events of ``client_id[i]`` with ``event_time < report_date[i]``, per row.

    ``client_id`` is (N,) int64 and ``report_date`` (N,) datetime64 (any unit; cut to whole seconds).
    Unknown clients and clients without events before their date get length 0.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
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
    # Row i's events are mart rows ends[i]-counts[i] .. ends[i]-1; shift a global arange per row.
    index = np.arange(offsets[-1], dtype=np.int64)
    index += np.repeat(ends - offsets[1:], counts)
    return Sequences(
        offsets=offsets,
        categorical={name: codes[index] for name, codes in mart.categorical.items()},
        numeric={name: mart.normalised(name)[index] for name in mart.numeric},
        time_features=_time_features(mart, index, np.repeat(report, counts), offsets),
    )


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


def _time_features(mart: Mart, index: np.ndarray, report: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(E, 4) float32 in ``TIME_FEATURES`` order for mart rows ``index`` and their (E,) report seconds."""
    # Each feature is computed contiguously and copied into its column once (ufuncs writing straight into a
    # strided column are several times slower), and ``report`` is reused in place: on a fresh process most
    # of the cost is the first touch of new memory, so fewer temporaries is faster.
    out = np.empty((len(index), len(TIME_FEATURES)), dtype=np.float32)
    times = mart.event_time[index]
    days = np.subtract(report, times, out=report).astype(np.float32)
    days *= np.float32(1 / SECONDS_PER_DAY)
    out[:, 0] = np.log1p(days, out=days)
    if len(times):
        np.subtract(times[1:], times[:-1], out=days[1:], casting="unsafe")
        days[offsets[:-1][offsets[:-1] < offsets[1:]]] = 0.0  # a row's first kept event has no previous one
    days *= np.float32(1 / SECONDS_PER_DAY)
    out[:, 1] = np.log1p(days, out=days)
    hour, weekday = mart.hour_and_weekday
    np.multiply(hour[index], np.float32(1 / 24), out=days)
    out[:, 2] = days
    np.multiply(weekday[index], np.float32(1 / 7), out=days)
    out[:, 3] = days
    return out
