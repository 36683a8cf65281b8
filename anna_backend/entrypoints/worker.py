"""``anna worker``: full mode's queue consumer. Start as many as you like; together they run at most
``ANNA_MAX_CONCURRENT_RUNS`` runs (the database keeps count), and each follows every running run.

SIGTERM or Ctrl-C stops it after the current round; a held request goes back to the queue. Until Airflow
is ready (the DAG parsed, the pool there) and the broker answers, it waits and tries again with backoff,
saying what is missing; a lost broker connection is reopened the same way. Runs go on in Airflow
meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from functools import partial
from types import FrameType

from anna_backend.bootstrap import bootstrap
from anna_backend.domain.errors import ServiceUnavailable
from anna_backend.entrypoints.serve import configure_logging
from anna_backend.service_layer.ports import Orchestrator
from anna_backend.service_layer.worker import Worker
from anna_backend.settings import Settings, get_settings

log = logging.getLogger("anna_backend.worker")
RECONNECT_S = (1, 2, 5, 10, 30)


def run_worker(settings: Settings | None = None, *, stop: threading.Event | None = None) -> int:
    """Serve until stopped; returns the exit code."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    if not settings.full_mode:
        log.error("anna worker serves full mode: set ANNA_QUEUE=rabbitmq and ANNA_ORCHESTRATOR=airflow "
                  "(embedded mode needs no worker: `anna serve` runs the queue itself)")
        return 2
    stop = stop or _stop_on_signals()
    wiring = bootstrap(settings)  # migrations are locked, so workers and servers may start together
    queue, orchestrator = wiring.backend.queue, wiring.backend.runner
    assert isinstance(orchestrator, Orchestrator)
    failures = 0
    try:
        while not stop.is_set():
            try:
                orchestrator.ensure_ready()  # no request is taken while Airflow cannot run it
                consumer = queue.consumer(prefetch=1)  # type: ignore[attr-defined]
                consumer.start()
            except ServiceUnavailable as error:
                wait = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
                failures += 1
                log.error("%s; trying again in %s s", error, wait)
                stop.wait(wait)
                continue
            failures = 0
            log.info("worker %s consuming %s.requests", os.getpid(), settings.rabbitmq_prefix)
            worker = Worker(backend=wiring.backend, deliveries=consumer, orchestrator=orchestrator)
            try:
                worker.serve(stop, healthy=partial(getattr, consumer, "alive"))
            finally:
                consumer.close()
            if not stop.is_set():
                log.warning("lost the broker connection; reconnecting")
    finally:
        wiring.close()
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping after this round", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
