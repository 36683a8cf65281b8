"""Request and response bodies of the REST API, named by purpose (``TaskCreate``, ``TaskPublic``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from anna_backend.domain.model import Run, RunStep, Sample, Task, User
from anna_backend.domain.score_job import ScoreJob
from anna_backend.service_layer.runs import RunView

RoleName = Literal["analyst", "approver", "admin"]
TaskType = Literal["binary", "multiclass", "regression"]
RunStateName = Literal["queued", "building", "running", "succeeded", "failed", "cancelled"]
StepStateName = Literal["pending", "running", "succeeded", "failed", "skipped"]
ScoreJobStateName = Literal["queued", "running", "succeeded", "failed"]


class _Create(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class HealthPublic(BaseModel):
    status: str
    version: str
    mode: str  # embedded | full
    queue: str  # embedded | rabbitmq
    orchestrator: str  # local | airflow


class DeadRequestPublic(BaseModel):
    """A request the queue gave up on, and why."""

    kind: str | None
    run_id: int | None
    job_id: int | None = None
    reason: str
    retries: int
    dead_at: datetime | None
    body: str


class TokenRequest(_Create):
    username: str
    password: str


class TokenPublic(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


class UserCreate(_Create):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1)
    role: RoleName


class UserPublic(BaseModel):
    id: int
    username: str
    role: RoleName

    @classmethod
    def of(cls, user: User) -> UserPublic:
        assert user.id is not None
        return cls(id=user.id, username=user.username, role=user.role.value)


class MartPublic(BaseModel):
    name: str
    version: str
    time_min: str | None
    time_max: str | None
    n_clients: int
    n_events: int
    features: dict[str, Any]

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> MartPublic:
        return cls(name=manifest["name"], version=str(manifest.get("version", "")),
                   time_min=manifest.get("time_min"), time_max=manifest.get("time_max"),
                   n_clients=int(manifest.get("n_clients", 0)), n_events=int(manifest.get("n_events", 0)),
                   features=manifest.get("features", {}))


class TaskCreate(_Create):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,62}$",
                      description="a slug: 2-63 characters of a-z, 0-9, _ and -")
    task_type: TaskType
    metric: str | None = Field(default=None, description="default: roc_auc, log_loss or rmse by task type")
    domains: list[str] | None = Field(default=None, description="default: every mart")
    description: str | None = None


class TaskPublic(BaseModel):
    id: int
    name: str
    task_type: TaskType
    metric: str
    domains: list[str]
    description: str
    created_by: str
    created_at: datetime
    git_branch: str

    @classmethod
    def of(cls, task: Task) -> TaskPublic:
        assert task.id is not None
        return cls(id=task.id, name=task.name, task_type=task.task_type, metric=task.metric,  # type: ignore[arg-type]
                   domains=task.domains, description=task.description, created_by=task.created_by,
                   created_at=task.created_at, git_branch=task.git_branch)


class SamplePublic(BaseModel):
    id: int
    task_id: int
    filename: str
    fingerprint: str
    n_rows: int
    n_clients: int
    report_date_min: date
    report_date_max: date
    target_summary: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, sample: Sample) -> SamplePublic:
        assert sample.id is not None
        return cls(id=sample.id, task_id=sample.task_id, filename=sample.filename,
                   fingerprint=sample.fingerprint, n_rows=sample.n_rows, n_clients=sample.n_clients,
                   report_date_min=sample.report_date_min,
                   report_date_max=sample.report_date_max, target_summary=sample.target_summary,
                   created_at=sample.created_at)


class RunCreate(_Create):
    sample_id: int | None = Field(default=None, description="default: the task's latest sample")
    params: dict[str, dict[str, Any]] | None = Field(
        default=None, description='training parameters: {"default": {...}, "<domain>": {...}, '
                                  '"fusion": {...}, "lightgbm": {...}} (docs/api.md)')
    seed: int = Field(default=0, ge=0)


class RunStepPublic(BaseModel):
    name: str
    state: StepStateName
    epoch: int | None
    max_epochs: int | None
    unit: str | None = Field(description='what epoch and max_epochs count: "epoch" (an encoder\'s pass '
                                         'over the train rows) or "round" (LightGBM\'s boosting rounds)')
    metric_name: str | None
    metric: float | None
    fraction: float | None
    message: str | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, step: RunStep) -> RunStepPublic:
        return cls(name=step.name, state=step.state.value, epoch=step.epoch, max_epochs=step.max_epochs,
                   unit=step.unit, metric_name=step.metric_name, metric=step.metric, fraction=step.fraction,
                   message=step.message, started_at=step.started_at, finished_at=step.finished_at)


class RunPublic(BaseModel):
    id: int
    task_id: int
    task_name: str
    sample_id: int
    state: RunStateName
    attempt: int
    params: dict[str, Any]
    seed: int
    git_tag: str | None
    git_commit: str | None
    error: str | None
    metrics: dict[str, Any] | None
    model_uri: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_position: int | None
    steps: list[RunStepPublic]

    @classmethod
    def of(cls, view: RunView) -> RunPublic:
        run: Run = view.run
        assert run.id is not None
        return cls(id=run.id, task_id=run.task_id, task_name=view.task_name, sample_id=run.sample_id,
                   state=run.state.value, attempt=run.attempt, params=run.params, seed=run.seed,
                   git_tag=run.git_tag, git_commit=run.git_commit, error=run.error, metrics=run.metrics,
                   model_uri=run.model_uri, created_at=run.created_at, started_at=run.started_at,
                   finished_at=run.finished_at, queue_position=view.queue_position,
                   steps=[RunStepPublic.of(s) for s in run.steps])


class ScorePublic(BaseModel):
    run_id: int
    n_rows: int
    scores: list[dict[str, Any]]
    metrics: dict[str, Any] | None = Field(default=None, description="present when the file has a target")


class ScoreJobPublic(BaseModel):
    """A score job: its state and, once it has succeeded, the metrics (with a target); the scores are at
    ``GET /score-jobs/{id}/result``."""

    id: int
    run_id: int
    state: ScoreJobStateName
    attempt: int
    filename: str
    n_rows: int
    metrics: dict[str, Any] | None
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: ScoreJob) -> ScoreJobPublic:
        assert job.id is not None
        return cls(id=job.id, run_id=job.run_id, state=job.state.value, attempt=job.attempt,
                   filename=job.filename, n_rows=job.n_rows, metrics=job.metrics, error=job.error,
                   created_by=job.created_by, created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at)
