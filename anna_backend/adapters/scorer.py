"""Retro-inference with a run's packaged ensemble (``anna_models.pyfunc``); models are cached per run."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from anna_backend.domain.errors import InvalidInput, NotFound
from anna_backend.domain.model import Run, Task
from anna_backend.service_layer.ports import RunArtifacts, Scorer
from anna_backend.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
MAX_CACHED_MODELS = 4


class EnsembleScorer(Scorer):
    """Loads ``runs/<id>/package`` with ``anna_models.pyfunc.load_ensemble`` (no MLflow round trip) or, when
    that folder is gone, the registered ``model_uri`` through MLflow's pyfunc loader."""

    def __init__(self, settings: Settings, artifacts: RunArtifacts) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self._models: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self, run: Run) -> Any:
        assert run.id is not None
        with self._lock:
            if run.id in self._models:
                self._models.move_to_end(run.id)
                return self._models[run.id]
            folder = self.artifacts.run_dir(run.id) / "package"
            if (folder / "ensemble.json").is_file():
                from anna_models.pyfunc import load_ensemble

                model = load_ensemble(folder)
            elif run.model_uri:
                import mlflow

                mlflow.set_tracking_uri(self.settings.tracking_uri)
                model = mlflow.pyfunc.load_model(run.model_uri).unwrap_python_model().ensemble
            else:
                raise NotFound(f"run {run.id} has no packaged model to score with")
            self._models[run.id] = model
            while len(self._models) > MAX_CACHED_MODELS:
                self._models.popitem(last=False)
            log.info("run %s: model loaded for scoring", run.id)
            return model

    def score(self, run: Run, task: Task, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any] | None]:
        model = self._load(run)
        scored = model.score_frame(rows[["client_id", "report_date"]], marts_root=self.settings.marts_dir)
        if "target" not in rows.columns:
            return scored, None
        return scored, self._metrics(task.task_type, model.spec.get("classes") or [], rows["target"], scored)

    @staticmethod
    def _metrics(task_type: str, classes: list[Any], target: pd.Series,
                 scored: pd.DataFrame) -> dict[str, Any]:
        from anna_models.metrics import all_metrics

        if task_type == "multiclass":
            index = {str(label): k for k, label in enumerate(classes)}
            y = target.astype(str).map(index)
            if y.isna().any():
                unknown = sorted(set(target.astype(str)[y.isna()]))[:5]
                raise InvalidInput.rows([{"row": int(np.flatnonzero(y.isna().to_numpy())[0]) + 1,
                                          "column": "target",
                                          "msg": f"target label(s) {unknown} are not classes of this model "
                                                 f"({[str(c) for c in classes]})"}])
            y_true = y.to_numpy(np.int64)
            y_score = scored[[f"prob_{label}" for label in classes]].to_numpy(np.float64)
        else:
            y_true = target.to_numpy(np.float64 if task_type == "regression" else np.int64)
            y_score = scored["score"].to_numpy(np.float64)
        values = all_metrics(task_type, y_true, y_score)
        return {k: (float(v) if np.isfinite(v) else None) for k, v in values.items()}
