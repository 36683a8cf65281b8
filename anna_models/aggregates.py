"""Automatic per-client aggregates of one domain's point-in-time events: what a bank's data scientist
would compute by hand for a gradient-boosting model, and the input of ANNA's LightGBM model.

Per sample row (all of it from the row's extracted events, so strictly before its report date):

- ``count``, ``log_count``, ``recency_days`` (since the last event), ``tenure_days`` (since the first),
  ``mean_gap_days``, ``count_<w>d`` for each window, ``hour_mean``, ``weekend_share``;
- per numeric feature, in the mart's own units (the extraction's normalisation and transform undone,
  so sums are real totals): ``sum``, ``mean``, ``max``, ``std``, ``last`` over all events and
  ``sum``, ``mean``, ``max``, ``std`` over the last 30/90/180 days (a window's last event is the row's
  last event, so it has no ``last`` of its own);
- per categorical feature, the share of events with each code (``share_<value>``); a feature with more
  than ``SMALL_VOCAB`` codes gets shares of its ``SMALL_VOCAB - 2`` most frequent values and "unknown"
  only (marts number values by frequency, most frequent first), and the number of distinct codes
  (``distinct``).

Undefined values (a mean over no events) are NaN, which LightGBM routes as missing; counts are 0.

Extraction keeps at most ``max_len`` latest events per row, so for long histories the count, tenure
and all-events statistics describe those latest events only; the 30/90/180-day windows are exact as long
as a row has fewer than ``max_len`` events in them. ``Sequences`` carry no count beyond ``max_len``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from anna_models.sequences import TIME_FEATURES, Sequences

WINDOWS_DAYS = (30, 90, 180)
SMALL_VOCAB = 32  # categorical features with at most this many codes get one share column per code
_DAYS_BEFORE = TIME_FEATURES.index("log_days_before_report")
_HOUR = TIME_FEATURES.index("hour_of_day")
_WEEKDAY = TIME_FEATURES.index("day_of_week")


@dataclass
class Aggregates:
    """(N, F) float32 aggregates of N sample rows, and the F column names."""

    values: np.ndarray
    names: list[str]


class _Rows:
    """Segment reductions over a ragged (E,) array whose row i owns ``offsets[i]:offsets[i+1]``."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        self.n = len(self.lengths)
        self.row = np.repeat(np.arange(self.n), self.lengths)  # (E,) the row of every event
        self.nonempty = self.lengths > 0

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.row, weights=values, minlength=self.n)

    def max(self, values: np.ndarray) -> np.ndarray:
        """Row maxima; -inf entries (events outside a window) are skipped, NaN where nothing is left."""
        out = np.full(self.n, -np.inf)
        if self.nonempty.any():
            out[self.nonempty] = np.maximum.reduceat(values, self.offsets[:-1][self.nonempty])
        out[np.isneginf(out)] = np.nan
        return out

    def last(self, values: np.ndarray) -> np.ndarray:
        out = np.full(self.n, np.nan)
        out[self.nonempty] = values[self.offsets[1:][self.nonempty] - 1]
        return out


def _ratio(numerator: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, numerator / np.maximum(count, 1), np.nan)


