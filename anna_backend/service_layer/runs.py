"""Use cases around runs: submit, watch, cancel, read the report (scoring: ``scoring``)."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from anna_backend.domain.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from anna_backend.domain.model import Run, RunState, Sample, Task, User
from anna_backend.service_layer.ports import AbstractUnitOfWork, Backend, DeadRequest
from anna_backend.service_layer.tasks import get_task, require_writer, resolve_task
from anna_models.boosting import lightgbm_settings
from anna_models.config import FUSION, LIGHTGBM, MAX_STOPPING_SHARE, RunConfig, TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunView:
    """A run as users see it: with its task's name and, while queued, its place in the queue."""

    run: Run
    task_name: str
    queue_position: int | None


def _views(uow: AbstractUnitOfWork, runs: list[Run]) -> list[RunView]:
    names = uow.runs.task_names({r.task_id for r in runs})
    positions = uow.runs.queue_positions() if any(r.state is RunState.QUEUED for r in runs) else {}
    return [RunView(run=r, task_name=names.get(r.task_id, ""), queue_position=positions.get(r.id or -1))
            for r in runs]


def _get_run(uow: AbstractUnitOfWork, run_id: int, *, for_update: bool = False) -> Run:
    run = uow.runs.get(run_id, for_update=for_update)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


def get_run(backend: Backend, run_id: int) -> RunView:
    with backend.uow() as uow:
        return _views(uow, [_get_run(uow, run_id)])[0]


def list_runs(backend: Backend, *, task_ref: str | None = None, state: str | None = None) -> list[RunView]:
    """Runs, newest first, optionally of one task and in one state."""
    try:
        wanted = RunState(state) if state else None
    except ValueError:
        raise InvalidInput.field(("query", "state"), f"state must be one of "
                                                     f"{', '.join(s.value for s in RunState)}") from None
    with backend.uow() as uow:
        task_id = resolve_task(uow, task_ref).id if task_ref else None
        return _views(uow, uow.runs.search(task_id=task_id, state=wanted))


