"""What a run's driver (and the dispatcher, for a dead driver) writes back: step progress and the outcome.

Every write is guarded by the attempt number: a driver only writes while the run is still building or
running *and* still on the driver's attempt, so a stale driver (one recovery has replaced) never
overwrites a newer attempt, and a cancelled run stays cancelled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from anna_backend.domain.model import Run, RunState, RunStep, utcnow
from anna_backend.service_layer.ports import AbstractUnitOfWork, Backend

log = logging.getLogger(__name__)


def _current(uow: AbstractUnitOfWork, run_id: int, attempt: int) -> Run | None:
    """The run if this attempt may still write to it, else None."""
    run = uow.runs.get(run_id, for_update=True)
    if run is None or run.attempt != attempt or not run.is_active:
        if run is not None:
            log.info("run %s: attempt %s may no longer write (run is %s, attempt %s)",
                     run_id, attempt, run.state.value, run.attempt)
        return None
    return run


def begin_attempt(backend: Backend, run_id: int, step_names: Iterable[str]) -> Run | None:
    """The run a driver is about to execute, with a pending row for every step it does not have yet.

    None if the run is not building or running (cancelled meanwhile, or already finished).
    """
    with backend.uow() as uow:
        run = uow.runs.get(run_id, for_update=True)
        if run is None or not run.is_active:
            return None
        known = {s.name for s in run.steps}
        for position, name in enumerate(step_names):
            if name not in known:
                run.steps.append(RunStep(name=name, position=position))
            else:
                step = run.step(name)
                assert step is not None
                step.position = position
        uow.runs.save(run)
        uow.commit()
        return run


def record_progress(backend: Backend, *, run_id: int, attempt: int, step: str,
                    fields: dict[str, Any]) -> bool:
    """Apply one progress report to a step; False when this attempt may no longer write."""
    fields = {k: _clean(v) for k, v in fields.items()}
    with backend.uow() as uow:
        run = _current(uow, run_id, attempt)
        if run is None:
            return False
        row = run.step(step)
        if row is None:
            row = RunStep(name=step, position=len(run.steps))
        row.apply(fields, utcnow())
        uow.runs.save_step(run_id, row)
        uow.commit()
        return True


def _clean(value: Any) -> Any:
    """JSON- and SQL-safe progress values: NaN/inf metrics become None, numpy scalars become Python."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finish_run(backend: Backend, *, run_id: int, attempt: int, metrics: dict[str, Any] | None,
               model_uri: str | None) -> bool:
    with backend.uow() as uow:
        run = _current(uow, run_id, attempt)
        if run is None:
            return False
        if run.state is RunState.BUILDING:  # the driver beat the dispatcher's own bookkeeping
            run.start(run.pid)
        run.succeed(metrics=metrics, model_uri=model_uri)
        uow.runs.save(run)
        uow.commit()
    log.info("run %s succeeded (attempt %s)", run_id, attempt)
    return True


def fail_run(backend: Backend, *, run_id: int, attempt: int, error: str) -> bool:
    with backend.uow() as uow:
        run = _current(uow, run_id, attempt)
        if run is None:
            return False
        run.fail(error)
        for step in run.steps:
            if step.state.value == "running":
                step.apply({"state": "failed"}, utcnow())
        uow.runs.save(run)
        uow.commit()
    log.warning("run %s failed (attempt %s): %s", run_id, attempt, error.splitlines()[0] if error else "")
    return True


def metrics_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"test": {blended test metrics}, "domains": {domain: {test metrics}}}`` from a run's report.json.

    report.json (anna_models.ensemble.evaluate) holds ``blend.<part>.metrics`` and
    ``domains.<domain>.<part>.metrics``.
    """
    if not report:
        return None

    def test_metrics(entry: Any) -> dict[str, float | None]:
        part = entry.get("test") if isinstance(entry, dict) else None
        metrics = part.get("metrics", part) if isinstance(part, dict) else None
        if not isinstance(metrics, dict):
            return {}
        return {k: _clean(v) for k, v in metrics.items() if isinstance(v, int | float) or v is None}

    domains = report.get("domains") or {}
    return {"test": test_metrics(report.get("blend")),
            "domains": {name: test_metrics(entry) for name, entry in domains.items()}}
