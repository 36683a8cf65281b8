"""ANNA's domain: users, tasks, samples, runs and the run state machine. Plain Python only."""

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

__all__ = [
    "ACTIVE_STATES",
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
    "StepState",
    "Task",
    "Unauthenticated",
    "User",
]
