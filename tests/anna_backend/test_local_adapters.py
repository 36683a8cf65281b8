"""The embedded adapters on their own: marts on disk, the sample store, SQLite set-up and migrations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from backend_fakes import Api, seed_runs

from anna_backend.adapters.artifacts import LocalSampleStore
from anna_backend.adapters.database import make_engine, migrate
from anna_backend.adapters.marts import LocalMartCatalog
from anna_backend.domain.model import RunStep
from anna_backend.service_layer.ports import Backend
from anna_backend.settings import Settings


def write_mart(root: Path, name: str, clients: list[int], version: str) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("events-*.parquet"):
        old.unlink()
    half = len(clients) // 2
    for part, chunk in enumerate((clients[:half], clients[half:])):
        pd.DataFrame(
            {
                "client_id": np.repeat(np.asarray(chunk, np.int64), 2),
                "event_time": pd.Timestamp("2024-01-01"),
                "amount": np.float32(1.0),
            }
        ).to_parquet(folder / f"events-{part:05d}.parquet", index=False)
    manifest = {
        "name": name,
        "version": version,
        "time_min": "2024-01-01T00:00:00",
        "time_max": "2024-12-31T00:00:00",
        "n_clients": len(clients),
        "n_events": 2 * len(clients),
        "features": {"amount": {"kind": "numeric", "transform": "none", "mean": 0.0, "std": 1.0}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_mart_catalog_reads_manifests_and_client_ids_per_version(tmp_path: Path) -> None:
    write_mart(tmp_path, "cards", [5, 3, 9, 7], "v1")
    (tmp_path / "not-a-mart").mkdir()
    catalog = LocalMartCatalog(tmp_path)
    assert [m["name"] for m in catalog.manifests()] == ["cards"]
    assert catalog.client_ids("cards").tolist() == [3, 5, 7, 9]
    write_mart(tmp_path, "cards", [1, 2], "v2")  # a new version is read again
    assert catalog.client_ids("cards").tolist() == [1, 2]
    assert LocalMartCatalog(tmp_path / "missing").manifests() == []


def test_sample_store_writes_each_content_once(tmp_path: Path) -> None:
    store = LocalSampleStore(tmp_path / "samples")
    frame = pd.DataFrame({"client_id": [1], "report_date": [pd.Timestamp("2024-06-01")], "target": [1]})
    path, created = store.save("abc", frame)
    assert created and store.exists(path) and Path(path).name == "abc.parquet"
    assert store.save("abc", frame) == (path, False)
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["abc.parquet"]  # no temporary files left


def test_sqlite_runs_in_wal_mode_and_migrations_are_idempotent(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    migrate(engine)
    migrate(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        tables = set(sa.inspect(connection).get_table_names())
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert {"users", "tokens", "tasks", "samples", "runs", "run_steps", "score_jobs"} <= tables
    assert version == "0004_backfill_step_unit"
    engine.dispose()


def test_migrations_bring_a_fresh_postgresql_database_to_head(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    migrate(engine)
    migrate(engine)  # idempotent here too
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        tables = set(inspector.get_table_names())
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        columns = {c["name"]: c for c in inspector.get_columns("runs")}
        step_columns = {c["name"] for c in inspector.get_columns("run_steps")}
        indexes = {i["name"] for i in inspector.get_indexes("runs")}
        job_indexes = {i["name"] for i in inspector.get_indexes("score_jobs")}
    assert {"users", "tokens", "tasks", "samples", "runs", "run_steps", "score_jobs"} <= tables
    assert version == "0004_backfill_step_unit"
    assert columns["id"]["autoincrement"] and str(columns["params"]["type"]) == "JSON"
    assert "unit" in step_columns
    assert {"ix_runs_task_id", "ix_runs_state_id"} <= indexes
    assert {"ix_score_jobs_run_id", "ix_score_jobs_state_id"} <= job_indexes
    engine.dispose()


@pytest.mark.all_databases
def test_upgrading_gives_steps_recorded_before_units_their_unit(backend: Backend, settings: Settings) -> None:
    """A run trained before migration 0003 showed its LightGBM step as "epoch 150/3000"."""
    [run_id] = seed_runs(backend, 1)
    steps = {"train.cards": 7, "train_lightgbm": 150, "blend": None}
    with backend.uow() as uow:
        for name, epoch in steps.items():
            uow.runs.save_step(run_id, RunStep(name, epoch=epoch, max_epochs=epoch and 3 * epoch))
        uow.commit()
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:  # the database as 0003 left it: a unit column, empty on old steps
        connection.execute(sa.text("UPDATE run_steps SET unit = NULL"))
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0003_step_unit'"))
    migrate(engine)
    engine.dispose()
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
    assert run is not None
    assert {s.name: s.unit for s in run.steps if s.name in steps} == {
        "train.cards": "epoch", "train_lightgbm": "round", "blend": None}


def test_openapi_docs_are_served_also_from_the_address_make_run_prints(api: Api) -> None:
    assert api.client.get("/docs").status_code == 200
    home = api.client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/docs"
    assert "swagger" in api.client.get("/").text.lower()
    paths = api.client.get("/openapi.json").json()["paths"]
    assert {"/auth/token", "/tasks/{task_ref}/samples", "/runs/{run_id}/score", "/runs/{run_id}/score-jobs",
            "/score-jobs/{job_id}", "/score-jobs/{job_id}/result",
            "/runs/{run_id}/plots/{name}"} <= set(paths)
    assert "image/png" in paths["/runs/{run_id}/plots/{name}"]["get"]["responses"]["200"]["content"]


def test_the_server_starts_without_heavy_imports() -> None:
    """`anna serve` must start fast: torch, MLflow and scikit-learn load only when a model is used."""
    import subprocess
    import sys

    code = ("import sys, anna_backend.entrypoints.serve, anna_backend.entrypoints.pipeline_driver; "
            "print(sorted(m for m in ('torch', 'mlflow', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
