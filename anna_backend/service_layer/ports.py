"""The ports: what the use cases need from the outside world, as abstract classes.

Each port has an embedded implementation in ``anna_backend.adapters`` (SQLite, local git, a local driver
process) and, later, a full-mode one (PostgreSQL, remote git, Jenkins, Airflow). Tests hand in fakes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anna_backend.domain.model import AccessToken, Run, RunState, RunStep, Sample, Task, User
from anna_backend.domain.score_job import ScoreJob, ScoreJobState
from anna_backend.settings import Settings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from anna_models.config import RunConfig


# ------------------------------------------------------------------------------------------ repositories


class UserRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, user: User) -> User: ...

    @abc.abstractmethod
    def get(self, user_id: int) -> User | None: ...

    @abc.abstractmethod
    def get_by_username(self, username: str) -> User | None: ...

    @abc.abstractmethod
    def list_all(self) -> list[User]: ...

    @abc.abstractmethod
    def count(self) -> int: ...


class TokenRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, token: AccessToken) -> AccessToken: ...

    @abc.abstractmethod
    def get_by_hash(self, token_hash: str) -> AccessToken | None: ...

    @abc.abstractmethod
    def delete_expired(self, now: datetime) -> int: ...


class TaskRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, task: Task) -> Task: ...

    @abc.abstractmethod
    def save(self, task: Task) -> None: ...

    @abc.abstractmethod
    def get(self, task_id: int) -> Task | None: ...

    @abc.abstractmethod
    def get_by_name(self, name: str) -> Task | None: ...

    @abc.abstractmethod
    def list_all(self) -> list[Task]: ...


class SampleRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, sample: Sample) -> Sample: ...

    @abc.abstractmethod
    def get(self, sample_id: int) -> Sample | None: ...

    @abc.abstractmethod
    def find(self, task_id: int, fingerprint: str) -> Sample | None: ...

    @abc.abstractmethod
    def list_for_task(self, task_id: int) -> list[Sample]:
        """Oldest first."""

    @abc.abstractmethod
    def count_with_path(self, path: str) -> int: ...


class RunRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, run: Run) -> Run: ...

    @abc.abstractmethod
    def get(self, run_id: int, *, for_update: bool = False) -> Run | None:
        """The run with its steps; ``for_update`` locks the row where the database can."""

    @abc.abstractmethod
    def save(self, run: Run) -> None:
        """Write the run's fields and all its steps."""

    @abc.abstractmethod
    def save_step(self, run_id: int, step: RunStep) -> None: ...

    @abc.abstractmethod
    def search(self, *, task_id: int | None = None, state: RunState | None = None) -> list[Run]:
        """Newest first, with steps."""

    @abc.abstractmethod
    def in_states(self, states: frozenset[RunState]) -> list[Run]:
        """Oldest first, with steps."""

    @abc.abstractmethod
    def queue_positions(self) -> dict[int, int]:
        """1-based place in the queue of every queued run, in submission order."""

    @abc.abstractmethod
    def claim_next(self, *, max_active: int, now: datetime, run_id: int | None = None) -> Run | None:
        """Move the oldest queued run (or run ``run_id``) to ``building`` in one conditional update, if fewer
        than ``max_active`` runs are building or running and it is still queued; None when nothing was
        claimed."""

    @abc.abstractmethod
    def task_names(self, task_ids: set[int]) -> dict[int, str]: ...


class ScoreJobRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, job: ScoreJob) -> ScoreJob: ...

    @abc.abstractmethod
    def get(self, job_id: int, *, for_update: bool = False) -> ScoreJob | None: ...

    @abc.abstractmethod
    def save(self, job: ScoreJob) -> None: ...

    @abc.abstractmethod
    def in_state(self, state: ScoreJobState, *, limit: int | None = None) -> list[ScoreJob]:
        """Oldest first."""

    @abc.abstractmethod
    def claim(self, job_id: int, *, now: datetime, takeover_attempt: int | None = None) -> ScoreJob | None:
        """Move the job to ``running`` in one conditional update: a queued job as it is; a running job only
        when ``takeover_attempt`` is its attempt (its holder is gone), as attempt + 1. None when nothing
        was claimed (finished, or somebody else holds it)."""


