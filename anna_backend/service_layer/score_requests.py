"""Full mode's handling of a score request: run its job in the worker's thread, then settle the request.

The request is acked only after the job's outcome is written, so a worker killed mid-job leaves it unacked
and the broker redelivers it: the next worker takes the ``running`` job over as attempt + 1. A redelivered
job that keeps losing its worker (killed, or held past RabbitMQ's ``consumer_timeout``) is given up after
``ANNA_REQUEST_RETRIES + 1`` attempts: it fails and the request is dead-lettered.

- an unknown job, or one of another run: dead letter;
- a scoring error (no model, labels the model does not know): the job fails, the request is acked;
- an error that may pass (``ServiceUnavailable``, ``OSError``, the database): the job goes back to the
  queue and the request is retried with backoff; past the retry limit the job fails with the reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from anna_backend.domain.errors import NotFound
from anna_backend.domain.score_job import ScoreJobState
from anna_backend.service_layer.ports import Backend
from anna_backend.service_layer.scoring import execute_score_job, fail_score_job, get_score_job

if TYPE_CHECKING:
    from anna_backend.service_layer.worker import Deliveries

log = logging.getLogger(__name__)


def handle_score_request(backend: Backend, deliveries: Deliveries, delivery: Any) -> None:
    """Run the job of a score request (``delivery.request.kind == "score"``), then ack, retry or
    dead-letter the request."""
    request = delivery.request
    job_id = request.job_id
    if job_id is None:
        deliveries.dead_letter(delivery, f"a score request names its job; job_id is missing "
                                         f"(run {request.run_id})")
        return
    # Redelivered: the worker that held it died or lost its connection. Retried: the try before ended in
    # an error. Either way a job still running has no live holder, so it is taken over.
    again = bool(delivery.redelivered or delivery.retries > 0)
    try:
        job = get_score_job(backend, job_id)
        if job.run_id != request.run_id:
            raise NotFound(f"score job {job_id} belongs to run {job.run_id}, not to run {request.run_id}")
        if again and job.state is ScoreJobState.RUNNING and job.attempt > backend.settings.request_retries:
            reason = (f"gave up after {job.attempt} attempts: each time, the worker scoring it died or lost "
                      "the broker (a job running longer than RabbitMQ's consumer_timeout does that too)")
            fail_score_job(backend, job_id, reason)
            deliveries.dead_letter(delivery, reason)
            return
        execute_score_job(backend, job_id, take_over=again, raise_transient=True)
    except NotFound as error:
        log.error("score job %s: %s", job_id, error)
        deliveries.dead_letter(delivery, str(error))
        return
    except Exception as error:  # the database, the disk or a service may come back: retry with backoff
        reason = f"{type(error).__name__}: {error}"
        log.warning("score job %s: %s (try %s)", job_id, reason, delivery.retries + 1)
        if not deliveries.retry(delivery, reason):
            fail_score_job(backend, job_id, f"could not score after {delivery.retries + 1} tries: {reason}")
        return
    deliveries.ack(delivery)
