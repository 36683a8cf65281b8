"""Step progress as files: ``<run_dir>/progress/<step>.json``, for executors that cannot reach ANNA's
database (Airflow tasks). Whoever follows the run reads them back with ``read_progress``.

``FileProgress`` is a ``StepContext.progress`` callback: it merges each report into the step's file and
writes at most once per interval, except that a change of state is written at once.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from anna_models.steps import write_json

FIELDS = ("state", "epoch", "max_epochs", "unit", "metric", "metric_name", "message", "fraction")


def progress_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "progress"


class FileProgress:
    def __init__(self, run_dir: Path, interval_s: float = 1.0) -> None:
        self.dir = progress_dir(run_dir)
        self.interval_s = interval_s
        self._fields: dict[str, dict[str, Any]] = {}
        self._written_at: dict[str, float] = {}
        self._dirty: set[str] = set()

    def __call__(self, step: str, **fields: Any) -> None:
        current = self._fields.setdefault(step, self._read(step))
        changes_state = "state" in fields and fields["state"] != current.get("state")
        current.update({k: v for k, v in fields.items() if k in FIELDS})
        self._dirty.add(step)
        if changes_state or time.monotonic() - self._written_at.get(step, -math.inf) >= self.interval_s:
            self._write(step)

    def flush(self) -> None:
        for step in list(self._dirty):
            self._write(step)

    def _read(self, step: str) -> dict[str, Any]:
        path = self.dir / f"{step}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def _write(self, step: str) -> None:
        write_json(self.dir / f"{step}.json", {**self._fields[step], "updated_at": time.time()})
        self._written_at[step] = time.monotonic()
        self._dirty.discard(step)


def read_progress(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every step's last written progress, by step name; a file being replaced is simply skipped."""
    found: dict[str, dict[str, Any]] = {}
    folder = progress_dir(run_dir)
    if not folder.is_dir():
        return found
    for path in folder.glob("*.json"):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found
