"""End to end on tiny demo data: API, dispatcher, a real driver training real encoders, MLflow, scoring."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pandas as pd
import pytest
from backend_fakes import ADMIN_PASSWORD, Api, wait_for
from fastapi.testclient import TestClient

from anna_backend.bootstrap import Wiring, bootstrap
from anna_backend.entrypoints.api import create_app
from anna_backend.service_layer import auth
from anna_backend.settings import Settings
from anna_models.demo_data import generate_demo

pytestmark = pytest.mark.slow


@pytest.fixture
def real(settings: Settings) -> Iterator[Wiring]:
    generate_demo(settings.data_dir, clients=300, seed=3)
    wired = bootstrap(settings)  # every adapter real: marts, git, LocalRunner, MLflow, scorer
    auth.ensure_admin(wired.backend)
    wired.dispatcher.start()
    yield wired
    wired.close()


def test_train_watch_report_and_score_on_demo_data(real: Wiring, settings: Settings) -> None:
    with TestClient(create_app(real.backend)) as client:
        api = Api(client)
        analyst = api.user("alice", "analyst")
        marts = client.get("/marts", headers=analyst).json()
        assert len(marts) >= 2
        task = client.post(
            "/tasks", json={"name": "default-12m", "task_type": "binary"}, headers=analyst
        ).json()
        assert task["domains"] == sorted(m["name"] for m in marts)

        sample_csv = (settings.data_dir / "demo" / "samples" / "default_12m.csv").read_bytes()
        uploaded = client.post(
            "/tasks/default-12m/samples", files={"file": ("default_12m.csv", sample_csv)}, headers=analyst
        )
        assert uploaded.status_code == 201, uploaded.text

        params = {"default": {"hidden": 8, "max_epochs": 1, "max_len": 32}}
        run = client.post("/tasks/default-12m/runs", json={"params": params}, headers=analyst).json()
        wait_for(
            lambda: (
                client.get(f"/runs/{run['id']}", headers=analyst).json()["state"]
                in ("succeeded", "failed", "cancelled")
            ),
            timeout=600,
            interval=0.5,
        )
        done = client.get(f"/runs/{run['id']}", headers=analyst).json()
        log = (settings.runs_dir / str(run["id"]) / "driver.log").read_text()
        assert done["state"] == "succeeded", f"{done['error']}\n{log[-3000:]}"
        assert all(s["state"] == "succeeded" for s in done["steps"]), done["steps"]
        assert {s["name"] for s in done["steps"]} >= {f"train.{d}" for d in task["domains"]}
        # What each step's epoch counted, as the API says: the encoders' epochs, LightGBM's boosting rounds.
        units = {s["name"]: s["unit"] for s in done["steps"] if s["epoch"]}
        assert all(units[f"train.{d}"] == "epoch" for d in task["domains"]), units
        assert all(unit == ("round" if name == "train_lightgbm" else "epoch") for name, unit in units.items())
        assert "roc_auc" in done["metrics"]["test"]
        assert set(done["metrics"]["domains"]) == set(task["domains"])
        assert done["model_uri"]

        report = client.get(f"/runs/{run['id']}/report", headers=analyst)
        assert report.status_code == 200 and report.json()["run_id"] == run["id"]
        for name in report.json()["plots"]:
            plot = client.get(f"/runs/{run['id']}/plots/{name}", headers=analyst)
            assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
            assert plot.content.startswith(b"\x89PNG")
        unknown = client.get(f"/runs/{run['id']}/plots/../report.json", headers=analyst)
        assert unknown.status_code == 404
        unknown = client.get(f"/runs/{run['id']}/plots/roc.png", headers=analyst)
        assert unknown.status_code == 404 and "its plots: leaderboard.png, " in unknown.json()["detail"]

        rows = pd.read_csv(io.BytesIO(sample_csv)).head(50)
        scored = client.post(
            f"/runs/{run['id']}/score",
            headers=analyst,
            files={"file": ("rows.csv", rows.to_csv(index=False).encode())},
        )
        assert scored.status_code == 200, scored.text
        body = scored.json()
        assert body["n_rows"] == 50 and set(body["metrics"]) >= {"roc_auc"}
        assert all(0.0 <= s["score"] <= 1.0 for s in body["scores"])
        assert (
            client.post("/auth/token", json={"username": "admin", "password": ADMIN_PASSWORD}).status_code
            == 200
        )
