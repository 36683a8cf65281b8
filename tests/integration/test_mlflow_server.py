"""The real pipeline against a real MLflow server: per task an experiment, per run a parent run with
nested domain, fusion and blender runs, artifacts under the server's artifact root, and the ensemble
registered under the task's name, loadable the MLflow way.

``mlflow_server`` comes from tests/integration/conftest.py: importing it here as well would give this
module a second session fixture, and so a second server.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from service_support import fresh_postgres_database

from anna_backend.devservices.mlflow_server import start_mlflow_server
from anna_backend.devservices.process import Service, free_port
from anna_models import pipeline
from anna_models.config import RunConfig, StepContext

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = "default-12m"
PARENT_TAG = "mlflow.parentRunId"


@dataclass
class Demo:
    data: Path
    config: RunConfig  # run 7 of TASK, tracking_uri still unset


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    from anna_models.demo_data import generate_demo

    data = tmp_path_factory.mktemp("data")
    summary = generate_demo(data, clients=300, seed=3)
    sample = pd.read_csv(data / "demo" / "samples" / "default_12m.csv", parse_dates=["report_date"])
    (data / "samples").mkdir()
    sample.to_parquet(data / "samples" / "default.parquet", index=False)
    versions = summary["mart_versions"]
    config = RunConfig(
        run_id=7, task_name=TASK, task_type="binary", metric="roc_auc", domains=sorted(versions),
        sample_path=str(data / "samples" / "default.parquet"), sample_fingerprint="test",
        marts_root=str(data / "marts"), mart_versions=versions, tracking_uri="",
        params={"default": {"hidden": 16, "max_epochs": 2, "max_len": 64, "search_budget_s": 0}}, seed=1,
    )
    return Demo(data=data, config=config)


@pytest.fixture(scope="module", autouse=True)
def _forget_tracking_uri() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` (called by the register step) also sets MLFLOW_TRACKING_URI in this
    process; later tests must not find it pointing at a stopped server."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets it


def run_pipeline(demo: Demo, run_dir: Path, *, run_id: int, tracking_uri: str) -> StepContext:
    ctx = StepContext(run_dir=run_dir, config=replace(demo.config, run_id=run_id, tracking_uri=tracking_uri),
                      progress=lambda step, **fields: None)
    pipeline.run_all(ctx)
    return ctx


@pytest.fixture(scope="module")
def first_run(demo: Demo, mlflow_server: Service,
              tmp_path_factory: pytest.TempPathFactory) -> StepContext:
    return run_pipeline(demo, tmp_path_factory.mktemp("run-7"), run_id=7, tracking_uri=mlflow_server.url)


def test_run_is_tracked_registered_and_served_through_the_server(
    first_run: StepContext, demo: Demo, mlflow_server: Service,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.url)
    registered = json.loads((first_run.run_dir / "registered.json").read_text())
    assert registered["model_uri"] == f"models:/{TASK}/1"

    experiment = client.get_experiment_by_name(TASK)
    assert experiment is not None and experiment.experiment_id == registered["experiment_id"]
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`anna.run_id` = '7'")
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert [p.info.run_id for p in parents] == [registered["mlflow_run_id"]]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["test_roc_auc"] > 0
    children = {r.info.run_name: r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id}
    assert set(children) == {*demo.config.domains, pipeline.FUSION, pipeline.LIGHTGBM, "blender"}
    for name, child in children.items():
        assert {"valid_roc_auc", "test_roc_auc"} <= set(child.data.metrics), name
    # Per-epoch history of a trained model arrives as metric steps.
    domain = demo.config.domains[0]
    epochs = json.loads((first_run.run_dir / "report.json").read_text())["domains"][domain]["epochs"]
    assert len(client.get_metric_history(children[domain].info.run_id, "train_loss")) == epochs > 0

    version = client.get_model_version(TASK, "1")
    assert version.run_id == parent.info.run_id and version.source == registered["logged_model_uri"]
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == parent.info.run_id

    # Artifacts went through the server into its artifact root, not into a local ./mlruns.
    root = Path(mlflow_server.extra["artifact_root"])
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert (root / experiment.experiment_id / "models" / logged.model_id / "artifacts" / "MLmodel").is_file()
    assert (root / experiment.experiment_id / parent.info.run_id / "artifacts" / "report.json").is_file()
    assert not (Path.cwd() / "mlruns").exists() and not (Path.cwd() / "mlartifacts").exists()

    # Loaded by its registry URI (downloaded from the server), it scores test rows like the evaluate step.
    moved = tmp_path / "marts"  # serving reads marts from ANNA_MARTS_ROOT
    shutil.copytree(Path(demo.config.marts_root), moved)
    monkeypatch.setenv("ANNA_MARTS_ROOT", str(moved))
    mlflow.set_tracking_uri(mlflow_server.url)
    model = mlflow.pyfunc.load_model(f"models:/{TASK}/1")
    split = pd.read_parquet(first_run.run_dir / "split.parquet")
    test_rows = split[split.part == "test"].head(20)
    blended = pd.read_parquet(first_run.run_dir / "blend" / "predictions.parquet").set_index("row")
    scored = model.predict(test_rows[["client_id", "report_date"]])
    assert list(scored.columns) == ["client_id", "report_date", "score"]
    expected = blended.loc[test_rows["row"], "score_0"].to_numpy()
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, atol=1e-6)


def test_resumed_register_step_reuses_the_version_on_the_server(
    first_run: StepContext, mlflow_server: Service,
) -> None:
    import mlflow

    pipeline.marker_path(first_run.run_dir, "register").unlink()  # as if it crashed after registering
    assert pipeline.register(first_run) == f"models:/{TASK}/1"
    versions = mlflow.MlflowClient(mlflow_server.url).search_model_versions(f"name='{TASK}'")
    assert [v.version for v in versions] == ["1"]


def test_second_run_of_the_task_reuses_the_experiment_and_adds_version_2(
    first_run: StepContext, demo: Demo, mlflow_server: Service,
    tmp_path: Path,
) -> None:
    import mlflow

    second = run_pipeline(demo, tmp_path / "run-8", run_id=8, tracking_uri=mlflow_server.url)
    registered = json.loads((second.run_dir / "registered.json").read_text())
    assert registered["model_uri"] == f"models:/{TASK}/2"
    client = mlflow.MlflowClient(mlflow_server.url)
    assert [e.name for e in client.search_experiments(filter_string=f"name = '{TASK}'")] == [TASK]
    assert registered["experiment_id"] == client.get_experiment_by_name(TASK).experiment_id
    version = client.get_model_version(TASK, "2")
    assert version.run_id == registered["mlflow_run_id"]
    assert client.get_run(version.run_id).data.tags["anna.run_id"] == "8"
    assert client.get_registered_model(TASK).latest_versions[-1].version == "2"


def test_register_fails_at_once_naming_a_server_that_does_not_answer(
    first_run: StepContext, tmp_path: Path,
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(first_run.run_dir, run_dir)
    pipeline.marker_path(run_dir, "register").unlink()
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    ctx = StepContext(run_dir=run_dir, config=replace(first_run.config, tracking_uri=nowhere),
                      progress=lambda step, **fields: None)
    with pytest.raises(RuntimeError, match=f"MLflow server at {nowhere} does not answer"):
        pipeline.register(ctx)
    assert not pipeline.marker_path(run_dir, "register").exists()


@pytest.fixture
def postgres_store() -> Iterator[str]:
    """A fresh PostgreSQL database (driver psycopg 3) for the server's store; dropped afterwards."""
    with fresh_postgres_database("anna_mlflow") as url:
        yield url


def test_server_on_postgresql_tracks_and_registers(
    first_run: StepContext, postgres_store: str, tmp_path: Path,
) -> None:
    import mlflow

    server = start_mlflow_server(tmp_path / "server", port=free_port(), backend_store_uri=postgres_store,
                                 artifact_root=tmp_path / "artifact-root")
    try:
        # The finished run, logged again by its register step alone, to a server on PostgreSQL.
        run_dir = tmp_path / "run"
        shutil.copytree(first_run.run_dir, run_dir)
        pipeline.marker_path(run_dir, "register").unlink()
        ctx = StepContext(run_dir=run_dir, config=replace(first_run.config, tracking_uri=server.url),
                          progress=lambda step, **fields: None)
        assert pipeline.register(ctx) == f"models:/{TASK}/1"
        client = mlflow.MlflowClient(server.url)
        version = client.get_model_version(TASK, "1")
        runs = client.search_runs([client.get_experiment_by_name(TASK).experiment_id])
        # parent, domains, fusion, LightGBM, blender, and the one search trial (budget 0) of each domain
        # and of the fusion model
        assert len(runs) == 2 * len(first_run.config.domains) + 5
        model_id = version.source.removeprefix("models:/")
        assert any((tmp_path / "artifact-root").rglob(f"{model_id}/artifacts/MLmodel"))
    finally:
        server.stop()
