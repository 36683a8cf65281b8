"""Wiring: the one place that picks an implementation for every port.

Embedded mode: SQLite, a dispatcher thread as the queue, a local driver process per run. Full mode
(``ANNA_QUEUE=rabbitmq``, ``ANNA_ORCHESTRATOR=airflow``): RabbitMQ carries the requests and Airflow runs the
pipelines; the database is whatever ``ANNA_DATABASE_URL`` names. The HTTP app, the dispatcher, the worker
and the pipeline driver all start from ``bootstrap``; tests hand in fakes for the ports they control.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from anna_backend.adapters.artifacts import LocalRunArtifacts, LocalSampleStore, LocalScoreJobFiles
from anna_backend.adapters.database import make_engine, migrate
from anna_backend.adapters.local_runner import LocalBuilder, LocalRunner
from anna_backend.adapters.marts import LocalMartCatalog
from anna_backend.adapters.model_config_repo import GitModelConfigRepo
from anna_backend.adapters.scorer import EnsembleScorer
from anna_backend.adapters.unit_of_work import SqlAlchemyUnitOfWork, unit_of_work_factory
from anna_backend.service_layer.dispatcher import Dispatcher, WakeUp
from anna_backend.service_layer.ports import (
    AbstractUnitOfWork,
    Backend,
    Builder,
    MartCatalog,
    ModelConfigRepo,
    Runner,
    RunQueue,
    Scorer,
)
from anna_backend.settings import Settings, get_settings


@dataclass
class Wiring:
    """The wired backend, the dispatcher that serves its queue, and the engine to dispose of at the end."""

    backend: Backend
    dispatcher: Dispatcher
    engine: Engine

    def close(self) -> None:
        self.dispatcher.stop()
        self.backend.queue.close()
        self.engine.dispose()


def bootstrap(settings: Settings | None = None, *, migrate_db: bool = True, runner: Runner | None = None,
              builder: Builder | None = None, scorer: Scorer | None = None, marts: MartCatalog | None = None,
              model_config: ModelConfigRepo | None = None, queue: RunQueue | None = None) -> Wiring:
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    if migrate_db:
        migrate(engine)
    sessions = unit_of_work_factory(engine)

    def uow() -> AbstractUnitOfWork:
        return SqlAlchemyUnitOfWork(sessions)

    model_config = model_config or GitModelConfigRepo(settings.model_config_repo)
    artifacts = LocalRunArtifacts(settings.runs_dir)
    wakeup = WakeUp()
    if settings.full_mode:
        queue = queue or _rabbitmq(settings)
        runner = runner or _airflow(settings, model_config)
    backend = Backend(
        settings=settings,
        uow=uow,
        model_config=model_config,
        builder=builder or LocalBuilder(model_config),
        runner=runner or LocalRunner(settings),
        scorer=scorer or EnsembleScorer(settings, artifacts),
        marts=marts or LocalMartCatalog(settings.marts_dir),
        sample_store=LocalSampleStore(settings.samples_dir),
        artifacts=artifacts,
        queue=queue or wakeup,
        score_files=LocalScoreJobFiles(settings.score_jobs_dir),
    )
    return Wiring(backend=backend, dispatcher=Dispatcher(backend, wakeup), engine=engine)


def _rabbitmq(settings: Settings) -> RunQueue:
    from anna_backend.adapters.rabbitmq import RabbitRequestQueue

    return RabbitRequestQueue(settings.rabbitmq_url, settings.rabbitmq_prefix,
                              retries=settings.request_retries)


def _airflow(settings: Settings, model_config: ModelConfigRepo) -> Runner:
    from anna_backend.adapters.airflow import AirflowOrchestrator

    return AirflowOrchestrator(settings, model_config)
