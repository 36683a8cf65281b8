"""SQLAlchemy repositories: rows in, plain domain objects out (the domain never sees a session)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from anna_backend.adapters import tables as t
from anna_backend.adapters.database import CLAIM_LOCK_KEY, advisory_xact_lock
from anna_backend.domain.model import (
    ACTIVE_STATES,
    PROGRESS_FIELDS,
    AccessToken,
    Role,
    Run,
    RunState,
    RunStep,
    Sample,
    StepState,
    Task,
    User,
    utcnow,
)
from anna_backend.service_layer import ports


def insert_row(session: Session, table: sa.Table, values: dict[str, Any]) -> int:
    result = cast(CursorResult[Any], session.execute(sa.insert(table).values(**values)))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def changed_rows(session: Session, statement: sa.Executable) -> int:
    """Rows an UPDATE or DELETE touched."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


class SqlUserRepository(ports.UserRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def _user(row: sa.Row[Any]) -> User:
        return User(id=row.id, username=row.username, role=Role(row.role), password_hash=row.password_hash,
                    is_active=row.is_active, created_at=row.created_at)

    def add(self, user: User) -> User:
        user.id = insert_row(self.session, t.users, {
            "username": user.username, "role": user.role.value, "password_hash": user.password_hash,
            "is_active": user.is_active, "created_at": user.created_at})
        return user

    def get(self, user_id: int) -> User | None:
        row = self.session.execute(sa.select(t.users).where(t.users.c.id == user_id)).first()
        return self._user(row) if row else None

    def get_by_username(self, username: str) -> User | None:
        row = self.session.execute(sa.select(t.users).where(t.users.c.username == username)).first()
        return self._user(row) if row else None

    def list_all(self) -> list[User]:
        return [self._user(r) for r in self.session.execute(sa.select(t.users).order_by(t.users.c.id))]

    def count(self) -> int:
        return int(self.session.execute(sa.select(sa.func.count()).select_from(t.users)).scalar_one())


class SqlTokenRepository(ports.TokenRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, token: AccessToken) -> AccessToken:
        token.id = insert_row(self.session, t.tokens, {
            "token_hash": token.token_hash, "user_id": token.user_id, "created_at": token.created_at,
            "expires_at": token.expires_at})
        return token

    def get_by_hash(self, token_hash: str) -> AccessToken | None:
        row = self.session.execute(sa.select(t.tokens).where(t.tokens.c.token_hash == token_hash)).first()
        if row is None:
            return None
        return AccessToken(id=row.id, token_hash=row.token_hash, user_id=row.user_id,
                           expires_at=row.expires_at, created_at=row.created_at)

    def delete_expired(self, now: datetime) -> int:
        return changed_rows(self.session, sa.delete(t.tokens).where(t.tokens.c.expires_at <= now))


class SqlTaskRepository(ports.TaskRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def _task(row: sa.Row[Any]) -> Task:
        return Task(id=row.id, name=row.name, task_type=row.task_type, metric=row.metric,
                    domains=list(row.domains), description=row.description, created_by=row.created_by,
                    git_commit=row.git_commit, created_at=row.created_at)

    def add(self, task: Task) -> Task:
        task.id = insert_row(self.session, t.tasks, {
            "name": task.name, "task_type": task.task_type, "metric": task.metric, "domains": task.domains,
            "description": task.description, "created_by": task.created_by, "git_commit": task.git_commit,
            "created_at": task.created_at})
        return task

    def save(self, task: Task) -> None:
        self.session.execute(sa.update(t.tasks).where(t.tasks.c.id == task.id).values(
            metric=task.metric, domains=task.domains, description=task.description,
            git_commit=task.git_commit))

    def get(self, task_id: int) -> Task | None:
        row = self.session.execute(sa.select(t.tasks).where(t.tasks.c.id == task_id)).first()
        return self._task(row) if row else None

    def get_by_name(self, name: str) -> Task | None:
        row = self.session.execute(sa.select(t.tasks).where(t.tasks.c.name == name)).first()
        return self._task(row) if row else None

    def list_all(self) -> list[Task]:
        return [self._task(r) for r in self.session.execute(sa.select(t.tasks).order_by(t.tasks.c.id))]


class SqlSampleRepository(ports.SampleRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def _sample(row: sa.Row[Any]) -> Sample:
        return Sample(id=row.id, task_id=row.task_id, filename=row.filename, fingerprint=row.fingerprint,
                      path=row.path, n_rows=row.n_rows, n_clients=row.n_clients,
                      report_date_min=row.report_date_min, report_date_max=row.report_date_max,
                      target_summary=dict(row.target_summary), created_by=row.created_by,
                      created_at=row.created_at)

    def add(self, sample: Sample) -> Sample:
        sample.id = insert_row(self.session, t.samples, {
            "task_id": sample.task_id, "filename": sample.filename, "fingerprint": sample.fingerprint,
            "path": sample.path, "n_rows": sample.n_rows, "n_clients": sample.n_clients,
            "report_date_min": _as_date(sample.report_date_min),
            "report_date_max": _as_date(sample.report_date_max),
            "target_summary": sample.target_summary, "created_by": sample.created_by,
            "created_at": sample.created_at})
        return sample

    def get(self, sample_id: int) -> Sample | None:
        row = self.session.execute(sa.select(t.samples).where(t.samples.c.id == sample_id)).first()
        return self._sample(row) if row else None

    def find(self, task_id: int, fingerprint: str) -> Sample | None:
        row = self.session.execute(sa.select(t.samples).where(
            t.samples.c.task_id == task_id, t.samples.c.fingerprint == fingerprint)).first()
        return self._sample(row) if row else None

    def list_for_task(self, task_id: int) -> list[Sample]:
        rows = self.session.execute(
            sa.select(t.samples).where(t.samples.c.task_id == task_id).order_by(t.samples.c.id))
        return [self._sample(r) for r in rows]

    def count_with_path(self, path: str) -> int:
        return int(self.session.execute(
            sa.select(sa.func.count()).select_from(t.samples).where(t.samples.c.path == path)).scalar_one())


def _as_date(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


_STEP_FIELDS = ("position", *PROGRESS_FIELDS, "started_at", "finished_at")


class SqlRunRepository(ports.RunRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    # ---------------------------------------------------------------------------------------- mapping

    @staticmethod
    def _run(row: sa.Row[Any], steps: list[RunStep]) -> Run:
        return Run(id=row.id, task_id=row.task_id, sample_id=row.sample_id, state=RunState(row.state),
                   attempt=row.attempt, params=dict(row.params), seed=row.seed, git_tag=row.git_tag,
                   git_commit=row.git_commit, error=row.error, metrics=row.metrics, model_uri=row.model_uri,
                   pid=row.pid, created_by=row.created_by, created_at=row.created_at,
                   started_at=row.started_at, finished_at=row.finished_at, steps=steps)

    @staticmethod
    def _step(row: sa.Row[Any]) -> RunStep:
        return RunStep(name=row.name, state=StepState(row.state),
                       **{f: getattr(row, f) for f in _STEP_FIELDS})

    @staticmethod
    def _values(run: Run) -> dict[str, Any]:
        return {
            "task_id": run.task_id, "sample_id": run.sample_id, "state": run.state.value,
            "attempt": run.attempt,
            "params": run.params, "seed": run.seed, "git_tag": run.git_tag, "git_commit": run.git_commit,
            "error": run.error, "metrics": run.metrics, "model_uri": run.model_uri, "pid": run.pid,
            "created_by": run.created_by, "created_at": run.created_at, "started_at": run.started_at,
            "finished_at": run.finished_at, "updated_at": utcnow(),
        }

    def _steps_of(self, run_ids: list[int]) -> dict[int, list[RunStep]]:
        steps: dict[int, list[RunStep]] = {i: [] for i in run_ids}
        if run_ids:
            steps_table = t.run_steps
            rows = self.session.execute(
                sa.select(steps_table).where(steps_table.c.run_id.in_(run_ids))
                .order_by(steps_table.c.run_id, steps_table.c.position, steps_table.c.id))
            for row in rows:
                steps[row.run_id].append(self._step(row))
        return steps

    def _many(self, query: sa.Select[Any]) -> list[Run]:
        rows = self.session.execute(query).all()
        steps = self._steps_of([r.id for r in rows])
        return [self._run(r, steps[r.id]) for r in rows]

    # --------------------------------------------------------------------------------------- interface

    def add(self, run: Run) -> Run:
        run.id = insert_row(self.session, t.runs, self._values(run))
        for step in run.steps:
            self.save_step(run.id, step)
        return run

    def get(self, run_id: int, *, for_update: bool = False) -> Run | None:
        query = sa.select(t.runs).where(t.runs.c.id == run_id)
        found = self._many(query.with_for_update() if for_update else query)
        return found[0] if found else None

    def save(self, run: Run) -> None:
        assert run.id is not None
        self.session.execute(sa.update(t.runs).where(t.runs.c.id == run.id).values(**self._values(run)))
        for step in run.steps:
            self.save_step(run.id, step)

    def save_step(self, run_id: int, step: RunStep) -> None:
        values = {"state": step.state.value, "updated_at": utcnow(),
                  **{f: getattr(step, f) for f in _STEP_FIELDS}}
        updated = changed_rows(self.session, sa.update(t.run_steps).where(
            t.run_steps.c.run_id == run_id, t.run_steps.c.name == step.name).values(**values))
        if not updated:
            self.session.execute(sa.insert(t.run_steps).values(run_id=run_id, name=step.name, **values))

    def search(self, *, task_id: int | None = None, state: RunState | None = None) -> list[Run]:
        query = sa.select(t.runs).order_by(t.runs.c.id.desc())
        if task_id is not None:
            query = query.where(t.runs.c.task_id == task_id)
        if state is not None:
            query = query.where(t.runs.c.state == state.value)
        return self._many(query)

    def in_states(self, states: frozenset[RunState]) -> list[Run]:
        return self._many(sa.select(t.runs).where(t.runs.c.state.in_([s.value for s in states]))
                          .order_by(t.runs.c.id))

    def queue_positions(self) -> dict[int, int]:
        ids = self.session.execute(sa.select(t.runs.c.id).where(t.runs.c.state == RunState.QUEUED.value)
                                   .order_by(t.runs.c.id)).scalars()
        return {run_id: position for position, run_id in enumerate(ids, start=1)}

    def claim_next(self, *, max_active: int, now: datetime, run_id: int | None = None) -> Run | None:
        # SQLite: BEGIN IMMEDIATE already serialises writers. PostgreSQL (READ COMMITTED): two dispatchers
        # could both count the active runs before either claims, so the count-and-claim runs under a
        # transaction-scoped advisory lock (held until the unit of work commits or rolls back).
        advisory_xact_lock(self.session.connection(), CLAIM_LOCK_KEY)
        oldest = sa.select(sa.func.min(t.runs.c.id)).where(t.runs.c.state == RunState.QUEUED.value)
        candidate = run_id if run_id is not None else self.session.execute(oldest).scalar_one_or_none()
        if candidate is None:
            return None
        others = t.runs.alias("active_runs")
        active = (sa.select(sa.func.count()).select_from(others)
                  .where(others.c.state.in_([s.value for s in ACTIVE_STATES])).scalar_subquery())
        claimed = changed_rows(self.session, sa.update(t.runs)
                           .where(t.runs.c.id == candidate, t.runs.c.state == RunState.QUEUED.value,
                                  active < max_active)
                           .values(state=RunState.BUILDING.value, started_at=now, updated_at=now))
        return self.get(candidate) if claimed == 1 else None

    def task_names(self, task_ids: set[int]) -> dict[int, str]:
        if not task_ids:
            return {}
        rows = self.session.execute(sa.select(t.tasks.c.id, t.tasks.c.name).where(t.tasks.c.id.in_(task_ids)))
        return {row.id: row.name for row in rows}
