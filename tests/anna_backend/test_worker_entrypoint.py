"""`anna worker` waits, saying why, while Airflow cannot take runs; it stops cleanly on request."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from anna_backend.entrypoints.worker import run_worker
from anna_backend.settings import Settings


def test_a_worker_waits_for_an_unreachable_airflow_instead_of_dying(
        tmp_path: Path, clean_env: None, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path, queue="rabbitmq", orchestrator="airflow",
                        airflow_url="http://127.0.0.1:1", airflow_password="pw",
                        rabbitmq_url="amqp://guest:guest@127.0.0.1:1/%2F")
    stop = threading.Event()
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(run_worker(settings, stop=stop)))
    with caplog.at_level(logging.ERROR, logger="anna_backend.worker"):
        worker.start()
        threading.Event().wait(3)
        assert worker.is_alive(), "the worker gave up instead of waiting"
        stop.set()
        worker.join(35)
    assert result == [0]
    waiting = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert waiting and "http://127.0.0.1:1" in waiting[0]


def test_a_worker_refuses_embedded_settings(tmp_path: Path, clean_env: None) -> None:
    assert run_worker(Settings(data_dir=tmp_path), stop=threading.Event()) == 2
