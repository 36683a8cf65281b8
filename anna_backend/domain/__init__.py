"""ANNA's domain: users, tasks, samples, runs, score jobs and their state machines. Plain Python only."""

from anna_backend.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthenticated,
)
from anna_backend.domain.model import (
    ACTIVE_STATES,
    FINISHED_STATES,
    AccessToken,
    Role,
    Run,
    RunState,
    RunStep,
    Sample,
    StepState,
    Task,
    User,
)
from anna_backend.domain.score_job import FINISHED_JOB_STATES, ScoreJob, ScoreJobState

__all__ = [
    "ACTIVE_STATES",
    "FINISHED_JOB_STATES",
    "FINISHED_STATES",
    "AccessToken",
    "Conflict",
    "DomainError",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "Role",
    "Run",
    "RunState",
    "RunStep",
    "Sample",
    "ScoreJob",
    "ScoreJobState",
    "StepState",
    "Task",
    "Unauthenticated",
    "User",
]
