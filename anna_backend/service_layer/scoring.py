"""Retro-inference: score a file with a succeeded run's model, at once or as a queued score job.

``score_sample`` answers in the request (small files). ``submit_score_job`` validates the file the same way,
stores its rows and records a queued job, then hands it to the queue; whoever takes it (embedded: the
dispatcher's scoring thread; full mode: an ``anna worker``) calls ``execute_score_job``. Executing is
idempotent: a finished job is left alone, a queued one is claimed in one conditional update, and a running
one is taken over (attempt + 1) only by a caller that knows its holder is gone. Outcomes are written only
while the job is still running on the writer's attempt, so a replaced holder changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anna_backend.domain.errors import Conflict, NotFound, ServiceUnavailable
from anna_backend.domain.model import Run, RunState, Task, User, utcnow
from anna_backend.domain.score_job import ScoreJob, ScoreJobState
from anna_backend.service_layer.ports import Backend
from anna_backend.service_layer.runs import json_safe
from anna_backend.service_layer.sample_files import parse_scoring_rows
from anna_backend.service_layer.tasks import require_writer

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Errors that may pass (a service down, a full or flaky disk): a queue that retries may try the job again.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ServiceUnavailable, OSError)


@dataclass(frozen=True)
class ScoreResult:
    run_id: int
    scores: pd.DataFrame  # client_id, report_date, score (+ class probabilities), in file order
    metrics: dict[str, Any] | None


def _scorable(backend: Backend, run_id: int) -> tuple[Run, Task]:
    """The run and its task, if the run's model can score: 404 unknown run, 409 not succeeded."""
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        task = uow.tasks.get(run.task_id)
    if task is None:
        raise NotFound(f"the task of run {run_id} is gone")
    if run.state is not RunState.SUCCEEDED:
        raise Conflict(f"run {run_id} is {run.state.value}; only a succeeded run's model can score")
    return run, task


def score_sample(backend: Backend, *, user: User, run_id: int, filename: str, content: bytes) -> ScoreResult:
    """Score the rows of a file with a succeeded run's model, in this request."""
    require_writer(user)
    run, task = _scorable(backend, run_id)
    rows = parse_scoring_rows(content, filename or "sample.csv", task.task_type)
    scores, metrics = backend.scorer.score(run, task, rows)
    return ScoreResult(run_id=run_id, scores=scores, metrics=metrics)


def submit_score_job(backend: Backend, *, user: User, run_id: int, filename: str, content: bytes) -> ScoreJob:
    """Validate the file (422 naming row and column; nothing stored), record a queued job with its rows
    stored as a file, and hand it to the queue (503, the job failed with the reason, if it cannot)."""
    require_writer(user)
    _, task = _scorable(backend, run_id)
    rows = parse_scoring_rows(content, filename or "sample.csv", task.task_type)
    job = ScoreJob(run_id=run_id, filename=filename or "sample.csv", n_rows=len(rows),
                   created_by=user.username)
    with backend.uow() as uow:
        # The rows are stored before the job is committed, so nobody can claim a job without its rows (on
        # SQLite this holds the write lock while the Parquet file is written: ~0.15 s per million rows).
        uow.score_jobs.add(job)
        assert job.id is not None
        try:
            job.input_path = backend.score_files.save_input(job.id, rows)
            uow.score_jobs.save(job)
            uow.commit()
        except BaseException:
            backend.score_files.remove(job.id)
            raise
    log.info("score job %s (%s rows, run %s) queued by %s", job.id, job.n_rows, run_id, user.username)
    try:
        backend.queue.submitted_score(job.id, run_id)
    except ServiceUnavailable as error:
        # Recorded, but nobody will ever take it: end it now, saying why, so nothing hangs.
        fail_score_job(backend, job.id, f"could not be queued: {error}")
        raise
    return job


def get_score_job(backend: Backend, job_id: int) -> ScoreJob:
    with backend.uow() as uow:
        job = uow.score_jobs.get(job_id)
    if job is None:
        raise NotFound(f"no score job {job_id}")
    return job


def score_job_result(backend: Backend, job_id: int) -> ScoreResult:
    """The scores (and metrics) of a succeeded job; 409 until then."""
    job = get_score_job(backend, job_id)
    if job.state is not ScoreJobState.SUCCEEDED or job.output_path is None:
        reason = f": {job.error}" if job.state is ScoreJobState.FAILED else ""
        raise Conflict(f"score job {job_id} is {job.state.value}{reason}; its scores exist once it has "
                       "succeeded")
    scores = backend.score_files.read(job.output_path)
    return ScoreResult(run_id=job.run_id, scores=scores, metrics=job.metrics)


