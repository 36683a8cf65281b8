"""Use cases around tasks, marts and samples."""

from __future__ import annotations

import logging
import re
from pathlib import PurePath
from typing import Any

import numpy as np

from anna_backend.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from anna_backend.domain.model import Sample, Task, User
from anna_backend.service_layer.ports import AbstractUnitOfWork, Backend
from anna_backend.service_layer.sample_files import MartCoverage, SampleRules, validate_sample
from anna_models.config import DEFAULT_METRIC, METRICS, TASK_TYPES

log = logging.getLogger(__name__)

TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{1,62}")


def require_writer(user: User) -> None:
    if not user.can_write:
        raise Forbidden(f"role {user.role.value!r} may read but not change anything; ask an analyst")


def resolve_task(uow: AbstractUnitOfWork, task_ref: str | int) -> Task:
    """A task by id or by name; a name made of digits is tried as an id first."""
    ref = str(task_ref)
    task = uow.tasks.get(int(ref)) if ref.isdigit() else None
    task = task or uow.tasks.get_by_name(ref)
    if task is None:
        raise NotFound(f"no task {ref!r}")
    return task


def list_marts(backend: Backend) -> list[dict[str, Any]]:
    return backend.marts.manifests()


def _manifests_by_name(backend: Backend) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in backend.marts.manifests()}


def create_task(backend: Backend, *, user: User, name: str, task_type: str, metric: str | None = None,
                domains: list[str] | None = None, description: str | None = None) -> Task:
    """A new task, with its branch in the model-config repo."""
    require_writer(user)
    if not TASK_NAME.fullmatch(name):
        raise InvalidInput.field(("body", "name"), "a task name is 2-63 characters of a-z, 0-9, _ and -, "
                                                   "starting with a letter or digit")
    if task_type not in TASK_TYPES:
        raise InvalidInput.field(("body", "task_type"), f"task_type must be one of {', '.join(TASK_TYPES)}")
    metric = metric or DEFAULT_METRIC[task_type]
    if metric not in METRICS[task_type]:
        raise InvalidInput.field(("body", "metric"), f"metric {metric!r} does not fit a {task_type} task; "
                                                     f"choose one of {', '.join(METRICS[task_type])}")
    available = _manifests_by_name(backend)
    if not available:
        raise InvalidInput.field(("body", "domains"), f"there are no data marts under "
                                                      f"{backend.settings.marts_dir}; build them first "
                                                      "(e.g. `anna demo`)")
    chosen = list(dict.fromkeys(domains)) if domains else sorted(available)
    unknown = [d for d in chosen if d not in available]
    if unknown:
        raise InvalidInput.field(("body", "domains"), f"unknown data domain(s) {unknown}; available: "
                                                      f"{sorted(available)}")
    with backend.uow() as uow:
        if uow.tasks.get_by_name(name) is not None:
            raise Conflict(f"task name {name!r} is taken; choose another")
        task = uow.tasks.add(Task(name=name, task_type=task_type, metric=metric, domains=chosen,
                                  description=description or "", created_by=user.username))
        task.git_commit = backend.model_config.create_task(task)
        uow.tasks.save(task)
        uow.commit()
    log.info("task %s (%s) created by %s", task.name, task.id, user.username)
    return task


def get_task(backend: Backend, task_ref: str | int) -> Task:
    with backend.uow() as uow:
        return resolve_task(uow, task_ref)


def list_tasks(backend: Backend) -> list[Task]:
    with backend.uow() as uow:
        return uow.tasks.list_all()


def _coverage(backend: Backend, task: Task) -> list[MartCoverage]:
    available = _manifests_by_name(backend)
    missing = [d for d in task.domains if d not in available]
    if missing:
        raise Conflict(f"the task's data mart(s) {missing} are gone from {backend.settings.marts_dir}")

    def stamp(value: str | None) -> np.datetime64:
        return np.datetime64(value or "NaT", "s")

    return [MartCoverage(name=d, time_min=stamp(available[d].get("time_min")),
                         time_max=stamp(available[d].get("time_max")), client_ids=backend.marts.client_ids(d))
            for d in task.domains]


def upload_sample(backend: Backend, *, user: User, task_ref: str | int, filename: str,
                  content: bytes) -> Sample:
    """Validate a sample file and store it normalised; the same content again returns the stored sample."""
    require_writer(user)
    filename = PurePath(filename or "sample").name
    task = get_task(backend, task_ref)
    assert task.id is not None
    rules = SampleRules(task_type=task.task_type, min_rows=backend.settings.min_sample_rows,
                        min_positives=backend.settings.min_positives, marts=_coverage(backend, task))
    valid = validate_sample(content, filename, rules)
    with backend.uow() as uow:
        existing = uow.samples.find(task.id, valid.fingerprint)
        if existing is not None and backend.sample_store.exists(existing.path):
            return existing
        path, created = backend.sample_store.save(valid.fingerprint, valid.frame)
        try:
            if existing is not None:  # its file was lost: the upload restored it
                return existing
            sample = uow.samples.add(Sample(
                task_id=task.id, filename=filename, fingerprint=valid.fingerprint, path=path,
                n_rows=valid.n_rows, n_clients=valid.n_clients,
                report_date_min=valid.report_date_min.date(), report_date_max=valid.report_date_max.date(),
                target_summary=valid.target_summary, created_by=user.username))
            uow.commit()
        except BaseException:
            if created:
                backend.sample_store.remove(path)
            raise
    log.info("sample %s (%s rows) stored for task %s", sample.id, sample.n_rows, task.name)
    return sample


def list_samples(backend: Backend, task_ref: str | int) -> list[Sample]:
    with backend.uow() as uow:
        task = resolve_task(uow, task_ref)
        assert task.id is not None
        return uow.samples.list_for_task(task.id)
