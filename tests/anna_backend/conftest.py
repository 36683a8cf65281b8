"""Fixtures for the backend: a fresh data dir and database, fake marts, a fake runner, and an API client.

The database is SQLite unless a test module is marked ``all_databases``: its tests then run once on SQLite
and once on a fresh PostgreSQL database of their own (``ANNA_TEST_POSTGRES_URL``, default the local server).
Without PostgreSQL those cases are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from backend_fakes import ADMIN_PASSWORD, Api, FakeMartCatalog, FakeRunner, FakeScorer
from fastapi.testclient import TestClient

from anna_backend.bootstrap import Wiring, bootstrap
from anna_backend.entrypoints.api import create_app
from anna_backend.service_layer import auth
from anna_backend.service_layer.ports import Backend
from anna_backend.settings import Settings

# The server's ``postgres`` database: tests connect there only to create and drop their own databases.
POSTGRES_ADMIN_URL = os.environ.get(
    "ANNA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DATABASES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "all_databases: run the module's database tests on SQLite and on PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" in metafunc.fixturenames and metafunc.definition.get_closest_marker("all_databases"):
        metafunc.parametrize("database", DATABASES, indirect=True)


_postgres_problem: list[str] = []  # why PostgreSQL is unreachable, found once per session


def _postgres_admin() -> sa.Engine:
    """An AUTOCOMMIT engine on the server's ``postgres`` database, or skip/fail when it is unreachable."""
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    if not _postgres_problem:
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            _postgres_problem.append("")
        except Exception as error:  # no driver, no server, refused login: all mean "no PostgreSQL here"
            first_line = (str(error).splitlines() or [""])[0]
            _postgres_problem.append(
                f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {type(error).__name__}: {first_line}")
    if _postgres_problem[0]:
        engine.dispose()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(_postgres_problem[0] + " (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(_postgres_problem[0])
    return engine


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database of this test's own; dropped (connections and all) afterwards."""
    admin = _postgres_admin()
    name = f"anna_test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL the test's backend uses: SQLite in its data dir, or a fresh PostgreSQL database."""
    kind = getattr(request, "param", "sqlite")
    if kind == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'data' / 'anna.db'}"


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests hash passwords with a low scrypt cost: the hash format and checks stay the same."""
    monkeypatch.setattr(auth, "SCRYPT_N", 2**8)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ANNA_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path, clean_env: None, database: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database,
        min_sample_rows=20,
        min_positives=3,
        dispatch_interval_s=0.02,
        progress_interval_s=0.0,
        admin_password=ADMIN_PASSWORD,
    )


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def wiring(settings: Settings, runner: FakeRunner) -> Iterator[Wiring]:
    wired = bootstrap(settings, runner=runner, marts=FakeMartCatalog(), scorer=FakeScorer())
    runner.backend = wired.backend
    auth.ensure_admin(wired.backend)
    yield wired
    wired.dispatcher.stop()
    runner.join()
    wired.close()


@pytest.fixture
def backend(wiring: Wiring) -> Backend:
    return wiring.backend


@pytest.fixture
def api(wiring: Wiring) -> Iterator[Api]:
    with TestClient(create_app(wiring.backend)) as client:
        yield Api(client)


@pytest.fixture
def analyst(api: Api) -> dict[str, str]:
    return api.user("alice", "analyst")


@pytest.fixture
def make_task(api: Api, analyst: dict[str, str]) -> Callable[..., dict[str, Any]]:
    def make(name: str = "churn", task_type: str = "binary", **fields: Any) -> dict[str, Any]:
        answer = api.client.post(
            "/tasks",
            json={"name": name, "task_type": task_type, "domains": ["cards"], **fields},
            headers=analyst,
        )
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    return make
