"""The pipeline steps' bookkeeping: atomic JSON files, done markers, and the idempotent step wrapper.

A step ends by writing ``steps/<step>[.<domain>].done.json`` atomically; a step whose marker exists
returns at once, so a re-run resumes after the last finished step.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anna_models.config import StepContext


def _plain(value: Any) -> Any:
    """JSON-safe copy: NaN/inf (an undefined metric) become null, which every JSON reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically: a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_plain(payload), indent=2, default=str))
    tmp.replace(path)


def marker_path(run_dir: Path, name: str) -> Path:
    """Where the step (or ``<step>.<domain>``) called ``name`` records that it finished."""
    return Path(run_dir) / "steps" / f"{name}.done.json"


def idempotent(fn: Callable[..., dict], step: str | None = None) -> Callable[..., None]:
    """Skip when the step's marker exists; otherwise run it, report progress and write the marker."""
    base = step or fn.__name__

    @functools.wraps(fn)
    def wrapper(ctx: StepContext, *domain: str) -> None:
        name = base if not domain else f"{base}.{domain[0]}"
        marker = marker_path(ctx.run_dir, name)
        if marker.exists():
            ctx.progress(name, state="done", message="already done")
            return
        ctx.progress(name, state="running")
        started = time.perf_counter()
        summary = fn(ctx, *domain) or {}
        seconds = round(time.perf_counter() - started, 3)
        write_json(marker, {"step": name, "seconds": seconds, "finished_at": time.time(), **summary})
        ctx.progress(name, state="done", message=f"{seconds:.1f} s")

    return wrapper
