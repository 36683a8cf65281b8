"""Marts: one folder of sorted Parquet parts per data domain, with a manifest of features and statistics.

``Mart.open`` loads a mart's columns once for extraction; writing marts (``MartWriter``, ``build_mart``)
lives in ``anna_models.mart_writer``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PAD, UNK = "<pad>", "<unk>"
MANIFEST = "manifest.json"
PART_GLOB = "events-*.parquet"


def signed_log1p(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: tames heavy-tailed amounts while keeping refunds negative."""
    x = np.asarray(x, dtype=np.float32)
    out = np.abs(x)
    np.log1p(out, out=out)
    return np.copysign(out, x, out=out)  # in place: one new array however large the column


TRANSFORMS = {"none": lambda x: np.asarray(x, dtype=np.float32), "signed_log1p": signed_log1p}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the mart folder ``path`` (or of the manifest file itself)."""
    path = Path(path)
    return json.loads((path / MANIFEST if path.is_dir() else path).read_text())


@dataclass
class Mart:
    """An opened mart: its manifest and every column as one numpy array, loaded once.

    ``event_time`` is int64 seconds since the epoch; ``client_start[j]:client_start[j+1]`` are the rows of
    ``client_ids[j]``.
    """

    path: Path
    manifest: dict[str, Any]
    client_id: np.ndarray  # (E,) int64, sorted
    event_time: np.ndarray  # (E,) int64 seconds, sorted within a client
    categorical: dict[str, np.ndarray]  # name -> (E,) int32 codes
    numeric: dict[str, np.ndarray]  # name -> (E,) float32, raw as stored
    client_ids: np.ndarray = field(init=False)  # (C,) int64, unique, sorted
    client_start: np.ndarray = field(init=False)  # (C+1,) int64
    _normalised: dict[str, np.ndarray] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        first = (
            np.flatnonzero(np.r_[True, self.client_id[1:] != self.client_id[:-1]])
            if len(self.client_id)
            else np.zeros(0, np.int64)
        )
        self.client_ids = self.client_id[first]
        self.client_start = np.r_[first, len(self.client_id)].astype(np.int64)

    @classmethod
    def open(cls, path: Path) -> Mart:
        """Read the manifest and every part of the mart folder ``path`` (parts in name order)."""
        path = Path(path)
        manifest = read_manifest(path)
        parts = sorted(path.glob(PART_GLOB))
        features = manifest["features"]
        names = ["client_id", "event_time", *features]
        expected = int(manifest.get("n_events", 0))
        if expected and not parts:
            raise FileNotFoundError(f"mart {path}: the manifest lists {expected:,} events but no "
                                    f"{PART_GLOB} file is there; rebuild the mart or restore its files")
        table = pq.read_table(parts, columns=names) if parts else None
        if table is not None and "n_events" in manifest and table.num_rows != expected:
            raise ValueError(f"mart {path}: the manifest lists {expected:,} events but its {len(parts)} part "
                             f"file(s) hold {table.num_rows:,}; a part is missing or was replaced: rebuild "
                             "the mart")

        def column(name: str, dtype: Any) -> np.ndarray:
            if table is None:
                return np.zeros(0, dtype)
            values = table.column(name)
            if name == "event_time":
                values = values.cast(pa.timestamp("s")).cast(pa.int64())
            return np.ascontiguousarray(values.to_numpy(), dtype=dtype)

        kinds = {k: f["kind"] for k, f in features.items()}
        return cls(
            path=path,
            manifest=manifest,
            client_id=column("client_id", np.int64),
            event_time=column("event_time", np.int64),
            categorical={k: column(k, np.int32) for k, kind in kinds.items() if kind == "categorical"},
            numeric={k: column(k, np.float32) for k, kind in kinds.items() if kind == "numeric"},
        )

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.manifest["features"]

    @property
    def time_min(self) -> np.datetime64:
        return np.datetime64(self.manifest["time_min"] or "NaT", "s")

    @property
    def time_max(self) -> np.datetime64:
        return np.datetime64(self.manifest["time_max"] or "NaT", "s")

    def normalised(self, name: str) -> np.ndarray:
        """Numeric column ``name`` as ``(transform(x) - mean) / std``, computed once and kept."""
        if name not in self._normalised:
            spec = self.features[name]
            values = np.array(TRANSFORMS[spec["transform"]](self.numeric[name]), dtype=np.float32)
            values -= np.float32(spec["mean"])
            values /= np.float32(spec["std"])
            self._normalised[name] = np.nan_to_num(values, nan=0.0, copy=False)  # missing -> the mean
        return self._normalised[name]

    @functools.cached_property
    def hour_and_weekday(self) -> tuple[np.ndarray, np.ndarray]:
        """(E,) int8 hour of day and (E,) int8 day of week (Monday = 0) of every row, computed once."""
        hour, weekday = np.empty(len(self.event_time), np.int8), np.empty(len(self.event_time), np.int8)
        step = 1 << 20  # small temporaries: touching fresh memory, not arithmetic, is the cost at 20M rows
        for lo in range(0, len(self.event_time), step):
            days, seconds = np.divmod(self.event_time[lo : lo + step], 86_400)
            hour[lo : lo + step] = seconds // 3_600
            weekday[lo : lo + step] = (days + 3) % 7  # 1970-01-01 was a Thursday
        return hour, weekday

    @functools.cached_property
    def search_key(self) -> tuple[np.ndarray, int, int]:
        """``(key, span, t0)``: one sorted int64 per row, ``client_rank * span + (event_time - t0)``.

        Ranks (positions in ``client_ids``) instead of raw ids keep the key far from int64 overflow, and
        ``span`` leaves room for a query time one second past the last event.
        """
        t0 = int(self.event_time.min()) if len(self.event_time) else 0
        span = (int(self.event_time.max()) - t0 + 2) if len(self.event_time) else 2
        key = np.repeat(
            np.arange(len(self.client_ids), dtype=np.int64) * span - t0, np.diff(self.client_start)
        )
        key += self.event_time
        return key, span, t0
