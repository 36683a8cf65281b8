"""The SQLAlchemy unit of work: one session, one transaction, all repositories."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from anna_backend.adapters.repository import (
    SqlRunRepository,
    SqlSampleRepository,
    SqlTaskRepository,
    SqlTokenRepository,
    SqlUserRepository,
)
from anna_backend.adapters.score_job_repository import SqlScoreJobRepository
from anna_backend.service_layer.ports import AbstractUnitOfWork


class SqlAlchemyUnitOfWork(AbstractUnitOfWork):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._session: Session | None = None

    def __enter__(self) -> SqlAlchemyUnitOfWork:
        self._session = self._sessions()
        self.users = SqlUserRepository(self._session)
        self.tokens = SqlTokenRepository(self._session)
        self.tasks = SqlTaskRepository(self._session)
        self.samples = SqlSampleRepository(self._session)
        self.runs = SqlRunRepository(self._session)
        self.score_jobs = SqlScoreJobRepository(self._session)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._session is not None:
            self._session.rollback()
            self._session.close()
            self._session = None

    def commit(self) -> None:
        assert self._session is not None, "use the unit of work in a `with` block"
        self._session.commit()

    def rollback(self) -> None:
        if self._session is not None:
            self._session.rollback()


def unit_of_work_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)
