"""The demo's time window (2024-01-01 .. 2025-12-31) and month arithmetic on int64 seconds."""

from __future__ import annotations

import numpy as np

DAY, HOUR = 86_400, 3_600
WINDOW_START = int(np.datetime64("2024-01-01", "s").view(np.int64))
WINDOW_MONTHS = 24  # history: 2024-01-01 .. 2025-12-31
NEVER = np.iinfo(np.int64).max


def month_start(month: np.ndarray | int) -> np.ndarray:
    """Seconds at the first of ``month`` months after 2024-01 (negative: before the window)."""
    months = np.datetime64("2024-01", "M") + np.asarray(month).astype("timedelta64[M]")
    return months.astype("datetime64[s]").view(np.int64)


WINDOW_END = int(month_start(WINDOW_MONTHS))


def month_of(seconds: np.ndarray) -> np.ndarray:
    """Month index (0 = 2024-01) of each time."""
    months = np.asarray(seconds).view("datetime64[s]").astype("datetime64[M]")
    return (months - np.datetime64("2024-01", "M")).astype(np.int64)