def merge_params(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, one level deep per domain key."""
    merged = copy.deepcopy(base)
    for key, values in override.items():
        merged[key] = {**merged.get(key, {}), **values}
    return merged


def _checked_params(params: dict[str, Any], task: Task) -> None:
    """422 naming the key to fix, before anything is queued: keys are 'default', the task's domains,
    'fusion' (the model over all domains) and 'lightgbm' (anna_models.boosting's settings)."""
    allowed = {"default", *task.domains, FUSION, LIGHTGBM}
    for key, values in params.items():
        if key not in allowed:
            raise InvalidInput.field(("body", "params", key), f"params keys are 'default', one of the task's "
                                                              f"domains {task.domains}, '{FUSION}' or "
                                                              f"'{LIGHTGBM}'; got {key!r}")
        if not isinstance(values, dict):
            raise InvalidInput.field(("body", "params", key), "each params entry is an object of "
                                                              "training parameters")
    try:
        lightgbm_settings(params.get(LIGHTGBM))
    except ValueError as error:
        raise InvalidInput.field(("body", "params", LIGHTGBM), str(error)) from None
    kinds = {f.name: type(f.default) for f in fields(TrainParams)}
    for model in [*task.domains, FUSION]:
        try:
            merged = TrainParams.for_domain(params, model)
        except ValueError as error:
            raise InvalidInput.field(("body", "params", model), str(error)) from None
        for name, kind in kinds.items():
            value = getattr(merged, name)
            fits = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if kind is float:
                fits = isinstance(value, int | float) and not isinstance(value, bool)
            if not fits:
                raise InvalidInput.field(("body", "params", model, name),
                                         f"{name} must be a {kind.__name__}; got {value!r}")
            if kind in (int, float) and value < 0:
                raise InvalidInput.field(("body", "params", model, name), f"{name} must not be negative")
            if name == "stopping_share" and value > MAX_STOPPING_SHARE:
                raise InvalidInput.field(("body", "params", model, name),
                                         f"stopping_share (the share of train clients an encoder stops early "
                                         f"on; 0: valid) must be at most {MAX_STOPPING_SHARE}")


def _pick_sample(uow: AbstractUnitOfWork, task: Task, sample_id: int | None) -> Sample:
    assert task.id is not None
    if sample_id is None:
        samples = uow.samples.list_for_task(task.id)
        if not samples:
            raise Conflict(f"task {task.name!r} has no sample yet; upload one first")
        return samples[-1]
    sample = uow.samples.get(sample_id)
    if sample is None or sample.task_id != task.id:
        raise NotFound(f"task {task.name!r} has no sample {sample_id}")
    return sample


def submit_run(backend: Backend, *, user: User, task_ref: str | int, sample_id: int | None = None,
               params: dict[str, Any] | None = None, seed: int = 0) -> RunView:
    """Queue a run: record it in the database and as a tagged commit in the model-config repo."""
    require_writer(user)
    task = get_task(backend, task_ref)
    if seed < 0:
        raise InvalidInput.field(("body", "seed"), "seed must not be negative")
    merged = merge_params(backend.settings.default_params, params or {})
    _checked_params(merged, task)
    manifests = {m["name"]: m for m in backend.marts.manifests()}
    missing = [d for d in task.domains if d not in manifests]
    if missing:
        raise Conflict(f"the task's data mart(s) {missing} are gone from {backend.settings.marts_dir}")
    with backend.uow() as uow:
        sample = _pick_sample(uow, task, sample_id)
        if not backend.sample_store.exists(sample.path):
            raise Conflict(f"the file of sample {sample.id} is gone; upload the sample again")
        assert sample.id is not None
        run = uow.runs.add(Run(task_id=task.id or 0, sample_id=sample.id, params=merged, seed=seed,
                               created_by=user.username))
        assert run.id is not None
        config = RunConfig(
            run_id=run.id, task_name=task.name, task_type=task.task_type, metric=task.metric,
            domains=list(task.domains), sample_path=sample.path, sample_fingerprint=sample.fingerprint,
            marts_root=str(backend.settings.marts_dir),
            mart_versions={d: str(manifests[d].get("version", "")) for d in task.domains},
            tracking_uri=backend.settings.tracking_uri, params=merged, seed=seed)
        run.git_tag, run.git_commit = backend.model_config.record_run(task, config, author=user.username)
        uow.runs.save(run)
        uow.commit()
    log.info("run %s of task %s queued by %s", run.id, task.name, user.username)
    view = get_run(backend, run.id)  # as submitted: queued, before the dispatcher can claim it
    try:
        backend.queue.submitted(run.id)
    except ServiceUnavailable as error:
        # The run is recorded but nobody will ever start it: end it now, saying why, so nothing hangs.
        with backend.uow() as uow:
            failed = _get_run(uow, run.id, for_update=True)
            if failed.state is RunState.QUEUED:
                failed.cancel()
                failed.error = f"could not be queued: {error}"
                uow.runs.save(failed)
                uow.commit()
        raise
    return view


def cancel_run(backend: Backend, *, user: User, run_id: int) -> RunView:
    """Cancel a queued, building or running run; its driver (if any) is stopped."""
    require_writer(user)
    with backend.uow() as uow:
        run = _get_run(uow, run_id, for_update=True)
        was_active = run.is_active
        run.cancel()
        uow.runs.save(run)
        uow.commit()
    if was_active:
        backend.runner.stop(run)
    log.info("run %s cancelled by %s", run_id, user.username)
    backend.queue.submitted(run_id)  # a slot may have freed up
    return get_run(backend, run_id)


def get_report(backend: Backend, run_id: int) -> dict[str, Any]:
    _require_succeeded(backend, run_id)
    report = backend.artifacts.report(run_id)
    if report is None:
        raise NotFound(f"run {run_id} has no report.json")
    return json_safe(report)


def get_plot(backend: Backend, run_id: int, name: str) -> Path:
    """A PNG file: one of the run's report plots (``anna_models.plots``), named in its ``plots``."""
    _require_succeeded(backend, run_id)
    path = backend.artifacts.run_dir(run_id) / "plots" / name
    if name == path.name and name.endswith(".png") and path.is_file():  # a bare file name: nothing outside
        return path
    names = (backend.artifacts.report(run_id) or {}).get("plots") or []  # only to say what there is
    listed = ", ".join(names) or "none (it was trained before ANNA drew plots)"
    raise NotFound(f"run {run_id} has no plot {name!r}; its plots: {listed}")


def _require_succeeded(backend: Backend, run_id: int) -> None:
    """409 unless the run has succeeded: its report and plots exist only then."""
    with backend.uow() as uow:
        run = _get_run(uow, run_id)
    if run.state is not RunState.SUCCEEDED:
        raise Conflict(f"run {run_id} is {run.state.value}; a report exists once it has succeeded")


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities (which strict JSON cannot carry) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dead_letters(backend: Backend, *, limit: int = 100) -> list[DeadRequest]:
    """What the request queue gave up on: the API shows it so nobody has to read the broker."""
    return backend.queue.dead_letters(limit)
