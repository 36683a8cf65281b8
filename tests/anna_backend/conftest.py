"""Fixtures for the backend: a fresh data dir with SQLite, fake marts, a fake runner, and an API client."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_fakes import ADMIN_PASSWORD, Api, FakeMartCatalog, FakeRunner, FakeScorer
from fastapi.testclient import TestClient

from anna_backend.bootstrap import Wiring, bootstrap
from anna_backend.entrypoints.api import create_app
from anna_backend.service_layer import auth
from anna_backend.service_layer.ports import Backend
from anna_backend.settings import Settings


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
def settings(tmp_path: Path, clean_env: None) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
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
