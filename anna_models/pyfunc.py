"""The trained ensemble as one deployable model: domain encoders + blender + the marts' manifests.

``package_ensemble`` lays a run's models out as one folder; ``load_ensemble(folder).score_frame``
scores (client_id, report_date) rows straight from the marts (point-in-time, as in training);
``AnnaEnsemble`` wraps the same for MLflow's pyfunc loader.
"""

from __future__ import annotations

import json
import os
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


def requirements() -> list[str]:
    """Pinned to what is installed here; passing them spares MLflow its slow requirement inference."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned
