"""Local files: samples under ``data/samples``, run artifacts under ``data/runs/<id>``, score jobs' rows and
scores under ``data/score-jobs/<id>``."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anna_backend.service_layer.ports import RunArtifacts, SampleStore, ScoreJobFiles

if TYPE_CHECKING:
    import pandas as pd


def tail(path: Path, *, lines: int = 30) -> str:
    """The last lines of a text file ('' if it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except OSError:
        return ""


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` atomically: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer, thread or process
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class LocalRunArtifacts(RunArtifacts):
    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)

    def run_dir(self, run_id: int) -> Path:
        return self.runs_dir / str(run_id)

    def report(self, run_id: int) -> dict[str, Any] | None:
        return _read_json(self.run_dir(run_id) / "report.json")

    def registered(self, run_id: int) -> dict[str, Any] | None:
        return _read_json(self.run_dir(run_id) / "registered.json")

    def log_tail(self, run_id: int, *, lines: int = 30) -> str:
        return tail(self.run_dir(run_id) / "driver.log", lines=lines)


class LocalSampleStore(SampleStore):
    """``<samples_dir>/<fingerprint>.parquet``, written atomically, shared by every task with that content."""

    def __init__(self, samples_dir: Path) -> None:
        self.samples_dir = Path(samples_dir)

    def save(self, fingerprint: str, frame: pd.DataFrame) -> tuple[str, bool]:
        path = self.samples_dir / f"{fingerprint}.parquet"
        if path.exists():
            return str(path), False
        write_parquet(frame, path)
        return str(path), True

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def exists(self, path: str) -> bool:
        return Path(path).is_file()


class LocalScoreJobFiles(ScoreJobFiles):
    """``<root>/<job id>/input.parquet`` and ``scores.parquet``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save_input(self, job_id: int, rows: pd.DataFrame) -> str:
        path = self.root / str(job_id) / "input.parquet"
        write_parquet(rows, path)
        return str(path)

    def save_scores(self, job_id: int, scores: pd.DataFrame) -> str:
        path = self.root / str(job_id) / "scores.parquet"
        write_parquet(scores, path)
        return str(path)

    def read(self, path: str) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(path)

    def remove(self, job_id: int) -> None:
        shutil.rmtree(self.root / str(job_id), ignore_errors=True)
