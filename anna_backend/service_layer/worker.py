"""Full mode's worker: takes train requests from the broker, starts runs in the orchestrator, follows them;
takes score requests and runs their jobs.

The database is the state of record and the broker only carries the work, so any number of workers may run:

- A train request for a queued run claims it in one conditional update (at most N runs building or
  running, across all workers), builds it, records it running, starts its pipeline and only then acks.
  With no free slot the worker keeps the request (prefetch 1) and tries again every poll; after
  ``hold_s`` it hands it back to the queue, so the broker's consumer timeout is never near.
- A request is idempotent. The orchestrator names a run's pipeline after the run and attempt, so a
  redelivered request (the worker died before its ack) finishes the build and start it interrupted, and
  never starts a second pipeline run. A request for a finished run is dropped.
- Every worker follows every running run: it copies the pipeline's task states and the steps' progress
  files into the run's steps and writes the outcome. Writes are guarded by state and attempt, so two
  workers following one run change nothing twice; a killed worker loses nothing, its runs go on in the
  orchestrator and the others (or it, restarted) keep following them.
- Requests that cannot be valid (bad body, unknown run, unreadable configuration) go to the dead letters at
  once; failures that may pass (the orchestrator unreachable) are retried with backoff, and after the
  retry limit the run fails with the error and the request goes to the dead letters.
- A score request runs its job in the worker's thread and is acked once the job's outcome is written
  (``score_requests``): meanwhile this worker takes no other request and follows no run (the other
  workers do; the broker's heartbeats go on in the consumer's own I/O thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from anna_backend.domain.errors import NotFound
from anna_backend.domain.model import PROGRESS_FIELDS, Run, RunState, utcnow
from anna_backend.service_layer.ports import Backend, Orchestrator, PipelineStatus, StepStatus
from anna_backend.service_layer.run_progress import (
    begin_attempt,
    fail_run,
    finish_run,
    metrics_summary,
    record_progress,
)
from anna_backend.service_layer.score_requests import handle_score_request

log = logging.getLogger(__name__)


class Delivery(Protocol):
    @property
    def request(self) -> Any: ...  # .kind, .run_id, .job_id; None when the body is not a request

    @property
    def problem(self) -> str | None: ...

    @property
    def redelivered(self) -> bool: ...

    @property
    def retries(self) -> int: ...


class Deliveries(Protocol):
    """The consumer side of the request queue (``adapters.rabbitmq.RequestConsumer``)."""

    def get(self, timeout_s: float) -> Any: ...  # a Delivery, or None after timeout_s

    def ack(self, delivery: Any) -> None: ...

    def requeue(self, delivery: Any) -> None: ...

    def retry(self, delivery: Any, reason: str) -> bool: ...

    def dead_letter(self, delivery: Any, reason: str) -> None: ...


class Unrecoverable(Exception):
    """A request that no retry can make valid."""


@dataclass
class _Held:
    delivery: Any
    since: float


@dataclass
class Worker:
    backend: Backend
    deliveries: Deliveries
    orchestrator: Orchestrator
    hold_s: float = 60.0
    _held: _Held | None = None
    _written: dict[tuple[int, int, str], dict[str, Any]] = field(default_factory=dict)
    _last_follow: float = 0.0

    # ------------------------------------------------------------------------------------------- the loop

    def serve(self, stop: threading.Event, *, healthy: Callable[[], bool] = lambda: True) -> None:
        """Rounds until ``stop`` is set or ``healthy()`` (the broker connection) no longer holds."""
        settings = self.backend.settings
        log.info("worker started: at most %s run(s) at once across all workers", settings.max_concurrent_runs)
        while not stop.is_set() and healthy():
            try:
                self.tick(wait_s=min(1.0, settings.poll_interval_s))
            except Exception:  # one bad round must not end the worker; the next round retries
                log.exception("worker round failed")
                stop.wait(settings.poll_interval_s)
        if self._held is not None and healthy():
            self.deliveries.requeue(self._held.delivery)
        self._held = None  # on a lost connection the broker has taken it back already
        log.info("worker stopped")

    def tick(self, wait_s: float = 0.0) -> None:
        """One round: settle the held request or take a new one, then follow the running runs when due."""
        if self._held is not None:
            self._try_held()
            if self._held is not None:  # still no free slot
                time.sleep(wait_s)
        else:
            delivery = self.deliveries.get(wait_s)
            if delivery is not None:
                self.handle(delivery)
        if time.monotonic() - self._last_follow >= self.backend.settings.poll_interval_s:
            self._last_follow = time.monotonic()
            self.follow()

    # ---------------------------------------------------------------------------------------- requests

    def handle(self, delivery: Any) -> None:
        request = delivery.request
        if request is None:
            self.deliveries.dead_letter(delivery, delivery.problem or "not an ANNA request")
            return
        if request.kind == "score":
            handle_score_request(self.backend, self.deliveries, delivery)
            return
        if request.kind != "train":
            self.deliveries.dead_letter(delivery, f"this worker takes train and score requests, not "
                                                  f"{request.kind!r}")
            return
        self._held = _Held(delivery, time.monotonic())
        self._try_held()

    def _try_held(self) -> None:
        assert self._held is not None
        delivery = self._held.delivery
        try:
            done = self._advance(delivery.request.run_id)
        except Unrecoverable as error:
            self._held = None
            log.error("run %s: %s", delivery.request.run_id, error)
            self.deliveries.dead_letter(delivery, str(error))
            return
        except Exception as error:  # the orchestrator or builder may come back: retry with backoff
            self._held = None
            reason = f"{type(error).__name__}: {error}"
            log.warning("run %s: %s (try %s)", delivery.request.run_id, reason, delivery.retries + 1)
            if not self.deliveries.retry(delivery, reason):
                self._fail_active(delivery.request.run_id,
                                  f"could not start the run after {delivery.retries + 1} tries: {reason}")
            return
        if done:
            self._held = None
            self.deliveries.ack(delivery)
        elif time.monotonic() - self._held.since >= self.hold_s:
            self._held = None
            self.deliveries.requeue(delivery)  # no slot for a while: let the broker hold it, not us

    def _advance(self, run_id: int) -> bool:
        """Take the run as far as this request can: True when the request is settled, False to wait for a
        free slot."""
        with self.backend.uow() as uow:
            run = uow.runs.get(run_id)
            if run is None:
                raise Unrecoverable(f"no run {run_id} in the database")
            if run.state is RunState.QUEUED:
                run = uow.runs.claim_next(max_active=self.backend.settings.max_concurrent_runs, now=utcnow(),
                                          run_id=run_id)
                uow.commit()
            if run is None:
                current = uow.runs.get(run_id)
                # Still queued: every slot is taken, wait. Otherwise it was cancelled, or another worker
                # holding a copy of this request claimed it: nothing left for this one.
                return current is None or current.state is not RunState.QUEUED
        if run.state is RunState.BUILDING:
            self._build_and_start(run)
        elif run.state is RunState.RUNNING:
            self.orchestrator.start(run)  # a worker died between recording and starting it
        return True

    def _build_and_start(self, run: Run) -> None:
        assert run.id is not None
        try:
            config = self.backend.model_config.read_run_config(run.id)
        except (NotFound, ValueError, KeyError) as error:
            self._fail_active(run.id, f"the run's configuration cannot be read: {error}")
            raise Unrecoverable(f"run {run.id}: its configuration cannot be read: {error}") from None
        built = self.backend.builder.build(run)
        from anna_models.pipeline import step_names  # numpy and pandas: only where runs are started

        begin_attempt(self.backend, run.id, step_names(config.domains))
        with self.backend.uow() as uow:
            current = uow.runs.get(run.id, for_update=True)
            if current is None or current.state is not RunState.BUILDING or current.attempt != run.attempt:
                return  # cancelled while it was built
            current.start(None)
            current.git_commit = current.git_commit or built
            uow.runs.save(current)
            uow.commit()
        self.orchestrator.start(current)
        log.info("run %s attempt %s started in the orchestrator", run.id, run.attempt)

    def _fail_active(self, run_id: int, error: str) -> None:
        with self.backend.uow() as uow:
            run = uow.runs.get(run_id)
        if run is not None and run.is_active:
            fail_run(self.backend, run_id=run_id, attempt=run.attempt, error=error)

    # --------------------------------------------------------------------------------------- following

    def follow(self) -> None:
        """Copy every running run's pipeline state into the database; settle the ones that ended."""
        with self.backend.uow() as uow:
            running = uow.runs.in_states(frozenset({RunState.RUNNING}))
        for run in running:
            try:
                self._follow(run)
            except Exception:
                log.exception("run %s: could not follow its pipeline", run.id)

    def _follow(self, run: Run) -> None:
        assert run.id is not None
        status = self.orchestrator.status(run)
        if status.state == "missing":
            log.warning("run %s: no pipeline run in the orchestrator; starting it", run.id)
            self.orchestrator.start(run)
            return
        failed = first_failure(status)
        self._copy_steps(run, status, failed)
        if failed is not None and status.state != "succeeded":
            # A step failed for good (retries spent): end the run now, free its slot, stop what is left.
            if fail_run(self.backend, run_id=run.id, attempt=run.attempt,
                        error=f"step {failed.name} failed: {failed.error}"):
                self.orchestrator.stop(run)
        elif status.state == "succeeded":
            registered = self.backend.artifacts.registered(run.id) or {}
            if finish_run(self.backend, run_id=run.id, attempt=run.attempt,
                          metrics=metrics_summary(self.backend.artifacts.report(run.id)),
                          model_uri=registered.get("model_uri")):
                log.info("run %s succeeded", run.id)
        elif status.state == "failed":
            fail_run(self.backend, run_id=run.id, attempt=run.attempt,
                     error=status.error or "the pipeline run failed in the orchestrator")

    def _copy_steps(self, run: Run, status: PipelineStatus, failed: StepStatus | None) -> None:
        from anna_models.progress import read_progress

        assert run.id is not None
        progress = read_progress(self.backend.artifacts.run_dir(run.id))
        for step in status.steps:
            fields = _step_fields(step, progress.get(step.name, {}))
            if failed is not None and step.state == "failed" and step is not failed:
                fields["message"] = f"stopped: step {failed.name} failed first"
            key = (run.id, run.attempt, step.name)
            if self._written.get(key) == fields:
                continue
            if record_progress(self.backend, run_id=run.id, attempt=run.attempt, step=step.name,
                               fields=fields):
                self._written[key] = fields


def first_failure(status: PipelineStatus) -> StepStatus | None:
    """The step that failed first (``StepStatus.failure_order``), among those with an error to show."""
    failed = [s for s in status.steps if s.state == "failed" and s.error]
    return min(failed, key=StepStatus.failure_order, default=None)


def _step_fields(step: StepStatus, progress: dict[str, Any]) -> dict[str, Any]:
    """A run step's fields from the orchestrator's task state (which decides the state) and the step's own
    progress file (epochs, metric, message)."""
    fields = {k: progress[k] for k in PROGRESS_FIELDS if k in progress}
    state = {"retrying": "running"}.get(step.state, step.state)
    fields["state"] = state
    if step.state == "retrying":
        fields["message"] = f"retrying (try {step.try_number + 1}) after: {step.error or 'an error'}"[:2000]
    elif step.state == "failed" and step.error:
        fields["message"] = step.error[:2000]
    return fields