class AbstractUnitOfWork(abc.ABC):
    """One transaction over all repositories: ``with uow: ...; uow.commit()``; leaving without commit rolls
    back. Writers are serialised, so what a unit of work reads stays true until it commits."""

    users: UserRepository
    tokens: TokenRepository
    tasks: TaskRepository
    samples: SampleRepository
    runs: RunRepository
    score_jobs: ScoreJobRepository

    def __enter__(self) -> AbstractUnitOfWork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.rollback()

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...


# ------------------------------------------------------------------------------------- outside systems


class ModelConfigRepo(abc.ABC):
    """The model-config repository: a branch per task, a tagged commit per run."""

    @abc.abstractmethod
    def create_task(self, task: Task) -> str:
        """Create the task's branch with a commit of ``task.json``; returns the commit id."""

    @abc.abstractmethod
    def record_run(self, task: Task, config: RunConfig, *, author: str) -> tuple[str, str]:
        """Commit ``task.json`` + ``run.json`` on the task's branch and tag it; returns (tag, commit)."""

    @abc.abstractmethod
    def read_run_config(self, run_id: int) -> RunConfig:
        """The run's configuration, read from its tag alone."""

    @abc.abstractmethod
    def tag_commit(self, tag: str) -> str:
        """The commit a tag points to; ``NotFound`` if there is no such tag."""


class Builder(abc.ABC):
    """Turns a run's tagged configuration into something runnable (embedded: the commit itself)."""

    @abc.abstractmethod
    def build(self, run: Run) -> str:
        """Build the run; returns what was built (a commit id, an image). Raises on failure."""


@dataclass(frozen=True)
class DriverExit:
    """A run's driver ended; ``returncode`` 0 means it exited normally (it wrote its own final state)."""

    run_id: int
    attempt: int
    returncode: int
    log_tail: str


class Runner(abc.ABC):
    """Runs a run's pipeline somewhere and can stop it."""

    @abc.abstractmethod
    def start(self, run: Run) -> int | None:
        """Start the run's driver; returns its process id where there is one."""

    @abc.abstractmethod
    def exited(self) -> list[DriverExit]:
        """Drivers this runner started that have ended since the last call."""

    @abc.abstractmethod
    def is_alive(self, run: Run) -> bool:
        """Whether a driver of this run (any attempt) is still alive."""

    @abc.abstractmethod
    def stop(self, run: Run) -> None:
        """Stop the run's driver and everything it started, if it is alive."""


@dataclass(frozen=True)
class StepStatus:
    """One pipeline step as the orchestrator sees it; ``name`` is ANNA's (``train.card``), ``state`` one of
    pending, running, retrying, succeeded, failed, skipped; ``error`` the failure's message, if any, and
    ``raised`` whether the step's own code recorded it (False for a task stopped or killed from outside,
    whose error is the tail of its log)."""

    name: str
    state: str
    try_number: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    raised: bool = False

    def failure_order(self) -> tuple[bool, datetime]:
        """Sort key of failed steps, the one that failed first first. A fail-fast DAG run fails the steps
        still running when one fails, and may stamp their end before the failed one's: a step that raised
        comes before any that were stopped, then the earlier end."""
        return not self.raised, self.finished_at or datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PipelineStatus:
    """A run's pipeline in the orchestrator. ``state``: missing (never triggered), queued, running,
    succeeded, failed; ``error`` says what failed (the failed step and its error) when it failed."""

    state: str
    steps: list[StepStatus]
    error: str | None = None


