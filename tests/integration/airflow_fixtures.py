"""A real Airflow 3 for the integration tests: one per test session, on a fresh PostgreSQL database and a
free loopback port, parsing the repository's ``dags/`` folder.

Test modules import the fixture explicitly: ``from airflow_fixtures import airflow  # noqa: F401``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from anna_backend.devservices.airflow import AirflowServices, start_airflow
from anna_backend.devservices.process import ServiceFailed, free_port

# The server's ``postgres`` database: the fixture connects there only to create and drop its own database.
POSTGRES_ADMIN_URL = os.environ.get(
    "ANNA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
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


def _unavailable(reason: str) -> None:
    """Fail under CI (where Airflow must run), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the Airflow tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowInstance]:
    """Airflow's API server, scheduler and DAG processor (LocalExecutor) with ANNA's pool and DAG."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"anna_airflow_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # no driver, no server, refused login: all mean "no PostgreSQL here"
        admin.dispose()
        first_line = (str(error).splitlines() or [""])[0]
        _unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable for Airflow: "
                     f"{type(error).__name__}: {first_line}")
    database_url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    services = None
    try:
        for _ in range(2):  # another process may take the free port before the API server binds it
            try:
                services = start_airflow(
                    tmp_path_factory.mktemp("airflow"), database_url=database_url, port=free_port(),
                    dags_folder=DAGS_FOLDER, username=USERNAME, password=PASSWORD, pool=POOL,
                    pool_slots=POOL_SLOTS)
                break
            except ServiceFailed as error:
                if "address already in use" not in str(error).lower():
                    _unavailable(f"Airflow did not start: {error}")
            except OSError as error:
                _unavailable(f"Airflow could not be launched: {error}")
        if services is None:
            _unavailable("Airflow found no free port")
            return
        try:
            yield AirflowInstance(url=services.url, username=USERNAME, password=PASSWORD, pool=POOL,
                                  pool_slots=POOL_SLOTS, services=services)
        finally:
            services.stop()
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
