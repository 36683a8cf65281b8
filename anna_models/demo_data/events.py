"""One chunk of one domain's events, the spec of a demo domain, and its raw Parquet part."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anna_models.demo_data.clients import Clients


@dataclass
class Events:
    """One chunk of one domain, sorted by (client, time); categories as indices into the domain's values."""

    client_id: np.ndarray
    event_time: np.ndarray  # int64 seconds
    columns: dict[str, np.ndarray]

    def keep(self, mask: np.ndarray) -> Events:
        columns = {k: v[mask] for k, v in self.columns.items()}
        return Events(self.client_id[mask], self.event_time[mask], columns)


@dataclass(frozen=True)
class DomainSpec:
    """A demo domain: its categorical values, numeric transforms, raw-only columns and generator."""

    name: str
    categorical: dict[str, tuple[str, ...]]
    numeric: dict[str, str]
    generate: Callable[[np.random.Generator, Clients, np.ndarray], Events]
    raw_only: tuple[str, ...] = ()
    default_max_len: int = 256


def write_raw(path: Path, events: Events, spec: DomainSpec) -> None:
    """One raw part: readable string categories (dictionary-encoded, so cheap to write) and raw numerics."""
    arrays = {
        "client_id": pa.array(events.client_id),
        "event_time": pa.array(events.event_time.view("datetime64[s]")),
    }
    for name, values in spec.categorical.items():
        arrays[name] = pa.DictionaryArray.from_arrays(
            pa.array(events.columns[name], pa.int32()), pa.array(values, pa.string())
        )
    for name in (*spec.numeric, *spec.raw_only):
        arrays[name] = pa.array(events.columns[name])
    pq.write_table(pa.table(arrays), path, use_dictionary=["client_id", *spec.categorical])
