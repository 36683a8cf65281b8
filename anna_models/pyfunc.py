"""The trained ensemble as one deployable model: domain encoders + blender + the marts' manifests.

``package_ensemble`` lays a run's models out as one folder; ``load_ensemble(folder).score_frame``
scores (client_id, report_date) rows straight from the marts (point-in-time, as in training);
``AnnaEnsemble`` wraps the same for MLflow's pyfunc loader.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

ENSEMBLE_FILE = "ensemble.json"
MARTS_ENV = "ANNA_MARTS_ROOT"
REQUIREMENTS = ("torch", "mlflow", "numpy", "pandas", "pyarrow", "scikit-learn", "cloudpickle", "lightgbm")


def package_ensemble(run_dir: Path, out_dir: Path, *, ensemble: dict[str, Any]) -> Path:
    """Copy a run's domain models and blender into ``out_dir`` and describe them in ensemble.json.

    ``ensemble`` holds task_type, classes, domains, models (the domains', the fusion model, if any, and
    LightGBM on the aggregates: what the blender reads), max_len (per domain) and marts_root.
    """
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "models").mkdir(parents=True)
    for model in ensemble.get("models", ensemble["domains"]):
        source = Path(run_dir) / "models" / model
        target = out_dir / "models" / model
        target.mkdir()
        for name in ("model.pt", "model.json", "manifest.json", "booster.txt", "booster.json"):
            if (source / name).exists():  # each kind of model has its own files
                shutil.copy2(source / name, target / name)
    shutil.copy2(Path(run_dir) / "blend" / "blender.json", out_dir / "blender.json")
    (out_dir / ENSEMBLE_FILE).write_text(json.dumps(ensemble, indent=2))
    return out_dir


_OPEN_MARTS: dict[Path, Any] = {}  # resolved mart folder -> opened Mart


@dataclass
class Ensemble:
    """A loaded ensemble. Marts are opened on first use and reopened when their version changes."""

    folder: Path
    spec: dict[str, Any]
    models: dict[str, Any]  # domain (or "fusion") -> DomainModel; "lightgbm" -> AggregateModel
    blender: Any  # Blender

    @property
    def task_type(self) -> str:
        return self.spec["task_type"]

    def marts_root(self, override: str | Path | None = None) -> Path:
        return Path(override or os.environ.get(MARTS_ENV) or self.spec["marts_root"])

    def _mart(self, root: Path, domain: str) -> Any:
        from anna_models.marts import Mart, read_manifest

        # One copy per process, shared by every loaded ensemble: a serving process keeps several models,
        # and each would otherwise hold (and load, seconds per mart) its own copy of the same marts.
        path = (root / domain).resolve()
        cached = _OPEN_MARTS.get(path)
        if cached is None or cached.version != read_manifest(path)["version"]:
            cached = _OPEN_MARTS[path] = Mart.open(path)
        return cached

    def domain_outputs(
        self, client_id: np.ndarray, report_date: np.ndarray, *, marts_root: Path | str | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw outputs and presence flags of the models the blender reads, for the rows, extracted
        point-in-time (the others are in the package for the report, not for scoring)."""
        from anna_models.extract import extract_sequences
        from anna_models.training import predict

        root = self.marts_root(marts_root)
        max_len = self.spec["max_len"]
        models = {name: self.models[name] for name in self.blender.inputs}
        # A domain's model reads its own sequences; the fusion and LightGBM models read every domain's.
        reads = {name: [name] if name in max_len else model.domains if _is_booster(model) else
                 model.config.domains for name, model in models.items()}
        needed = {d for domains in reads.values() for d in domains}
        seqs = {d: extract_sequences(self._mart(root, d), client_id, report_date, max_len[d])
                for d in max_len if d in needed}
        outputs: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        for name, model in models.items():
            if _is_booster(model):
                outputs[name] = model.predict({d: seqs[d] for d in reads[name]})
            else:
                outputs[name], _ = predict(model, seqs[name] if name in max_len else
                                           {d: seqs[d] for d in reads[name]})
            present[name] = np.sum([seqs[d].lengths for d in reads[name]], axis=0) > 0
        return outputs, present

    def score_frame(self, frame: pd.DataFrame, *, marts_root: Path | str | None = None) -> pd.DataFrame:
        """Scores for a DataFrame with client_id and report_date.

        Returns client_id, report_date and score (binary: P(class 1); regression: the prediction;
        multiclass: the predicted class, plus one ``prob_<class>`` column per class).
        """
        missing = {"client_id", "report_date"} - set(frame.columns)
        if missing:
            raise ValueError(f"input needs columns client_id and report_date; missing {sorted(missing)}")
        client_id = frame["client_id"].to_numpy(dtype=np.int64)
        report_date = pd.to_datetime(frame["report_date"]).to_numpy(dtype="datetime64[s]")
        outputs, present = self.domain_outputs(client_id, report_date, marts_root=marts_root)
        blended = self.blender.predict(outputs, present)
        result = pd.DataFrame({"client_id": client_id, "report_date": report_date})
        if self.task_type == "multiclass":
            classes = self.spec["classes"]
            result["score"] = np.asarray(classes, dtype=object)[blended.argmax(1)]
            for k, label in enumerate(classes):
                result[f"prob_{label}"] = blended[:, k]
        else:
            result["score"] = blended
        return result


def _is_booster(model: Any) -> bool:
    from anna_models.boosting import AggregateModel

    return isinstance(model, AggregateModel)


def _load_model(folder: Path) -> Any:
    """A packaged model: LightGBM on aggregates (booster.json) or an encoder model (model.json)."""
    from anna_models.boosting import SPEC_FILE, AggregateModel
    from anna_models.encoders import DomainModel

    return AggregateModel.load(folder) if (folder / SPEC_FILE).exists() else DomainModel.load(folder)


def load_ensemble(folder: Path | str) -> Ensemble:
    """Load a packaged ensemble without MLflow (fast path for batch scoring and tests)."""
    from anna_models.blend import Blender

    folder = Path(folder)
    spec = json.loads((folder / ENSEMBLE_FILE).read_text())
    models = {m: _load_model(folder / "models" / m) for m in spec.get("models", spec["domains"])}
    return Ensemble(folder=folder, spec=spec, models=models, blender=Blender.load(folder / "blender.json"))


class AnnaEnsemble(PythonModel):
    """MLflow pyfunc wrapper: artifacts = {"ensemble": the packaged folder}.

    ``predict(context, DataFrame[client_id, report_date])`` → the frame of ``Ensemble.score_frame``.
    The marts' location comes from the packaged spec unless ANNA_MARTS_ROOT is set.
    """

    def load_context(self, context: Any) -> None:
        self.ensemble = load_ensemble(context.artifacts["ensemble"])
        # The model config (set at logging, overridable at load time) may point at another marts root.
        marts_root = (getattr(context, "model_config", None) or {}).get("marts_root")
        if marts_root:
            self.ensemble.spec["marts_root"] = marts_root

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        marts_root = (params or {}).get("marts_root")
        return self.ensemble.score_frame(model_input, marts_root=marts_root)


def _requirements() -> list[str]:
    """Pinned to what is installed here; passing them spares MLflow its slow requirement inference."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


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
        for path in artifacts:
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
            pip_requirements=_requirements(),
            code_paths=[str(Path(__file__).resolve().parent)],
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
