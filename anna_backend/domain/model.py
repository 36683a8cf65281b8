"""Entities and the run state machine.

A run moves ``queued → building → running → succeeded | failed | cancelled``; a queued run may be
cancelled, and a building or running run may also fail or be cancelled. The one way back is recovery:
a run whose driver died goes back to ``queued`` with ``attempt + 1``, and its finished steps are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from anna_backend.domain.errors import Conflict


def utcnow() -> datetime:
    return datetime.now(UTC)


class Role(StrEnum):
    ANALYST = "analyst"
    APPROVER = "approver"
    ADMIN = "admin"


class RunState(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


ACTIVE_STATES = frozenset({RunState.BUILDING, RunState.RUNNING})  # count against the concurrency limit
FINISHED_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.BUILDING, RunState.CANCELLED}),
    RunState.BUILDING: frozenset({RunState.RUNNING, RunState.FAILED, RunState.CANCELLED}),
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}
FINISHED_STEP_STATES = frozenset({StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED})
# Words pipelines use for step states, mapped onto ours.
STEP_STATE_ALIASES = {"done": StepState.SUCCEEDED, "error": StepState.FAILED, "started": StepState.RUNNING}


@dataclass
class User:
    username: str
    role: Role
    password_hash: str
    id: int | None = None
    is_active: bool = True
    created_at: datetime = field(default_factory=utcnow)

    @property
    def can_write(self) -> bool:
        """Create tasks, upload samples, train, cancel and score: analysts and admins."""
        return self.role in (Role.ANALYST, Role.ADMIN)

    @property
    def can_manage_users(self) -> bool:
        return self.role is Role.ADMIN


@dataclass
class AccessToken:
    """A bearer token; only its hash is kept."""

    token_hash: str
    user_id: int
    expires_at: datetime
    id: int | None = None
    created_at: datetime = field(default_factory=utcnow)

    def is_valid(self, now: datetime) -> bool:
        return now < self.expires_at


@dataclass
class Task:
    """A modelling question (e.g. "default in 90 days"): its type, metric and data domains."""

    name: str
    task_type: str
    metric: str
    domains: list[str]
    created_by: str
    description: str = ""
    id: int | None = None
    git_commit: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    @property
    def git_branch(self) -> str:
        return f"task/{self.id}"


@dataclass
class Sample:
    """A validated, normalised sample file of a task, stored once per content (``fingerprint``)."""

    task_id: int
    filename: str
    fingerprint: str
    path: str
    n_rows: int
    n_clients: int
    report_date_min: date
    report_date_max: date
    target_summary: dict[str, Any]
    created_by: str
    id: int | None = None
    created_at: datetime = field(default_factory=utcnow)


# What a step reports of itself as it runs (besides its state).
PROGRESS_FIELDS = ("epoch", "max_epochs", "unit", "metric_name", "metric", "fraction", "message")


@dataclass
class RunStep:
    """Progress of one pipeline step of a run, e.g. ``train.card_transactions``."""

    name: str
    position: int = 0
    state: StepState = StepState.PENDING
    epoch: int | None = None
    max_epochs: int | None = None
    unit: str | None = None  # what ``epoch`` counts: "epoch" (encoders), "round" (LightGBM); None: "epoch"
    metric_name: str | None = None
    metric: float | None = None
    fraction: float | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def apply(self, fields: dict[str, Any], now: datetime) -> None:
        """Take reported progress; a skipped report does not hide that a step succeeded before."""
        state = fields.get("state")
        if state is not None:
            new = STEP_STATE_ALIASES.get(state) or StepState(state)
            if not (new is StepState.SKIPPED and self.state is StepState.SUCCEEDED):
                self.state = new
        elif self.state is StepState.PENDING:
            self.state = StepState.RUNNING  # progress without a state means the step is under way
        for name in PROGRESS_FIELDS:
            if name in fields:
                setattr(self, name, fields[name])
        if self.state is StepState.RUNNING and self.started_at is None:
            self.started_at = now
        if self.state in FINISHED_STEP_STATES:
            self.started_at = self.started_at or now
            self.finished_at = self.finished_at or now
        elif self.state is StepState.RUNNING:
            self.finished_at = None

    def interrupt(self) -> None:
        """The driver died under this step: it runs again on the next attempt."""
        if self.state not in (StepState.SUCCEEDED, StepState.SKIPPED):
            self.state = StepState.PENDING
            self.finished_at = None
            self.message = "interrupted; resumes on the next attempt"


@dataclass
class Run:
    """One training of a task on one sample with one set of parameters."""

    task_id: int
    sample_id: int
    params: dict[str, Any]
    seed: int
    created_by: str
    id: int | None = None
    state: RunState = RunState.QUEUED
    attempt: int = 1
    git_tag: str | None = None
    git_commit: str | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None
    model_uri: str | None = None
    pid: int | None = None
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steps: list[RunStep] = field(default_factory=list)

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    def can_become(self, state: RunState) -> bool:
        return state in TRANSITIONS[self.state]

    def transition(self, state: RunState, now: datetime | None = None) -> None:
        """Move to ``state`` if the state machine allows it, else raise ``Conflict``."""
        if not self.can_become(state):
            raise Conflict(f"run {self.id} is {self.state.value}; it cannot become {state.value}")
        now = now or utcnow()
        self.state = state
        if state is RunState.BUILDING:
            self.started_at = now
        if state in FINISHED_STATES:
            self.finished_at = now

    def start(self, pid: int | None, now: datetime | None = None) -> None:
        self.transition(RunState.RUNNING, now)
        self.pid = pid

    def succeed(self, *, metrics: dict[str, Any] | None, model_uri: str | None,
                now: datetime | None = None) -> None:
        self.transition(RunState.SUCCEEDED, now)
        self.metrics, self.model_uri, self.error = metrics, model_uri, None

    def fail(self, error: str, now: datetime | None = None) -> None:
        self.transition(RunState.FAILED, now)
        self.error = error

    def cancel(self, now: datetime | None = None) -> None:
        if self.is_finished:
            raise Conflict(f"run {self.id} has already {self.state.value}; there is nothing to cancel")
        self.transition(RunState.CANCELLED, now)

    def requeue(self) -> None:
        """Recovery: the driver of this attempt is gone; queue the run again as the next attempt."""
        if not self.is_active:
            raise Conflict(f"run {self.id} is {self.state.value}; only building or running runs are "
                           "re-queued")
        self.state = RunState.QUEUED
        self.attempt += 1
        self.pid = None
        self.started_at = None
        for step in self.steps:
            step.interrupt()

    def step(self, name: str) -> RunStep | None:
        return next((s for s in self.steps if s.name == name), None)
