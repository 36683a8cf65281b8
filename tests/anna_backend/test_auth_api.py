"""Logging in, bearer tokens, the first admin, and who may do what."""

from __future__ import annotations

import stat
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from backend_fakes import ADMIN_PASSWORD, Api, FakeMartCatalog, MakeTask, csv_bytes, sample_frame, upload

from anna_backend.adapters import tables
from anna_backend.bootstrap import Wiring, bootstrap
from anna_backend.domain.model import utcnow
from anna_backend.service_layer import auth
from anna_backend.settings import Settings

pytestmark = pytest.mark.all_databases


def test_login_with_json_or_form_gives_a_working_token(api: Api) -> None:
    for kwargs in (
        {"json": {"username": "admin", "password": ADMIN_PASSWORD}},
        {"data": {"username": "admin", "password": ADMIN_PASSWORD, "grant_type": "password"}},
    ):
        answer = api.client.post("/auth/token", **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["token_type"] == "bearer" and body["expires_at"]
        me = api.client.get("/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert me.json() == {"id": 1, "username": "admin", "role": "admin"}


@pytest.mark.parametrize(
    "credentials",
    [{"username": "admin", "password": "wrong"}, {"username": "nobody", "password": ADMIN_PASSWORD}],
)
def test_bad_credentials_are_401(api: Api, credentials: dict[str, str]) -> None:
    answer = api.client.post("/auth/token", json=credentials)
    assert answer.status_code == 401
    assert answer.json()["detail"] == "wrong username or password"


def test_login_without_fields_is_422(api: Api) -> None:
    assert api.client.post("/auth/token", json={"username": "admin"}).status_code == 422


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}]
)
def test_requests_without_a_valid_token_are_401(api: Api, headers: dict[str, str]) -> None:
    for path in ("/users/me", "/tasks", "/runs", "/marts"):
        answer = api.client.get(path, headers=headers)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"] == "Bearer"


def test_an_expired_token_is_401(api: Api, wiring: Wiring) -> None:
    headers = api.headers()
    assert api.client.get("/users/me", headers=headers).status_code == 200
    with wiring.engine.begin() as connection:
        connection.execute(sa.update(tables.tokens).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert api.client.get("/users/me", headers=headers).status_code == 401


def test_passwords_and_tokens_are_stored_hashed(api: Api, wiring: Wiring) -> None:
    token = api.token("admin", ADMIN_PASSWORD)
    with wiring.engine.connect() as connection:
        hashes = connection.execute(sa.select(tables.users.c.password_hash)).scalars().all()
        token_hashes = connection.execute(sa.select(tables.tokens.c.token_hash)).scalars().all()
    assert all(h.startswith("scrypt$") and ADMIN_PASSWORD not in h for h in hashes)
    assert token not in token_hashes and auth.hash_token(token) in token_hashes


def test_only_an_admin_creates_users(api: Api, analyst: dict[str, str]) -> None:
    answer = api.client.post(
        "/users", json={"username": "eve", "password": "pw-eve-123", "role": "admin"}, headers=analyst
    )
    assert answer.status_code == 403
    admin = api.headers()
    duplicate = api.client.post(
        "/users", json={"username": "alice", "password": "x1", "role": "analyst"}, headers=admin
    )
    assert duplicate.status_code == 409
    bad_role = api.client.post(
        "/users", json={"username": "carl", "password": "x1", "role": "root"}, headers=admin
    )
    assert bad_role.status_code == 422


def test_approver_reads_everything_but_changes_nothing(
    make_task: MakeTask, api: Api, analyst: dict[str, str]
) -> None:
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    run = api.client.post("/tasks/churn/runs", json={}, headers=analyst).json()
    approver = api.user("bob", "approver")
    for path in ("/tasks", "/tasks/churn", "/tasks/churn/samples", "/runs", f"/runs/{run['id']}", "/marts"):
        assert api.client.get(path, headers=approver).status_code == 200, path
    forbidden = [
        api.client.post("/tasks", json={"name": "other", "task_type": "binary"}, headers=approver),
        api.client.post("/tasks/churn/runs", json={}, headers=approver),
        api.client.post(f"/runs/{run['id']}/cancel", headers=approver),
        api.client.post(
            f"/runs/{run['id']}/score",
            headers=approver,
            files={"file": ("s.csv", b"client_id,report_date\n1,2024-06-01\n")},
        ),
        api.client.post(
            "/users", json={"username": "x1", "password": "pw", "role": "analyst"}, headers=approver
        ),
    ]
    assert [a.status_code for a in forbidden] == [403] * len(forbidden)


def test_first_start_creates_admin_with_a_random_password_file(settings: Settings) -> None:
    settings = settings.model_copy(update={"admin_password": None})
    wired = bootstrap(settings, marts=FakeMartCatalog())
    try:
        path = auth.ensure_admin(wired.backend)
        assert path is not None
        password_file = settings.admin_password_file
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 16
        assert auth.issue_token(wired.backend, username="admin", password=password).access_token
        assert auth.ensure_admin(wired.backend) is None  # only once
    finally:
        wired.close()


def test_prod_refuses_a_default_admin_password(clean_env: None, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="ANNA_ADMIN_PASSWORD"):
        Settings(env="prod", data_dir=tmp_path, admin_password="admin")
    Settings(env="dev", data_dir=tmp_path, admin_password="admin")
    Settings(env="prod", data_dir=tmp_path, admin_password="a-long-and-unguessable-one")
