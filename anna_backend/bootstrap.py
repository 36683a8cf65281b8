"""Wiring: the one place that picks an implementation for every port (embedded mode).

The HTTP app, the dispatcher and the pipeline driver all start from ``bootstrap``; tests hand in fakes for
the ports they want to control.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from anna_backend.adapters.artifacts import LocalRunArtifacts, LocalSampleStore
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
        self.engine.dispose()


def bootstrap(settings: Settings | None = None, *, migrate_db: bool = True, runner: Runner | None = None,
              builder: Builder | None = None, scorer: Scorer | None = None, marts: MartCatalog | None = None,
              model_config: ModelConfigRepo | None = None) -> Wiring:
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
        queue=wakeup,
    )
    return Wiring(backend=backend, dispatcher=Dispatcher(backend, wakeup), engine=engine)