def _raw_values(values: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Undo the extraction's ``(transform(x) - mean) / std`` (float64): amounts back in currency units."""
    x = values.astype(np.float64) * float(spec.get("std", 1.0)) + float(spec.get("mean", 0.0))
    if spec.get("transform") == "signed_log1p":
        x = np.sign(x) * np.expm1(np.minimum(np.abs(x), 700.0))  # exp(700) is near float64's limit
    return x


def _label(value: Any) -> str:
    return re.sub(r"\W+", "_", str(value)).strip("_") or "blank"


def _numeric_columns(rows: _Rows, name: str, raw: np.ndarray, windows: dict[int, np.ndarray],
                     ) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    scopes = {"": None, **{f"_{w}d": mask for w, mask in windows.items()}}
    for suffix, mask in scopes.items():
        inside = raw if mask is None else np.where(mask, raw, 0.0)
        count = rows.lengths if mask is None else rows.sum(mask)
        total = rows.sum(inside)
        mean = _ratio(total, count)
        # Two passes (deviations from the row's mean), since raw amounts make E[x²] - E[x]² cancel badly.
        deviation = raw - np.nan_to_num(mean)[rows.row]
        if mask is not None:
            deviation = np.where(mask, deviation, 0.0)
        columns[f"{name}.sum{suffix}"] = total
        columns[f"{name}.mean{suffix}"] = mean
        columns[f"{name}.max{suffix}"] = rows.max(raw if mask is None else np.where(mask, raw, -np.inf))
        columns[f"{name}.std{suffix}"] = np.sqrt(_ratio(rows.sum(deviation * deviation), count))
        if mask is None:
            columns[f"{name}.last"] = rows.last(raw)
    return columns


def _categorical_columns(rows: _Rows, name: str, codes: np.ndarray, spec: dict[str, Any]
                         ) -> dict[str, np.ndarray]:
    vocab = int(spec.get("vocab_size") or int(codes.max(initial=1)) + 1)
    codes = np.clip(codes.astype(np.int64), 0, vocab - 1)
    columns: dict[str, np.ndarray] = {}
    if vocab > SMALL_VOCAB:
        distinct = np.unique(rows.row * vocab + codes) // vocab
        columns[f"{name}.distinct"] = np.bincount(distinct, minlength=rows.n).astype(np.float64)
    kept = min(vocab, SMALL_VOCAB)
    # Rarer values share one last bucket, which never gets a column: the shares sum to 1 with it.
    keys = rows.row * (kept + 1) + np.minimum(codes, kept)
    counts = np.bincount(keys, minlength=rows.n * (kept + 1)).reshape(rows.n, kept + 1)
    labels = list(spec.get("values") or [])
    for code in range(1, kept):  # code 0 is padding, never an event's value
        label = _label(labels[code]) if code < len(labels) else str(code)
        key = f"{name}.share_{label}"
        columns[key if key not in columns else f"{key}_{code}"] = _ratio(counts[:, code], rows.lengths)
    return columns


def client_aggregates(seqs: Sequences, features: dict[str, dict[str, Any]] | None = None) -> Aggregates:
    """Aggregates of every row of ``seqs``; ``features`` is the mart manifest's ``features`` (vocab sizes,
    value labels, transforms), so the columns depend on the mart, never on which rows are at hand."""
    features = features or {}
    rows = _Rows(seqs.offsets)
    days = np.expm1(seqs.time_features[:, _DAYS_BEFORE].astype(np.float64))  # (E,) days before the report
    first, last = rows.max(days), -rows.max(-days)  # events run oldest first, but do not rely on it
    count = rows.lengths.astype(np.float64)
    columns: dict[str, np.ndarray] = {
        "count": count,
        "log_count": np.log1p(count),
        "recency_days": last,
        "tenure_days": first,
        "mean_gap_days": _ratio(first - last, count - 1),
    }
    windows = {w: days < w for w in WINDOWS_DAYS}
    columns.update({f"count_{w}d": rows.sum(mask) for w, mask in windows.items()})
    columns["hour_mean"] = _ratio(rows.sum(seqs.time_features[:, _HOUR].astype(np.float64) * 24), count)
    weekend = seqs.time_features[:, _WEEKDAY] * 7 > 4.5  # weekday / 7 with Monday = 0: Saturday and Sunday
    columns["weekend_share"] = _ratio(rows.sum(weekend), count)
    for name in sorted(seqs.numeric):
        raw = _raw_values(seqs.numeric[name], features.get(name, {}))
        columns.update(_numeric_columns(rows, name, raw, windows))
    for name in sorted(seqs.categorical):
        columns.update(_categorical_columns(rows, name, seqs.categorical[name], features.get(name, {})))
    names = list(columns)
    values = np.empty((rows.n, len(names)), dtype=np.float32)
    for j, column in enumerate(columns.values()):
        values[:, j] = np.clip(column, -3e38, 3e38)  # sums past float32's range stay finite
    return Aggregates(values=values, names=names)
