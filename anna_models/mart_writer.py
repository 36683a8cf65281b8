"""Writing marts (layout in ``anna_models.marts``): ``MartWriter`` streams client-ordered chunks into a
new mart folder, ``build_mart`` turns raw frames (string or int categories, raw numerics) into one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anna_models.marts import MANIFEST, PAD, TRANSFORMS, UNK


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.) without overflow."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].astype(np.float64)
        if not len(values):
            return
        n_b, mean_b = len(values), float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def std(self) -> float:
        std = (self.m2 / self.n) ** 0.5 if self.n else 0.0
        return std if std > 1e-12 else 1.0  # a constant column normalises to 0, not NaN


class MartWriter:
    """Streams chunks of events, already sorted by (client, time), into a new mart folder.

    Categorical columns arrive as int32 codes (``2 + index`` into the given values; 1 = unknown), numeric
    columns raw. Parts are written to a temporary folder that replaces ``out_dir`` on ``close()``, so a
    crash mid-way never leaves a half-written mart behind.
    """

    def __init__(
        self,
        out_dir: Path,
        name: str,
        *,
        categorical: Mapping[str, Sequence[str]],
        numeric: Mapping[str, str],
        default_max_len: int = 256,
    ) -> None:
        unknown = sorted(set(numeric.values()) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"unknown numeric transform(s) {unknown}; known: {sorted(TRANSFORMS)}")
        self.out_dir, self.name, self.default_max_len = Path(out_dir), name, default_max_len
        self.values = {k: [PAD, UNK, *map(str, v)] for k, v in categorical.items()}
        self.transforms = dict(numeric)
        self.moments = {k: _Moments() for k in numeric}
        self.tmp_dir = self.out_dir.with_name(f".{self.out_dir.name}.writing")
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True)
        self.n_parts = self.n_events = self.n_clients = 0
        self.last_client: int | None = None
        self.time_min, self.time_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        self.digest = hashlib.sha1(name.encode())

    def append(
        self, client_id: np.ndarray, event_time: np.ndarray, columns: Mapping[str, np.ndarray]
    ) -> None:
        """Write one part; its clients must all come after those of earlier parts."""
        client_id = np.asarray(client_id, dtype=np.int64)
        seconds = np.asarray(event_time).astype("datetime64[s]").view(np.int64)
        if not len(client_id):
            return
        self._check_order(client_id, seconds)
        arrays = {"client_id": pa.array(client_id), "event_time": pa.array(seconds.view("datetime64[s]"))}
        for name, vocab in self.values.items():
            codes = np.asarray(columns[name], dtype=np.int32)
            if codes.min() < 1 or codes.max() >= len(vocab):
                raise ValueError(f"{self.name}.{name}: codes must lie in 1..{len(vocab) - 1}")
            arrays[name] = pa.array(codes)
        for name, transform in self.transforms.items():
            raw = np.asarray(columns[name], dtype=np.float32)
            self.moments[name].add(TRANSFORMS[transform](raw))
            arrays[name] = pa.array(raw)
        # Dictionary pages only where values repeat; trying them on amounts and times slows writing by 1/3.
        pq.write_table(
            pa.table(arrays),
            self.tmp_dir / f"events-{self.n_parts:05d}.parquet",
            use_dictionary=["client_id", *self.values],
        )
        starts = np.flatnonzero(np.diff(client_id)) + 1
        self.n_parts += 1
        self.n_events += len(client_id)
        self.n_clients += len(starts) + 1
        self.last_client = int(client_id[-1])
        self.time_min, self.time_max = (
            min(self.time_min, int(seconds.min())),
            max(self.time_max, int(seconds.max())),
        )
        # The version's suffix fingerprints the content cheaply: sizes and column sums, not every byte.
        sums = [
            float(np.asarray(columns[k], dtype=np.float64).sum()) for k in [*self.values, *self.transforms]
        ]
        self.digest.update(np.array([len(client_id), client_id[0], client_id[-1], seconds.sum()]).tobytes())
        self.digest.update(np.array(sums).tobytes())

    def _check_order(self, client_id: np.ndarray, seconds: np.ndarray) -> None:
        if self.last_client is not None and client_id[0] <= self.last_client:
            raise ValueError(
                f"{self.name}: part starts at client {client_id[0]}, not after {self.last_client}"
            )
        step = np.diff(client_id)
        if (step < 0).any() or ((step == 0) & (np.diff(seconds) < 0)).any():
            raise ValueError(f"{self.name}: rows must be sorted by (client_id, event_time)")

    def close(self) -> dict[str, Any]:
        """Write manifest.json, move the mart into place and return the manifest."""
        features: dict[str, dict[str, Any]] = {}
        for name, vocab in self.values.items():
            features[name] = {"kind": "categorical", "vocab_size": len(vocab), "values": vocab}
        for name, transform in self.transforms.items():
            m = self.moments[name]
            features[name] = {"kind": "numeric", "transform": transform, "mean": m.mean, "std": m.std}
        empty = self.n_events == 0
        manifest = {
            "name": self.name,
            "version": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "-" + self.digest.hexdigest()[:6],
            "time_min": None if empty else str(np.datetime64(self.time_min, "s")),
            "time_max": None if empty else str(np.datetime64(self.time_max, "s")),
            "n_events": self.n_events,
            "n_clients": self.n_clients,
            "default_max_len": self.default_max_len,
            "features": features,
        }
        (self.tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = self.out_dir.with_name(f".{self.out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.out_dir.exists():
            self.out_dir.rename(old)
        self.tmp_dir.rename(self.out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return manifest


def _vocabulary(counts: pd.Series, min_count: int) -> list[str]:
    """Values seen at least ``min_count`` times, most frequent first (ties by value, for stable codes)."""
    counts = counts[counts >= min_count]
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [value for value, _ in order]


def _as_text(values: pd.Series) -> pd.Series:
    """Category values as strings; whole floats (an int column with gaps) read as ints: 2.0 -> "2"."""
    if pd.api.types.is_float_dtype(values.dtype):
        finite = values.dropna()
        if (finite == np.round(finite)).all():
            values = values.astype("Int64")
    return values.astype("string")


def _as_seconds(values: pd.Series) -> np.ndarray:
    textual = values.dtype == object or pd.api.types.is_string_dtype(values.dtype)
    times = pd.to_datetime(values, format="ISO8601" if textual else None)
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return times.to_numpy(dtype="datetime64[s]").view(np.int64)


def build_mart(
    frames: pd.DataFrame | Iterable[pd.DataFrame],
    name: str,
    *,
    categorical: Sequence[str],
    numeric: Mapping[str, str],
    out_dir: Path,
    default_max_len: int = 256,
    min_count: int = 1,
    clients_per_part: int = 50_000,
) -> dict[str, Any]:
    """Build a mart from raw event frames (``client_id``, ``event_time`` and the named feature columns).

    Frames may come in any order. Each frame's categories are factorised as it arrives, so only compact
    codes (not strings) are held until the vocabularies are known; the table is then sorted and written in
    parts of ``clients_per_part`` clients. Returns the manifest.
    """
    frames = [frames] if isinstance(frames, pd.DataFrame) else frames
    pieces: dict[str, list[np.ndarray]] = {c: [] for c in ["client_id", "event_time", *categorical, *numeric]}
    local_values: dict[str, list[pd.Index]] = {c: [] for c in categorical}
    counts: dict[str, pd.Series] = {c: pd.Series(dtype=np.int64) for c in categorical}
    for frame in frames:
        pieces["client_id"].append(frame["client_id"].to_numpy(dtype=np.int64))
        pieces["event_time"].append(_as_seconds(frame["event_time"]))
        for col in categorical:
            codes, uniques = pd.factorize(_as_text(frame[col]), use_na_sentinel=True)
            uniques = pd.Index(uniques.astype(str))
            pieces[col].append(codes.astype(np.int32))
            local_values[col].append(uniques)
            seen = pd.Series(np.bincount(codes[codes >= 0], minlength=len(uniques)), index=uniques)
            counts[col] = counts[col].add(seen, fill_value=0).astype(np.int64)
        for col in numeric:
            pieces[col].append(frame[col].to_numpy(dtype=np.float32, na_value=np.nan))
    vocab = {col: _vocabulary(counts[col], min_count) for col in categorical}
    columns: dict[str, np.ndarray] = {}
    for col in categorical:
        code_of = {value: i + 2 for i, value in enumerate(vocab[col])}
        remapped = []
        for codes, uniques in zip(pieces[col], local_values[col], strict=True):
            lookup = np.array([code_of.get(v, 1) for v in uniques] + [1], dtype=np.int32)  # [-1] = missing
            remapped.append(lookup[codes])
        columns[col] = np.concatenate(remapped) if remapped else np.zeros(0, np.int32)
    for col in ["client_id", "event_time", *numeric]:
        columns[col] = np.concatenate(pieces[col]) if pieces[col] else np.zeros(0)
    order = np.lexsort((columns["event_time"], columns["client_id"]))
    columns = {k: v[order] for k, v in columns.items()}

    writer = MartWriter(out_dir, name, categorical=vocab, numeric=numeric, default_max_len=default_max_len)
    client_ids = columns["client_id"].astype(np.int64)
    first_rows = np.flatnonzero(np.r_[True, np.diff(client_ids) != 0])
    bounds = [*first_rows[::clients_per_part], len(client_ids)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
        writer.append(
            client_ids[lo:hi],
            columns["event_time"][lo:hi].astype(np.int64).view("datetime64[s]"),
            {k: v[lo:hi] for k, v in columns.items()},
        )
    return writer.close()
