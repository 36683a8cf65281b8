"""Runs over the API: listing, cancelling, the report and retro-inference scoring."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from backend_fakes import Api, FakeRunner, MakeTask, csv_bytes, sample_frame, upload, wait_for

from anna_backend.bootstrap import Wiring

pytestmark = pytest.mark.all_databases


def submit(api: Api, headers: dict[str, str], task: str = "churn", **body: object) -> dict[str, object]:
    answer = api.client.post(f"/tasks/{task}/runs", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def finish_all(wiring: Wiring, api: Api, headers: dict[str, str]) -> None:
    wiring.dispatcher.start()
    wait_for(lambda: all(r["state"] == "succeeded" for r in api.client.get("/runs", headers=headers).json()))
    wiring.dispatcher.stop()


def test_runs_are_listed_newest_first_and_filtered(
    make_task: MakeTask, api: Api, analyst: dict[str, str], wiring: Wiring
) -> None:
    make_task("churn")
    make_task("other")
    for task in ("churn", "other"):
        upload(api, analyst, task, csv_bytes(sample_frame()))
    first, second = submit(api, analyst), submit(api, analyst, "other")
    listed = api.client.get("/runs", headers=analyst).json()
    assert [r["id"] for r in listed] == [second["id"], first["id"]]
    assert [r["id"] for r in api.client.get("/runs?task=churn", headers=analyst).json()] == [first["id"]]
    assert api.client.get("/runs?state=running", headers=analyst).json() == []
    assert api.client.get("/runs?state=sleeping", headers=analyst).status_code == 422
    assert api.client.get("/runs?task=nope", headers=analyst).status_code == 404
    assert api.client.get("/runs/999", headers=analyst).status_code == 404

    finish_all(wiring, api, analyst)
    run = api.client.get(f"/runs/{first['id']}", headers=analyst).json()
    assert run["state"] == "succeeded" and run["queue_position"] is None
    assert [s["name"] for s in run["steps"]] == ["validate_split", "train.cards", "blend"]
    assert all(s["state"] == "succeeded" for s in run["steps"])
    assert run["metrics"]["test"] == {"roc_auc": 0.7} and run["model_uri"] == f"models:/fake/{first['id']}"
    assert run["started_at"] <= run["finished_at"]


def test_cancel_a_queued_run_then_409_once_finished(
    make_task: MakeTask, api: Api, analyst: dict[str, str], runner: FakeRunner
) -> None:
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    no_body = api.client.post("/tasks/churn/runs", headers=analyst)  # everything has a default
    assert no_body.status_code == 201, no_body.text
    run = no_body.json()
    cancelled = api.client.post(f"/runs/{run['id']}/cancel", headers=analyst)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = api.client.post(f"/runs/{run['id']}/cancel", headers=analyst)
    assert again.status_code == 409
    assert runner.started == []


def test_report_is_409_until_the_run_succeeds(
    make_task: MakeTask, api: Api, analyst: dict[str, str], wiring: Wiring
) -> None:
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    run = submit(api, analyst)
    assert api.client.get(f"/runs/{run['id']}/report", headers=analyst).status_code == 409
    finish_all(wiring, api, analyst)
    report = {"run_id": run["id"], "blend": {"test": {"metrics": {"roc_auc": 0.7, "r2": float("nan")}}}}
    run_dir = wiring.backend.settings.runs_dir / str(run["id"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report))  # Python writes NaN; strict JSON cannot
    answer = api.client.get(f"/runs/{run['id']}/report", headers=analyst)
    assert answer.status_code == 200
    assert answer.json() == {
        "run_id": run["id"],
        "blend": {"test": {"metrics": {"roc_auc": 0.7, "r2": None}}},
    }


def test_scoring_returns_json_or_csv_and_metrics_with_a_target(
    make_task: MakeTask, api: Api, analyst: dict[str, str], wiring: Wiring
) -> None:
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    run = submit(api, analyst)
    rows = b"client_id,report_date\n12,2024-06-01\n7,2024-07-15\n"
    score = f"/runs/{run['id']}/score"
    assert api.client.post(score, files={"file": ("s.csv", rows)}, headers=analyst).status_code == 409
    finish_all(wiring, api, analyst)

    answer = api.client.post(score, files={"file": ("s.csv", rows)}, headers=analyst)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["run_id"] == run["id"] and body["n_rows"] == 2 and body["metrics"] is None
    assert body["scores"] == [
        {"client_id": 12, "report_date": "2024-06-01", "score": 0.2},
        {"client_id": 7, "report_date": "2024-07-15", "score": 0.7},
    ]

    as_csv = api.client.post(f"{score}?format=csv", files={"file": ("s.csv", rows)}, headers=analyst)
    assert as_csv.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(as_csv.text))
    assert list(frame.columns) == ["client_id", "report_date", "score"] and len(frame) == 2

    labelled = api.client.post(
        score, headers=analyst, files={"file": ("s.csv", b"client_id,report_date,target\n1,2024-06-01,1\n")}
    )
    assert labelled.json()["metrics"] == {"roc_auc": 0.5}

    bad = api.client.post(
        score, files={"file": ("s.csv", b"client_id,report_date\nx,2024-06-01\n")}, headers=analyst
    )
    assert bad.status_code == 422 and bad.json()["detail"][0] == {
        "row": 1,
        "column": "client_id",
        "msg": "client_id must be an integer, got 'x'",
    }
