"""A real Airflow 3 for the integration tests: one per test session, on a fresh PostgreSQL database and a
free loopback port, parsing the repository's ``dags/`` folder.

Test modules import the fixture explicitly: ``from airflow_fixtures import airflow  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from service_support import fresh_postgres_database, unavailable

from anna_backend.devservices.airflow import AirflowServices, start_airflow
from anna_backend.devservices.process import ServiceFailed, free_port

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
USERNAME = "anna"
PASSWORD = "anna-airflow-test-password"
POOL = "anna_encoders"
POOL_SLOTS = 3


@dataclass(frozen=True)
class AirflowInstance:
    """What a test needs to reach the running Airflow (``services`` for its logs and home)."""

    url: str
    username: str
    password: str
    pool: str
    pool_slots: int
    services: AirflowServices


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowInstance]:
    """Airflow's API server, scheduler and DAG processor (LocalExecutor) with ANNA's pool and DAG."""
    with fresh_postgres_database("anna_airflow") as database_url:
        yield from _started(tmp_path_factory, database_url)


def _started(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[AirflowInstance]:
    services = None
    for _ in range(2):  # another process may take the free port before the API server binds it
        try:
            services = start_airflow(
                tmp_path_factory.mktemp("airflow"), database_url=database_url, port=free_port(),
                dags_folder=DAGS_FOLDER, username=USERNAME, password=PASSWORD, pool=POOL,
                pool_slots=POOL_SLOTS)
            break
        except ServiceFailed as error:
            if "address already in use" not in str(error).lower():
                unavailable(f"Airflow did not start: {error}")
        except OSError as error:
            unavailable(f"Airflow could not be launched: {error}")
    if services is None:
        unavailable("Airflow found no free port")
    try:
        yield AirflowInstance(url=services.url, username=USERNAME, password=PASSWORD, pool=POOL,
                              pool_slots=POOL_SLOTS, services=services)
    finally:
        services.stop()
