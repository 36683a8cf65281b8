"""The Airflow orchestrator against a real Airflow 3: a tiny demo run trains end to end as one DAG run, a run
whose data is broken fails at once with the step's reason, and a stopped run's tasks end."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from airflow_fixtures import AirflowInstance  # the fixture itself comes from conftest.py: one Airflow
from pydantic import SecretStr

from anna_backend.adapters.airflow import AirflowOrchestrator
from anna_backend.domain.model import Run, Task
from anna_backend.service_layer.ports import ModelConfigRepo, PipelineStatus
from anna_backend.settings import Settings
from anna_models.config import RunConfig
from anna_models.demo_data import generate_demo
from anna_models.progress import read_progress

pytestmark = pytest.mark.integration

TINY_PARAMS = {"default": {"max_epochs": 2, "hidden": 16, "max_len": 32, "search_budget_s": 0}}


class OneRunConfig(ModelConfigRepo):
    """The model-config repo of a single run, held in memory."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def create_task(self, task: Task) -> str:
        raise NotImplementedError

    def record_run(self, task: Task, config: RunConfig, *, author: str) -> tuple[str, str]:
        raise NotImplementedError

    def read_run_config(self, run_id: int) -> RunConfig:
        assert run_id == self.config.run_id
        return self.config

    def tag_commit(self, tag: str) -> str:
        raise NotImplementedError


def demo_run(data_dir: Path, run_id: int) -> RunConfig:
    """Tiny demo data under ``data_dir`` and a binary run over all its marts, as ``submit_run`` makes one."""
    summary = generate_demo(data_dir, clients=1500, seed=7)
    sample = pd.read_csv(data_dir / "demo" / "samples" / "default_12m.csv")
    sample["report_date"] = pd.to_datetime(sample["report_date"]).astype("datetime64[s]")
    sample_path = data_dir / "samples" / "default_12m.parquet"
    sample_path.parent.mkdir(parents=True)
    sample.to_parquet(sample_path, index=False)
    versions = summary["mart_versions"]
    return RunConfig(run_id=run_id, task_name="default-12m", task_type="binary", metric="roc_auc",
                     domains=sorted(versions), sample_path=str(sample_path), sample_fingerprint="tiny",
                     marts_root=str(data_dir / "marts"), mart_versions=versions,
                     tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}", params=TINY_PARAMS, seed=0)


def orchestrator(instance: AirflowInstance, data_dir: Path, config: RunConfig) -> AirflowOrchestrator:
    settings = Settings(data_dir=data_dir, device="cpu", airflow_url=instance.url,
                        airflow_username=instance.username, airflow_password=SecretStr(instance.password),
                        airflow_pool=instance.pool, airflow_pool_slots=instance.pool_slots)
    return AirflowOrchestrator(settings, OneRunConfig(config))


def wait_finished(orch: AirflowOrchestrator, run: Run, timeout_s: float) -> PipelineStatus:
    deadline = time.monotonic() + timeout_s
    status = orch.status(run)
    while status.state not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(1.0)
        status = orch.status(run)
    return status


def test_a_run_trains_as_one_dag_run_with_domains_in_parallel(airflow: AirflowInstance,  # noqa: F811
                                                              tmp_path: Path) -> None:
    config = demo_run(tmp_path / "data", run_id=9101)
    orch = orchestrator(airflow, tmp_path / "data", config)
    run = Run(task_id=1, sample_id=1, params=TINY_PARAMS, seed=0, created_by="test", id=9101, attempt=1)
    orch.ensure_ready()

    orch.start(run)
    orch.start(run)  # a redelivered request: the same DAG run, not a second one
    runs = orch.client.get_json(f"/api/v2/dags/{orch.settings.airflow_dag_id}/dagRuns",
                                run_id_pattern="anna-run-9101-%")["dag_runs"]
    assert [r["dag_run_id"] for r in runs] == ["anna-run-9101-attempt-1"]
    assert orch.is_alive(run)

    status = wait_finished(orch, run, timeout_s=300)
    assert status.state == "succeeded", status
    assert not orch.is_alive(run)
    names = [s.name for s in status.steps]
    assert names[0] == "validate_split"
    assert names[-5:] == ["train_fusion", "train_lightgbm", "blend", "evaluate", "register"]
    assert {f"train.{d}" for d in config.domains} <= set(names)
    assert all(s.state == "succeeded" for s in status.steps), status.steps
    trains = [s for s in status.steps if s.name.startswith("train.")]
    assert all(s.started_at and s.finished_at for s in trains)
    latest_start = max(s.started_at for s in trains if s.started_at)
    earliest_end = min(s.finished_at for s in trains if s.finished_at)
    assert latest_start < earliest_end, f"the domains' encoders trained one after another: {trains}"
    assert (orch.settings.runs_dir / "9101" / "report.json").is_file()

    dag_run = orch.client.get_json(orch._run_path(run))
    print(f"\nDAG run of the tiny run: {dag_run['start_date']} .. {dag_run['end_date']}")
    for s in status.steps:
        print(s.name, s.started_at, s.finished_at)


