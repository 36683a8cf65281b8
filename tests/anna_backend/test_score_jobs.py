"""Score jobs in embedded mode: over the API, run by the dispatcher's scoring thread, on both databases."""

from __future__ import annotations

import io
import threading
from typing import Any

import pandas as pd
import pytest
from backend_fakes import (
    Api,
    FakeRunner,
    MakeTask,
    csv_bytes,
    sample_frame,
    scorer_of,
    seed_runs,
    succeed_run,
    upload,
    wait_for,
)

from anna_backend.bootstrap import Wiring
from anna_backend.domain.errors import NotFound, ServiceUnavailable
from anna_backend.domain.model import utcnow
from anna_backend.domain.score_job import ScoreJob, ScoreJobState
from anna_backend.service_layer import scoring
from anna_backend.service_layer.ports import Backend

pytestmark = pytest.mark.all_databases

ROWS = b"client_id,report_date,target\n12,2024-06-01,1\n7,2024-07-15,0\n3,2024-06-01,1\n"


@pytest.fixture
def run_id(make_task: MakeTask, api: Api, analyst: dict[str, str], backend: Backend) -> int:
    """A succeeded run of task "churn"."""
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    answer = api.client.post("/tasks/churn/runs", headers=analyst)
    assert answer.status_code == 201, answer.text
    succeed_run(backend, answer.json()["id"])
    return int(answer.json()["id"])


def submit(api: Api, headers: dict[str, str], run_id: int, content: bytes = ROWS, status: int = 202) -> Any:
    answer = api.client.post(f"/runs/{run_id}/score-jobs", files={"file": ("rows.csv", io.BytesIO(content))},
                             headers=headers)
    assert answer.status_code == status, answer.text
    return answer.json()


def job_of(api: Api, headers: dict[str, str], job_id: int) -> dict[str, Any]:
    answer = api.client.get(f"/score-jobs/{job_id}", headers=headers)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def all_jobs(backend: Backend) -> list[ScoreJob]:
    with backend.uow() as uow:
        return [j for state in ScoreJobState for j in uow.score_jobs.in_state(state)]


def test_a_score_job_runs_in_the_background_and_its_result_equals_the_synchronous_answer(
        api: Api, analyst: dict[str, str], wiring: Wiring, run_id: int) -> None:
    wiring.dispatcher.start()
    queued = submit(api, analyst, run_id)
    assert queued["state"] == "queued" and queued["n_rows"] == 3 and queued["attempt"] == 1
    assert queued["filename"] == "rows.csv" and queued["created_by"] == "alice" and queued["metrics"] is None
    wait_for(lambda: job_of(api, analyst, queued["id"])["state"] == "succeeded")
    job = job_of(api, analyst, queued["id"])
    assert job["metrics"] == {"roc_auc": 0.5} and job["error"] is None and job["attempt"] == 1
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]

    files = {"file": ("rows.csv", io.BytesIO(ROWS))}
    sync = api.client.post(f"/runs/{run_id}/score", files=files, headers=analyst)
    result = api.client.get(f"/score-jobs/{job['id']}/result", headers=analyst)
    assert result.status_code == 200 and result.json() == sync.json()
    assert result.json()["scores"][1] == {"client_id": 7, "report_date": "2024-07-15", "score": 0.7}

    sync_csv = api.client.post(f"/runs/{run_id}/score?format=csv", headers=analyst,
                               files={"file": ("rows.csv", io.BytesIO(ROWS))})
    as_csv = api.client.get(f"/score-jobs/{job['id']}/result?format=csv", headers=analyst)
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text == sync_csv.text and as_csv.headers["x-anna-metrics"] == '{"roc_auc": 0.5}'

    folder = wiring.backend.settings.score_jobs_dir / str(job["id"])
    assert sorted(p.name for p in folder.iterdir()) == ["input.parquet", "scores.parquet"]  # no temp files
    assert pd.read_parquet(folder / "input.parquet")["client_id"].tolist() == [12, 7, 3]


def test_a_rejected_file_is_422_naming_row_and_column_and_nothing_is_stored(
        api: Api, analyst: dict[str, str], backend: Backend, run_id: int) -> None:
    bad = submit(api, analyst, run_id, b"client_id,report_date\nx,2024-06-01\n", status=422)
    assert bad["detail"][0] == {"row": 1, "column": "client_id",
                                "msg": "client_id must be an integer, got 'x'"}
    no_date = submit(api, analyst, run_id, b"client_id\n1\n", status=422)
    assert no_date["detail"][0]["column"] == "report_date"
    assert all_jobs(backend) == []
    jobs_dir = backend.settings.score_jobs_dir
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []


def test_score_jobs_need_a_succeeded_run_a_writer_and_known_ids(
        make_task: MakeTask, api: Api, analyst: dict[str, str], backend: Backend) -> None:
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    queued_run = api.client.post("/tasks/churn/runs", headers=analyst).json()
    conflict = submit(api, analyst, queued_run["id"], status=409)
    assert conflict["detail"] == f"run {queued_run['id']} is queued; only a succeeded run's model can score"
    submit(api, analyst, 999, status=404)
    succeed_run(backend, queued_run["id"])
    submit(api, api.user("bob", "approver"), queued_run["id"], status=403)
    assert all_jobs(backend) == []
    assert api.client.get("/score-jobs/999", headers=analyst).status_code == 404
    assert api.client.get("/score-jobs/999/result", headers=analyst).status_code == 404


