"""Score jobs: retro-inference of one file with a succeeded run's model, run by whoever takes queued work.

A job moves ``queued → running → succeeded | failed``; a queued job may also fail (it could not be queued).
The way back is another try: a job whose holder died (or that hit a passing error) becomes ``queued``
again, or is taken over while ``running``, each time with ``attempt + 1``. Every write of an outcome is
guarded by the attempt, so a holder that was replaced never overwrites the newer try.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from anna_backend.domain.errors import Conflict
from anna_backend.domain.model import utcnow


class ScoreJobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINISHED_JOB_STATES = frozenset({ScoreJobState.SUCCEEDED, ScoreJobState.FAILED})
JOB_TRANSITIONS: dict[ScoreJobState, frozenset[ScoreJobState]] = {
    ScoreJobState.QUEUED: frozenset({ScoreJobState.RUNNING, ScoreJobState.FAILED}),
    ScoreJobState.RUNNING: frozenset({ScoreJobState.SUCCEEDED, ScoreJobState.FAILED}),
    ScoreJobState.SUCCEEDED: frozenset(),
    ScoreJobState.FAILED: frozenset(),
}


@dataclass
class ScoreJob:
    """Rows of one uploaded file (validated, stored at ``input_path``) to score with run ``run_id``."""

    run_id: int
    filename: str
    n_rows: int
    created_by: str
    input_path: str = ""
    id: int | None = None
    state: ScoreJobState = ScoreJobState.QUEUED
    attempt: int = 1
    output_path: str | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_JOB_STATES

    def transition(self, state: ScoreJobState, now: datetime | None = None) -> None:
        """Move to ``state`` if the state machine allows it, else raise ``Conflict``."""
        if state not in JOB_TRANSITIONS[self.state]:
            raise Conflict(f"score job {self.id} is {self.state.value}; it cannot become {state.value}")
        now = now or utcnow()
        self.state = state
        if state is ScoreJobState.RUNNING:
            self.started_at = now
        if state in FINISHED_JOB_STATES:
            self.finished_at = now

    def succeed(self, *, output_path: str, metrics: dict[str, Any] | None,
                now: datetime | None = None) -> None:
        self.transition(ScoreJobState.SUCCEEDED, now)
        self.output_path, self.metrics, self.error = output_path, metrics, None

    def fail(self, error: str, now: datetime | None = None) -> None:
        self.transition(ScoreJobState.FAILED, now)
        self.error = error

    def requeue(self) -> None:
        """Another try: the running attempt is gone (its holder died, or it hit an error that may pass)."""
        if self.state is not ScoreJobState.RUNNING:
            raise Conflict(f"score job {self.id} is {self.state.value}; only a running job is re-queued")
        self.state = ScoreJobState.QUEUED
        self.attempt += 1
        self.started_at = None
