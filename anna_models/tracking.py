"""A run in MLflow: the parent run with its params, metrics and artifacts, a nested run per model and per
AutoML trial, and the packaged ensemble (``anna_models.pyfunc``) logged and registered as one pyfunc model.

``log_run`` is idempotent across crashes: a model version an earlier attempt of the same ANNA run
registered is returned, not registered twice. ``require_server`` fails at once when a tracking server
does not answer, instead of MLflow's minutes of retries.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from anna_models.pyfunc import AnnaEnsemble, requirements


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a local SQLite store, artifacts go next to the database (under the data directory)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a tracking server decides where artifacts live
    database = Path(tracking_uri[len("sqlite:///") :])
    return (database.parent / "artifacts" / re.sub(r"[^\w.-]+", "_", experiment)).resolve().as_uri()


def require_server(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Fail at once, naming the URL, when an MLflow server does not answer; a no-op for local stores.

    MLflow's client retries a refused connection with backoff for minutes before it gives up, which
    would leave a run hanging in its register step.
    """
    import urllib.error
    import urllib.request

    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (an auth proxy may guard /health): let MLflow's own calls say what is wrong
    except OSError as error:
        raise RuntimeError(
            f"the MLflow server at {tracking_uri} does not answer ({error}); "
            "start it or point the run's tracking URI at a running one"
        ) from error


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _registered_by_earlier_attempt(
    client: Any, experiment_id: str, tags: dict[str, str], registered_name: str
) -> dict[str, Any] | None:
    """The model version an earlier attempt of this ANNA run registered before it died, if any.

    A crash between MLflow's registration and the step's marker would otherwise register a second version.
    """
    run_id = tags.get("anna.run_id")
    if run_id is None:
        return None
    for run in client.search_runs([experiment_id], filter_string=f"tags.`anna.run_id` = '{run_id}'"):
        versions = client.search_model_versions(f"name='{registered_name}' and run_id='{run.info.run_id}'")
        if versions:
            version = versions[0].version
            return {
                "mlflow_run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "model_uri": f"models:/{registered_name}/{version}",
                "model_version": version,
                "logged_model_uri": versions[0].source,
            }
    return None


def _log_trial(experiment_id: str, parent_name: str, trial: dict[str, Any], tags: dict[str, str]) -> None:
    """One AutoML trial (anna_models.automl) as a run nested in its domain's run: params, the valid
    metric per epoch, and its state and start (scratch or a pretrained encoder's name) as tags."""
    import time

    import mlflow
    from mlflow.entities import Metric, Param

    trial_tags = {**tags, "anna.trial_state": str(trial["state"]), "anna.trial_init": str(trial["init"]),
                  "anna.trial_chosen": str(bool(trial.get("chosen")))}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{parent_name} trial {trial['number']}",
                          nested=True, tags=trial_tags) as run:
        now = int(time.time() * 1000)
        summary = _finite({"best_valid_metric": trial.get("best_valid_metric"), "seconds": trial["seconds"]})
        curve = _finite({str(e): v for e, v in enumerate(trial.get("valid_metric", []), start=1)})
        metrics = [Metric(k, v, now, 0) for k, v in summary.items()]
        metrics += [Metric("valid_metric", v, now, int(epoch)) for epoch, v in curve.items()]
        # One batch per trial: a search logs dozens of trials, and a call per epoch adds up on a server.
        mlflow.MlflowClient().log_batch(run.info.run_id, metrics=metrics,
                                        params=[Param(k, str(v)) for k, v in trial["params"].items()])


def log_run(
    *,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, Any],
    children: list[dict[str, Any]],
    ensemble_dir: Path,
    artifacts: list[Path],
    registered_name: str,
) -> dict[str, Any]:
    """Log a parent run (params, metrics, artifacts), one nested run per child, and the ensemble as one
    pyfunc model registered under ``registered_name``. Returns {mlflow_run_id, model_uri, model_version, ...}.

    Each child is {name, params, metrics, history?, trials?}; history entries become per-epoch metric
    steps, and each trial (anna_models.automl) a run nested in the child's.
    """
    import mlflow

    require_server(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found
        else client.create_experiment(
            experiment, artifact_location=artifact_location(tracking_uri, experiment)
        )
    )
    earlier = _registered_by_earlier_attempt(client, experiment_id, tags, registered_name)
    if earlier is not None:
        return earlier
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as parent:
        mlflow.log_params(params)
        mlflow.log_metrics(_finite(metrics))
        for path in artifacts:  # a folder keeps its name (plots/), a file goes to the top
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            else:
                mlflow.log_artifact(str(path))
        for child in children:
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=child["name"], nested=True, tags=tags
            ):
                mlflow.log_params(child["params"])
                mlflow.log_metrics(_finite(child["metrics"]))
                for entry in child.get("history", []):
                    step = int(entry.get("epoch", 0))
                    mlflow.log_metrics(_finite({k: v for k, v in entry.items() if k != "epoch"}), step=step)
                for trial in child.get("trials", []):
                    _log_trial(experiment_id, child["name"], trial, tags)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=AnnaEnsemble(),
            artifacts={"ensemble": str(ensemble_dir)},
            pip_requirements=requirements(),
            code_paths=[str(Path(__file__).resolve().parent)],  # anna_models
            registered_model_name=registered_name,
        )
    version = info.registered_model_version
    return {
        "mlflow_run_id": parent.info.run_id,
        "experiment_id": experiment_id,
        "model_uri": f"models:/{registered_name}/{version}",
        "model_version": version,
        "logged_model_uri": info.model_uri,
    }