class Orchestrator(Runner):
    """A runner whose pipelines live in an outside scheduler (Airflow). Nothing to reap: workers follow
    each run with ``status``. ``start`` is idempotent: a run's attempt has exactly one pipeline run there."""

    @abc.abstractmethod
    def ensure_ready(self) -> None:
        """Make sure the pipeline can be triggered (the DAG parsed and unpaused, the pool there); raises
        ``ServiceUnavailable`` with a message that says what is missing."""

    @abc.abstractmethod
    def status(self, run: Run) -> PipelineStatus: ...

    def exited(self) -> list[DriverExit]:
        return []


class Scorer(abc.ABC):
    """Scores rows with a succeeded run's model (retro-inference)."""

    @abc.abstractmethod
    def score(self, run: Run, task: Task, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any] | None]:
        """``rows`` has client_id, report_date and maybe target; returns the rows with ``score`` (and class
        probabilities for multiclass) in the same order, and the metrics when there is a target."""


class MartCatalog(abc.ABC):
    """The data marts: one per data domain."""

    @abc.abstractmethod
    def manifests(self) -> list[dict[str, Any]]:
        """Every mart's manifest, by name."""

    @abc.abstractmethod
    def client_ids(self, name: str) -> np.ndarray:
        """Sorted unique int64 client ids the mart has events for."""


class SampleStore(abc.ABC):
    """Where validated samples live, one file per content fingerprint."""

    @abc.abstractmethod
    def save(self, fingerprint: str, frame: pd.DataFrame) -> tuple[str, bool]:
        """Store the normalised sample; returns (path, whether the file was new)."""

    @abc.abstractmethod
    def remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...


class RunArtifacts(abc.ABC):
    """What a run's pipeline left behind: the report, the registered model, the driver's log."""

    @abc.abstractmethod
    def run_dir(self, run_id: int) -> Path: ...

    @abc.abstractmethod
    def report(self, run_id: int) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def registered(self, run_id: int) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def log_tail(self, run_id: int, *, lines: int = 30) -> str: ...


class ScoreJobFiles(abc.ABC):
    """A score job's files: the validated rows to score and the scores, each written atomically."""

    @abc.abstractmethod
    def save_input(self, job_id: int, rows: pd.DataFrame) -> str:
        """Store the job's rows; returns their path."""

    @abc.abstractmethod
    def save_scores(self, job_id: int, scores: pd.DataFrame) -> str:
        """Store the job's scores; returns their path."""

    @abc.abstractmethod
    def read(self, path: str) -> pd.DataFrame: ...

    @abc.abstractmethod
    def remove(self, job_id: int) -> None:
        """Remove whatever the job has stored (a submission that was not recorded)."""


@dataclass(frozen=True)
class DeadRequest:
    """A request the queue gave up on: it could not be valid, or it kept failing past the retry limit."""

    body: str
    kind: str | None
    run_id: int | None
    reason: str
    retries: int
    dead_at: datetime | None
    job_id: int | None = None  # of a score request


class RunQueue(abc.ABC):
    """Carries train and score requests to whoever does the work (embedded: wakes the dispatcher thread;
    full mode: RabbitMQ). Both methods raise ``ServiceUnavailable`` when the request could not be queued."""

    @abc.abstractmethod
    def submitted(self, run_id: int) -> None: ...

    @abc.abstractmethod
    def submitted_score(self, job_id: int, run_id: int) -> None: ...

    def dead_letters(self, limit: int = 100) -> list[DeadRequest]:
        """Requests given up on, oldest first (embedded mode has none: it retries nothing)."""
        return []

    def close(self) -> None:
        """Release connections, if any."""
        return None


@dataclass
class Backend:
    """The wired ports the use cases run against; built by ``anna_backend.bootstrap``."""

    settings: Settings
    uow: Callable[[], AbstractUnitOfWork]
    model_config: ModelConfigRepo
    builder: Builder
    runner: Runner
    scorer: Scorer
    marts: MartCatalog
    sample_store: SampleStore
    artifacts: RunArtifacts
    queue: RunQueue
    score_files: ScoreJobFiles