def test_a_run_with_a_missing_mart_file_fails_at_once_naming_it(airflow: AirflowInstance,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    config = demo_run(tmp_path / "data", run_id=9102)
    broken = config.domains[0]
    (Path(config.marts_root) / broken / "manifest.json").unlink()
    orch = orchestrator(airflow, tmp_path / "data", config)
    run = Run(task_id=1, sample_id=1, params=TINY_PARAMS, seed=0, created_by="test", id=9102, attempt=1)
    orch.ensure_ready()

    started = time.monotonic()
    orch.start(run)
    status = wait_finished(orch, run, timeout_s=120)

    assert status.state == "failed", status
    assert status.error is not None
    assert status.error.startswith(f"step extract.{broken} failed: FileNotFoundError"), status.error
    assert "manifest.json" in status.error
    failed = next(s for s in status.steps if s.name == f"extract.{broken}")
    assert failed.state == "failed" and failed.try_number == 1  # not retried: another try cannot help
    by_name = {s.name: s for s in status.steps}
    assert by_name["register"].state in ("skipped", "pending"), status.steps  # the run stopped there
    assert time.monotonic() - started < 60


def test_stopping_a_run_fails_its_dag_run_and_ends_its_tasks(airflow: AirflowInstance,  # noqa: F811
                                                               tmp_path: Path) -> None:
    config = demo_run(tmp_path / "data", run_id=9103)
    config = RunConfig(**{**config.__dict__, "params": {"default": {"max_epochs": 200, "patience": 200}}})
    orch = orchestrator(airflow, tmp_path / "data", config)
    run = Run(task_id=1, sample_id=1, params=config.params, seed=0, created_by="test", id=9103, attempt=1)
    orch.ensure_ready()
    orch.start(run)
    progress = orch.settings.runs_dir / "9103" / "progress"
    deadline = time.monotonic() + 120
    while not any("epoch" in p for name, p in read_progress(progress.parent).items()
                  if name.startswith("train.")):  # the encoders are past their first epoch
        assert time.monotonic() < deadline, orch.status(run)
        time.sleep(0.5)

    orch.stop(run)
    assert not orch.is_alive(run)
    status = orch.status(run)
    assert status.state == "failed"
    assert not any(s.state in ("running", "pending", "retrying") for s in status.steps), status.steps
    # The tasks' supervisors learn it at their next heartbeat and kill the training processes, whose
    # progress files (written every second while they train) then stand still.
    deadline = time.monotonic() + 45
    while True:
        before = {p.name: p.stat().st_mtime for p in progress.glob("train.*.json")}
        time.sleep(3.0)
        if before == {p.name: p.stat().st_mtime for p in progress.glob("train.*.json")}:
            break
        assert time.monotonic() < deadline, "a stopped run's encoders are still training"
    orch.stop(run)  # stopping a finished run is a no-op


def test_wrong_credentials_and_no_airflow_say_what_is_wrong(airflow: AirflowInstance,  # noqa: F811
                                                              tmp_path: Path) -> None:
    from anna_backend.devservices.process import free_port
    from anna_backend.domain.errors import ServiceUnavailable

    config = RunConfig(run_id=1, task_name="t", task_type="binary", metric="roc_auc", domains=[],
                       sample_path="", sample_fingerprint="", marts_root="", mart_versions={},
                       tracking_uri="")
    wrong = Settings(data_dir=tmp_path, airflow_url=airflow.url, airflow_username=airflow.username,
                     airflow_password=SecretStr("not-the-password"))
    with pytest.raises(ServiceUnavailable, match=f"Airflow at {airflow.url} refused user 'anna'"):
        AirflowOrchestrator(wrong, OneRunConfig(config)).ensure_ready()
    nowhere = f"http://127.0.0.1:{free_port()}"
    absent = Settings(data_dir=tmp_path, airflow_url=nowhere, airflow_password=SecretStr("x"))
    with pytest.raises(ServiceUnavailable, match=f"Airflow is not reachable at {nowhere}"):
        AirflowOrchestrator(absent, OneRunConfig(config)).ensure_ready()
