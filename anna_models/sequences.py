"""Ragged per-row event sequences: what point-in-time extraction hands to the models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TIME_FEATURES = ("log_days_before_report", "log_days_since_previous", "hour_of_day", "day_of_week")


@dataclass
class Sequences:
    """Events of N sample rows for one domain, without padding.

    Row ``i`` owns events ``offsets[i]:offsets[i+1]``, oldest first; E is the total event count.
    """

    offsets: np.ndarray  # (N+1,) int64
    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (E,) int32 codes
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (E,) float32, normalised
    time_features: np.ndarray = field(default_factory=lambda: np.zeros((0, len(TIME_FEATURES)), np.float32))

    @property
    def lengths(self) -> np.ndarray:
        """(N,) events per row; 0 for a client with no history before the report date."""
        return np.diff(self.offsets)

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def take(self, rows: np.ndarray) -> Sequences:
        """The sequences of the given rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.offsets[rows], self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return Sequences(
            offsets=offsets,
            categorical={k: v[index] for k, v in self.categorical.items()},
            numeric={k: v[index] for k, v in self.numeric.items()},
            time_features=self.time_features[index],
        )

    def save(self, path: Path) -> None:
        """Write to one uncompressed .npz file (atomically: a crash never leaves half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays: dict[str, Any] = {"offsets": self.offsets, "time_features": self.time_features}
        arrays.update({f"cat__{k}": v for k, v in self.categorical.items()})
        arrays.update({f"num__{k}": v for k, v in self.numeric.items()})
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Sequences:
        with np.load(path) as data:
            return cls(
                offsets=data["offsets"],
                categorical={k[5:]: data[k] for k in data.files if k.startswith("cat__")},
                numeric={k[5:]: data[k] for k in data.files if k.startswith("num__")},
                time_features=data["time_features"],
            )