def test_the_result_is_409_until_the_job_succeeds_then_a_dispatcher_round_runs_it(
        api: Api, analyst: dict[str, str], wiring: Wiring, run_id: int) -> None:
    job = submit(api, analyst, run_id)
    early = api.client.get(f"/score-jobs/{job['id']}/result", headers=analyst)
    assert early.status_code == 409 and "queued" in early.json()["detail"]
    wiring.dispatcher.tick()
    wiring.dispatcher.join_scoring()
    assert job_of(api, analyst, job["id"])["state"] == "succeeded"
    assert api.client.get(f"/score-jobs/{job['id']}/result", headers=analyst).status_code == 200


def test_a_scoring_error_fails_the_job_with_its_type_and_message(
        api: Api, analyst: dict[str, str], wiring: Wiring, run_id: int) -> None:
    scorer_of(wiring.backend).errors = [NotFound(f"run {run_id} has no packaged model to score with")]
    job = submit(api, analyst, run_id)
    wiring.dispatcher.tick()
    wiring.dispatcher.join_scoring()
    failed = job_of(api, analyst, job["id"])
    assert failed["state"] == "failed" and failed["finished_at"] is not None
    assert failed["error"] == f"NotFound: run {run_id} has no packaged model to score with"
    result = api.client.get(f"/score-jobs/{job['id']}/result", headers=analyst)
    assert result.status_code == 409 and "no packaged model" in result.json()["detail"]


def test_a_queue_that_cannot_take_the_job_is_503_and_the_job_fails_with_the_reason(
        api: Api, analyst: dict[str, str], backend: Backend, run_id: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def down(job_id: int, run_id: int) -> None:
        raise ServiceUnavailable("RabbitMQ at amqp://guest:***@127.0.0.1:1/: could not publish")

    monkeypatch.setattr(backend.queue, "submitted_score", down)
    answer = api.client.post(f"/runs/{run_id}/score-jobs", files={"file": ("rows.csv", io.BytesIO(ROWS))},
                             headers=analyst)
    assert answer.status_code == 503 and "RabbitMQ" in answer.json()["detail"]
    [job] = all_jobs(backend)
    assert job.state is ScoreJobState.FAILED and job.error is not None
    assert job.error.startswith("could not be queued: RabbitMQ at")


def test_a_job_a_dead_server_left_running_is_requeued_at_start_and_runs_as_the_next_attempt(
        api: Api, analyst: dict[str, str], wiring: Wiring, run_id: int) -> None:
    job = submit(api, analyst, run_id)
    with wiring.backend.uow() as uow:  # the old server's scoring thread had claimed it, then the server died
        assert uow.score_jobs.claim(job["id"], now=utcnow()) is not None
        uow.commit()
    assert wiring.dispatcher.recover() == []  # (run ids: no run was left running)
    again = job_of(api, analyst, job["id"])
    assert again["state"] == "queued" and again["attempt"] == 2 and again["started_at"] is None
    wiring.dispatcher.tick()
    wiring.dispatcher.join_scoring()
    done = job_of(api, analyst, job["id"])
    assert done["state"] == "succeeded" and done["attempt"] == 2
    assert scorer_of(wiring.backend).calls == 1


def test_a_long_score_job_does_not_hold_up_runs(
        make_task: MakeTask, api: Api, analyst: dict[str, str], wiring: Wiring, runner: FakeRunner,
        run_id: int) -> None:
    gate = threading.Event()
    scorer_of(wiring.backend).gate = gate
    wiring.dispatcher.start()
    job = submit(api, analyst, run_id)
    wait_for(lambda: job_of(api, analyst, job["id"])["state"] == "running")
    run = api.client.post("/tasks/churn/runs", headers=analyst).json()
    wait_for(lambda: api.client.get(f"/runs/{run['id']}", headers=analyst).json()["state"] == "succeeded")
    assert job_of(api, analyst, job["id"])["state"] == "running"
    gate.set()
    wait_for(lambda: job_of(api, analyst, job["id"])["state"] == "succeeded")


def test_a_claim_is_conditional_and_a_takeover_needs_the_holders_attempt(backend: Backend) -> None:
    [run_id] = seed_runs(backend, 1)
    succeed_run(backend, run_id)
    with backend.uow() as uow:
        user = uow.users.get_by_username("alice")
    assert user is not None
    job = scoring.submit_score_job(backend, user=user, run_id=run_id, filename="r.csv", content=ROWS)
    assert job.id is not None and job.input_path.endswith("input.parquet")
    with backend.uow() as uow:
        first = uow.score_jobs.claim(job.id, now=utcnow())
        second = uow.score_jobs.claim(job.id, now=utcnow())
        wrong = uow.score_jobs.claim(job.id, now=utcnow(), takeover_attempt=2)
        taken = uow.score_jobs.claim(job.id, now=utcnow(), takeover_attempt=1)
        uow.commit()
    assert first is not None and first.attempt == 1 and first.state is ScoreJobState.RUNNING
    assert second is None and wrong is None
    assert taken is not None and taken.attempt == 2
    assert not scoring.fail_score_job(backend, job.id, "stale", attempt=1)  # the replaced holder is mute
    done = scoring.execute_score_job(backend, job.id, take_over=True)
    assert done.state is ScoreJobState.SUCCEEDED and done.attempt == 3
    assert scoring.execute_score_job(backend, job.id, take_over=True) == done  # idempotent
    assert scorer_of(backend).calls == 1
