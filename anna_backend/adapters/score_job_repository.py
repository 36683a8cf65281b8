"""The SQLAlchemy repository of score jobs; a job is claimed with one conditional update."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from anna_backend.adapters import tables as t
from anna_backend.adapters.repository import changed_rows, insert_row
from anna_backend.domain.model import utcnow
from anna_backend.domain.score_job import ScoreJob, ScoreJobState
from anna_backend.service_layer import ports

_FIELDS = ("run_id", "attempt", "filename", "input_path", "n_rows", "output_path", "metrics", "error",
           "created_by", "created_at", "started_at", "finished_at")


class SqlScoreJobRepository(ports.ScoreJobRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def _job(row: sa.Row[Any]) -> ScoreJob:
        return ScoreJob(id=row.id, state=ScoreJobState(row.state), **{f: getattr(row, f) for f in _FIELDS})

    @staticmethod
    def _values(job: ScoreJob) -> dict[str, Any]:
        return {"state": job.state.value, "updated_at": utcnow(), **{f: getattr(job, f) for f in _FIELDS}}

    def add(self, job: ScoreJob) -> ScoreJob:
        job.id = insert_row(self.session, t.score_jobs, self._values(job))
        return job

    def get(self, job_id: int, *, for_update: bool = False) -> ScoreJob | None:
        query = sa.select(t.score_jobs).where(t.score_jobs.c.id == job_id)
        row = self.session.execute(query.with_for_update() if for_update else query).first()
        return self._job(row) if row else None

    def save(self, job: ScoreJob) -> None:
        assert job.id is not None
        self.session.execute(sa.update(t.score_jobs).where(t.score_jobs.c.id == job.id)
                             .values(**self._values(job)))

    def in_state(self, state: ScoreJobState, *, limit: int | None = None) -> list[ScoreJob]:
        query = sa.select(t.score_jobs).where(t.score_jobs.c.state == state.value).order_by(t.score_jobs.c.id)
        return [self._job(r) for r in self.session.execute(query.limit(limit))]

    def claim(self, job_id: int, *, now: datetime, takeover_attempt: int | None = None) -> ScoreJob | None:
        # One UPDATE decides: two claimers of one queued job (or two takers-over of one running attempt)
        # cannot both match, since the first one's write changes the state (or the attempt) they test.
        jobs = t.score_jobs.c
        claimable = jobs.state == ScoreJobState.QUEUED.value
        if takeover_attempt is not None:
            claimable = claimable | ((jobs.state == ScoreJobState.RUNNING.value)
                                     & (jobs.attempt == takeover_attempt))
        taken_over = sa.case((jobs.state == ScoreJobState.RUNNING.value, jobs.attempt + 1),
                             else_=jobs.attempt)
        claimed = changed_rows(self.session, sa.update(t.score_jobs).where(jobs.id == job_id, claimable)
                           .values(state=ScoreJobState.RUNNING.value, attempt=taken_over, started_at=now,
                                   updated_at=now))
        return self.get(job_id) if claimed == 1 else None
