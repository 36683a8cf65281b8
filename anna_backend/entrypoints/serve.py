"""The server: migrations, the first admin and uvicorn; in embedded mode also the dispatcher thread (in
full mode ``anna worker`` processes start and follow the runs)."""

from __future__ import annotations

import logging

from anna_backend.bootstrap import bootstrap
from anna_backend.entrypoints.api import create_app
from anna_backend.service_layer.auth import ensure_admin
from anna_backend.settings import Settings, get_settings

log = logging.getLogger("anna_backend")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per Airflow poll says nothing
    logging.getLogger("pika").setLevel(logging.WARNING)


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    """Run ANNA until interrupted: ``anna serve`` calls this. Blocks."""
    import uvicorn

    settings = settings or get_settings()
    configure_logging(settings.log_level)
    wiring = bootstrap(settings)  # runs the migrations
    ensure_admin(wiring.backend)
    if not settings.full_mode:
        wiring.dispatcher.start()  # re-queues what a previous server left, then serves the queue
    log.info("ANNA %s (%s mode) serving on http://%s:%s (API docs at /docs), data in %s", settings.env,
             "full" if settings.full_mode else "embedded", host, port, settings.data_dir)
    try:
        uvicorn.run(create_app(wiring.backend), host=host, port=port, log_level=settings.log_level.lower())
    finally:
        # Drivers die with the dispatcher thread (PR_SET_PDEATHSIG); the next start re-queues their runs.
        wiring.close()
