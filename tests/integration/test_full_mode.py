"""The spine's scenario in full mode: requests through RabbitMQ, two workers, runs as Airflow DAG runs,
tracking in an MLflow server, the state of record in PostgreSQL.

The tests share one installation and run in order: one run end to end, four runs on two slots with a
worker killed mid-way, a run whose mart file is gone, then a score job of the first run.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from full_fixtures import MAX_CONCURRENT_RUNS, POLL_INTERVAL_S, Api, FullAnna, airflow_client, dag_runs_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 420.0


def when(text: str | None) -> datetime:
    assert text, "a finished task instance has start and end times"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


def test_a_run_is_one_dag_run_with_domains_in_parallel_tracked_in_mlflow(
        full_anna: FullAnna, api: Api) -> None:
    import mlflow

    api.task_with_sample("full-spine")
    run_id = api.train("full-spine")
    run = api.wait_finished(run_id, RUN_TIMEOUT_S)
    assert run["state"] == "succeeded", f"{run['error']}\n{full_anna.logs()}"
    assert run["metrics"]["test"]["roc_auc"] > 0.5
    assert {s["name"] for s in run["steps"]} >= {"validate_split", "train.card_transactions", "register"}
    assert all(s["state"] == "succeeded" for s in run["steps"]), run["steps"]

    with airflow_client(full_anna.airflow) as airflow:
        [dag_run] = dag_runs_of(airflow, run_id)
        assert dag_run["state"] == "success"
        answer = airflow.get(f"/dags/anna_training/dagRuns/{dag_run['dag_run_id']}/taskInstances",
                             params={"task_id_pattern": "train", "limit": 100})
        answer.raise_for_status()
        trains = [t for t in answer.json()["task_instances"] if t["task_id"] == "train"]
    assert len(trains) == 3
    spans = [(when(t["start_date"]), when(t["end_date"])) for t in trains]
    assert most_at_once(spans) >= 2, f"the domains' training tasks never overlapped: {spans}"

    client = mlflow.MlflowClient(full_anna.mlflow_url)
    experiment = client.get_experiment_by_name("full-spine")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("anna.run_id") == str(run_id)
                and "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.run_name for r in nested} >= {"card_transactions", "account_transactions",
                                                  "credit_history", "blender"}
    assert parent.data.metrics, "the parent run has the run's metrics"
    versions = client.search_model_versions("name = 'full-spine'")
    assert [v.run_id for v in versions] == [parent.info.run_id]
    assert run["model_uri"] == f"models:/full-spine/{versions[0].version}"

    scored = full_anna.data_dir / "demo" / "samples" / "default_12m_score.csv"
    with scored.open("rb") as handle:
        result = api.post(f"/runs/{run_id}/score", files={"file": (scored.name, handle)})
    assert result["n_rows"] > 0 and result["metrics"]["roc_auc"] > 0.5


def test_four_runs_share_two_slots_across_two_workers_and_survive_a_killed_worker(
        full_anna: FullAnna, api: Api) -> None:
    api.task_with_sample("full-four")
    ids = [api.train("full-four", seed=seed) for seed in range(4)]
    most_seen, killed = 0, False
    deadline = time.monotonic() + 3 * RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = [r for r in api.get("/runs", params={"task": "full-four"})]
        active = [r for r in runs if r["state"] in ("building", "running")]
        most_seen = max(most_seen, len(active))
        if not killed and any(r["state"] == "running" for r in runs):
            full_anna.kill_worker(1)  # it holds or follows runs right now
            killed = True
            time.sleep(3)
            full_anna.start_worker(1)
        if all(r["state"] in ("succeeded", "failed", "cancelled") for r in runs):
            break
        time.sleep(0.3)
    runs = {r["id"]: r for r in api.get("/runs", params={"task": "full-four"})}
    assert killed
    outcome = {i: (runs[i]["state"], runs[i]["error"]) for i in ids}
    assert {state for state, _ in outcome.values()} == {"succeeded"}, outcome
    assert most_seen <= MAX_CONCURRENT_RUNS
    spans = [(datetime.fromisoformat(runs[i]["started_at"]), datetime.fromisoformat(runs[i]["finished_at"]))
             for i in ids]
    assert most_at_once(spans) <= MAX_CONCURRENT_RUNS
    with airflow_client(full_anna.airflow) as airflow:
        for run_id in ids:
            assert len(dag_runs_of(airflow, run_id)) == 1, f"run {run_id} has more than one DAG run"
    assert api.get("/queue/dead-letters") == []


def test_a_task_that_fails_fails_the_run_with_its_error_within_a_poll(full_anna: FullAnna, api: Api) -> None:
    manifest = full_anna.data_dir / "marts" / "credit_history" / "manifest.json"
    aside = manifest.with_name("manifest.json.aside")
    api.task_with_sample("full-broken")
    run_id = api.train("full-broken")
    manifest.rename(aside)  # gone after the API accepted the run, before its extract task reads it
    try:
        run = _wait_failed_noting_time(api, run_id)
    finally:
        aside.rename(manifest)
    failed_at, run = run
    assert run["state"] == "failed"
    assert "extract.credit_history" in run["error"] and "manifest.json" in run["error"], run["error"]
    with airflow_client(full_anna.airflow) as airflow:
        [dag_run] = dag_runs_of(airflow, run_id)
        answer = airflow.get(f"/dags/anna_training/dagRuns/{dag_run['dag_run_id']}/taskInstances",
                             params={"limit": 100})
        answer.raise_for_status()
    [extract] = [t for t in answer.json()["task_instances"]
                 if t["task_id"] == "extract" and t["state"] == "failed"]
    lag = (failed_at - when(extract["end_date"])).total_seconds()
    assert lag <= POLL_INTERVAL_S + 2.0, f"the API showed the failure {lag:.1f} s after the task failed"
    assert not [r for r in api.get("/runs") if r["state"] in ("building", "running")]  # the slot is free


def _wait_failed_noting_time(api: Api, run_id: int) -> tuple[datetime, dict[str, Any]]:
    """Poll every 0.2 s: the moment the API first shows the run finished, and the run."""
    from datetime import UTC

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = api.get(f"/runs/{run_id}")
        if run["state"] in ("succeeded", "failed", "cancelled"):
            return datetime.now(UTC), run
        time.sleep(0.2)
    pytest.fail(f"run {run_id} did not finish\n{api.anna.logs()}")


def test_a_score_job_goes_through_rabbitmq_to_a_worker_and_matches_the_synchronous_scores(
        full_anna: FullAnna, api: Api) -> None:
    [run] = api.get("/runs", params={"task": "full-spine", "state": "succeeded"})  # the first test's run
    scored = full_anna.data_dir / "demo" / "samples" / "default_12m_score.csv"
    with scored.open("rb") as handle:
        job = api.post(f"/runs/{run['id']}/score-jobs", 202, files={"file": (scored.name, handle)})
    assert job["state"] == "queued" and job["n_rows"] > 0
    deadline = time.monotonic() + 180
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = api.get(f"/score-jobs/{job['id']}")
    assert job["state"] == "succeeded", f"{job}\n{full_anna.logs()}"
    assert job["attempt"] == 1 and job["error"] is None
    assert f"score job {job['id']} succeeded" in full_anna.logs(lines=2000)  # done by a worker
    result = api.get(f"/score-jobs/{job['id']}/result")
    with scored.open("rb") as handle:
        sync = api.post(f"/runs/{run['id']}/score", files={"file": (scored.name, handle)})
    assert result["n_rows"] == sync["n_rows"] == job["n_rows"]
    assert [(r["client_id"], r["report_date"]) for r in result["scores"]] == \
        [(r["client_id"], r["report_date"]) for r in sync["scores"]]
    assert [r["score"] for r in result["scores"]] == pytest.approx([r["score"] for r in sync["scores"]],
                                                                   rel=1e-5, abs=1e-7)
    assert job["metrics"] == result["metrics"] and set(result["metrics"]) == set(sync["metrics"])
    assert result["metrics"] == pytest.approx(sync["metrics"], rel=1e-5, abs=1e-7)
    assert result["metrics"]["roc_auc"] > 0.5
    assert api.get("/queue/dead-letters") == []


def test_cancelling_a_running_run_stops_its_dag_run_and_frees_the_slot(full_anna: FullAnna, api: Api) -> None:
    api.task_with_sample("full-cancel")
    run_id = api.train("full-cancel")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:  # wait until its encoders are training in Airflow
        run = api.get(f"/runs/{run_id}")
        if any(s["name"].startswith("train.") and s["state"] == "running" for s in run["steps"]):
            break
        assert run["state"] in ("queued", "building", "running"), run
        time.sleep(0.3)
    cancelled = api.post(f"/runs/{run_id}/cancel")
    assert cancelled["state"] == "cancelled"
    with airflow_client(full_anna.airflow) as airflow:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            [dag_run] = dag_runs_of(airflow, run_id)
            answer = airflow.get(f"/dags/anna_training/dagRuns/{dag_run['dag_run_id']}/taskInstances",
                                 params={"limit": 100})
            answer.raise_for_status()
            unfinished = [t for t in answer.json()["task_instances"]
                          if t["state"] in ("running", "queued", "scheduled", None)]
            if dag_run["state"] == "failed" and not unfinished:
                break
            time.sleep(1)
    assert dag_run["state"] == "failed" and not unfinished, (dag_run, unfinished)
    time.sleep(3 * POLL_INTERVAL_S)  # the workers keep following: the run must stay cancelled
    assert api.get(f"/runs/{run_id}")["state"] == "cancelled"
    assert not [r for r in api.get("/runs") if r["state"] in ("building", "running")]