def execute_score_job(backend: Backend, job_id: int, *, take_over: bool = False,
                      raise_transient: bool = False) -> ScoreJob:
    """Claim the job, score its rows, store the scores, succeed; returns the job as it then is.

    ``take_over``: the caller knows the job's previous holder is gone (a redelivered or retried request),
    so a running job is claimed again as the next attempt. Any error fails the job with
    ``"Type: message"``, except that with ``raise_transient`` an error in ``TRANSIENT_ERRORS`` puts the job
    back in the queue (attempt + 1) and is raised, for the caller to retry. ``NotFound``: no such job.
    """
    job = get_score_job(backend, job_id)
    if job.is_finished:
        return job
    with backend.uow() as uow:
        claimed = uow.score_jobs.claim(job_id, now=utcnow(),
                                       takeover_attempt=job.attempt if take_over else None)
        uow.commit()
    if claimed is None:  # finished meanwhile, or somebody else holds it
        return get_score_job(backend, job_id)
    if claimed.attempt > 1:
        log.warning("score job %s: attempt %s", job_id, claimed.attempt)
    try:
        output, metrics = _score(backend, claimed)
    except Exception as error:
        if raise_transient and isinstance(error, TRANSIENT_ERRORS):
            _requeue(backend, claimed)
            raise
        log.exception("score job %s failed", job_id)
        fail_score_job(backend, job_id, f"{type(error).__name__}: {error}", attempt=claimed.attempt)
        return get_score_job(backend, job_id)
    with backend.uow() as uow:
        current = uow.score_jobs.get(job_id, for_update=True)
        if _may_write(current, claimed.attempt):
            assert current is not None
            current.succeed(output_path=output, metrics=json_safe(metrics))
            uow.score_jobs.save(current)
            uow.commit()
            log.info("score job %s succeeded (%s rows)", job_id, current.n_rows)
    return get_score_job(backend, job_id)


def _score(backend: Backend, job: ScoreJob) -> tuple[str, dict[str, Any] | None]:
    assert job.id is not None
    run, task = _scorable(backend, job.run_id)
    rows = backend.score_files.read(job.input_path)
    scores, metrics = backend.scorer.score(run, task, rows)
    return backend.score_files.save_scores(job.id, scores), metrics


def _may_write(job: ScoreJob | None, attempt: int) -> bool:
    return job is not None and job.state is ScoreJobState.RUNNING and job.attempt == attempt


def _requeue(backend: Backend, claimed: ScoreJob) -> None:
    assert claimed.id is not None
    with backend.uow() as uow:
        current = uow.score_jobs.get(claimed.id, for_update=True)
        if _may_write(current, claimed.attempt):
            assert current is not None
            current.requeue()
            uow.score_jobs.save(current)
            uow.commit()


def fail_score_job(backend: Backend, job_id: int, error: str, *, attempt: int | None = None) -> bool:
    """Fail a job that has not finished (and, given ``attempt``, is still running on it); False if not."""
    with backend.uow() as uow:
        job = uow.score_jobs.get(job_id, for_update=True)
        if job is None or job.is_finished or (attempt is not None and not _may_write(job, attempt)):
            return False
        job.fail(error[:4000])
        uow.score_jobs.save(job)
        uow.commit()
    log.warning("score job %s failed: %s", job_id, error)
    return True


def requeue_interrupted(backend: Backend) -> list[int]:
    """Embedded start-up: jobs a dead server left running go back to the queue as their next attempt."""
    with backend.uow() as uow:
        left = uow.score_jobs.in_state(ScoreJobState.RUNNING)
        for job in left:
            job.requeue()
            uow.score_jobs.save(job)
        uow.commit()
    for job in left:
        log.warning("score job %s re-queued as attempt %s", job.id, job.attempt)
    return [job.id for job in left if job.id is not None]


def next_queued(backend: Backend) -> int | None:
    """The oldest queued job's id."""
    with backend.uow() as uow:
        queued = uow.score_jobs.in_state(ScoreJobState.QUEUED, limit=1)
    return queued[0].id if queued else None
