"""LightGBM on the automatic per-client aggregates of every domain: the model a bank's data scientist
would build by hand, trained beside the encoders and offered to the blender as one more input.

It reads the same point-in-time sequences as the encoders (so it scores the same way at serving time),
turns each domain's into aggregates (``anna_models.aggregates``, columns prefixed by the domain) and fits
one booster on the train rows. Early stopping uses a client-grouped share of the train rows, never the
valid rows, which stay held out for the blender. Saved as LightGBM's text model plus a JSON spec (no
pickles). ``predict`` returns raw outputs as the encoders do: the logit (binary, (N,)), class logits
(multiclass, (N, C)) or the prediction (regression, (N,)).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anna_models.aggregates import client_aggregates
from anna_models.imbalance import class_weights
from anna_models.sequences import Sequences
from anna_models.split import can_stop_on, stopping_rows

SPEC_FILE, BOOSTER_FILE = "booster.json", "booster.txt"
# Sensible for samples of a few thousand to a few hundred thousand rows; run params["lightgbm"] override.
# One thread: the DAG trains LightGBM beside the fusion model, and LightGBM's OpenMP threads spin-wait, so
# on a busy machine two of them ran 20× slower than one (92 s vs 4.9 s for 77 rounds on 1.5k rows at load 8).
# Small, slow trees: on CDNOW (38k train rows) 15 leaves of ≥ 100 rows at rate 0.02 scored test ROC-AUC
# 0.805 against 0.803 for 31 leaves of ≥ 20 at 0.05, which stopped after 78 rounds on noise.
# min_child_samples None: 2% of the train rows, within 5..100, so a sample of a few hundred rows still splits.
DEFAULT_PARAMS: dict[str, Any] = {
    "num_leaves": 15, "learning_rate": 0.02, "min_child_samples": None, "feature_fraction": 0.8,
    "lambda_l2": 1.0, "num_rounds": 3000, "early_stopping": 200, "num_threads": 1, "stopping_share": 0.2,
}
# The run's metric where LightGBM has it; otherwise the task's loss, the smoothest stopping signal.
STOPPING_METRIC = {"roc_auc": "auc", "pr_auc": "average_precision", "rmse": "rmse", "mae": "l1"}
LOSS = {"binary": "binary_logloss", "multiclass": "multi_logloss", "regression": "l2"}
HISTORY_EVERY = 25  # rounds between history entries (a full history would be thousands of MLflow steps)


@dataclass
class AggregateModel:
    """A trained booster and what it needs to score new rows: the domains' mart features and its columns."""

    task_type: str
    classes: list
    domains: list[str]
    features: dict[str, dict]  # domain -> the mart manifest's "features"
    columns: list[str]  # "<domain>.<aggregate>", in the booster's column order
    params: dict[str, Any]
    rounds: int = 0
    class_weights: list[float] | None = None
    booster: Any = field(default=None, repr=False, compare=False)

    def matrix(self, seqs: Mapping[str, Sequences]) -> np.ndarray:
        """(N, F) float32 aggregates of every domain, in ``columns`` order."""
        values, names = aggregate_matrix(seqs, self.domains, self.features)
        if names != self.columns:
            raise ValueError(f"the aggregates' columns differ from those the model was trained on "
                             f"({len(names)} vs {len(self.columns)}): have the marts' features changed?")
        return values

    def predict(self, seqs: Mapping[str, Sequences]) -> np.ndarray:
        return self.predict_matrix(self.matrix(seqs))

    def predict_matrix(self, values: np.ndarray) -> np.ndarray:
        raw = self.booster.predict(values, raw_score=True, num_threads=int(self.params["num_threads"]))
        return np.asarray(raw, dtype=np.float64).reshape(len(values), -1) if self.task_type == "multiclass" \
            else np.asarray(raw, dtype=np.float64).reshape(-1)

    def importance(self, top: int = 20) -> list[dict[str, float | str]]:
        """The columns with the largest total gain, largest first: what the model leans on."""
        gain = self.booster.feature_importance(importance_type="gain")
        order = np.argsort(-gain, kind="stable")[:top]
        return [{"name": self.columns[j], "gain": round(float(gain[j]), 3)} for j in order if gain[j] > 0]

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / BOOSTER_FILE))
        spec = {k: v for k, v in asdict(self).items() if k != "booster"}
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2))

    @classmethod
    def load(cls, folder: Path) -> AggregateModel:
        import lightgbm

        folder = Path(folder)
        model = cls(**json.loads((folder / SPEC_FILE).read_text()))
        model.booster = lightgbm.Booster(model_file=str(folder / BOOSTER_FILE))
        return model


def aggregate_matrix(seqs: Mapping[str, Sequences], domains: list[str], features: Mapping[str, dict]
                     ) -> tuple[np.ndarray, list[str]]:
    """Every domain's aggregates side by side, columns named ``<domain>.<aggregate>``."""
    blocks, names = [], []
    for domain in domains:
        aggregates = client_aggregates(seqs[domain], features.get(domain))
        blocks.append(aggregates.values)
        names += [f"{domain}.{name}" for name in aggregates.names]
    return np.concatenate(blocks, axis=1), names


def _objective(task_type: str, metric: str, n_classes: int) -> dict[str, Any]:
    objectives: dict[str, dict[str, Any]] = {
        "binary": {"objective": "binary"}, "regression": {"objective": "regression"},
        "multiclass": {"objective": "multiclass", "num_class": n_classes}}
    objective = objectives[task_type]
    stopping = STOPPING_METRIC.get(metric) if task_type != "multiclass" else None
    return {**objective, "metric": stopping or LOSS[task_type]}


# What each setting may be: (type, smallest, largest); min_child_samples may also be None (automatic).
_RANGES: dict[str, tuple[type, float, float]] = {
    "num_leaves": (int, 2, 131072), "learning_rate": (float, 1e-6, 1.0), "min_child_samples": (int, 1, 1e9),
    "feature_fraction": (float, 1e-6, 1.0), "lambda_l2": (float, 0.0, 1e9), "num_rounds": (int, 1, 1e6),
    "early_stopping": (int, 1, 1e6), "num_threads": (int, 1, 1024), "stopping_share": (float, 0.01, 0.9),
}


def lightgbm_settings(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` (a run's ``params["lightgbm"]``) over ``DEFAULT_PARAMS``, checked: a ``ValueError``
    names the first unknown key or the setting whose value is of the wrong type or out of range."""
    settings = {**DEFAULT_PARAMS, **(params or {})}
    unknown = sorted(set(settings) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"unknown LightGBM parameter(s) {unknown}; known: {sorted(DEFAULT_PARAMS)}")
    for name, (kind, low, high) in _RANGES.items():
        value = settings[name]
        if value is None and name == "min_child_samples":
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)):
            raise ValueError(f"LightGBM's {name} must be a{'n' if kind is int else ''} {kind.__name__}; "
                             f"got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"LightGBM's {name} must be within {low:g}..{high:g}; got {value!r}")
    return settings


def train_aggregate_model(train: Mapping[str, Sequences], y_train: np.ndarray, *, client_id: np.ndarray,
                          task_type: str, metric: str, classes: list, features: Mapping[str, dict],
                          params: Mapping[str, Any] | None = None, seed: int = 0,
                          progress: Callable[..., None] | None = None,
                          ) -> tuple[AggregateModel, list[dict[str, float]]]:
    """Fit the booster on the train rows' aggregates; returns the model and its early-stopping history.

    Boosting stops when the stopping rows' metric has not improved for ``early_stopping`` rounds; the
    booster is then refit on every train row for the best number of rounds.
    """
    import lightgbm

    settings = lightgbm_settings(params)
    domains = sorted(train)
    x, columns = aggregate_matrix(train, domains, features)
    y = np.asarray(y_train, dtype=np.float64)
    if settings["min_child_samples"] is None:
        settings["min_child_samples"] = int(np.clip(len(y) // 50, 5, 100))
    n_classes = max(len(classes), 2)
    weights = class_weights(y.astype(np.int64), task_type, n_classes) if task_type != "regression" else None
    row_weight = weights[y.astype(np.int64)] if weights is not None else None
    tree = ("num_leaves", "learning_rate", "min_child_samples", "feature_fraction", "lambda_l2",
            "num_threads")
    booster_params = {**_objective(task_type, metric, n_classes), "seed": seed, "deterministic": True,
                      "force_row_wise": True, "verbosity": -1, **{k: settings[k] for k in tree}}
    hold = stopping_rows(client_id, float(settings["stopping_share"]), seed)
    enough = can_stop_on(hold, y, task_type)

    def dataset(rows: np.ndarray) -> Any:
        return lightgbm.Dataset(x[rows], y[rows], weight=None if row_weight is None else row_weight[rows],
                                feature_name=[f"f{j}" for j in range(len(columns))], free_raw_data=False)

    history: list[dict[str, float]] = []
    rounds = min(int(settings["num_rounds"]), 200)  # too few rows to stop early on: a short, safe fit
    if enough:
        recorded: dict[str, Any] = {}
        fit, stop = dataset(~hold), dataset(hold)
        callbacks: list[Callable[..., None]] = [
            lightgbm.early_stopping(int(settings["early_stopping"]), verbose=False),
            lightgbm.record_evaluation(recorded)]
        if progress is not None:
            callbacks.append(_progress_callback(progress, int(settings["num_rounds"])))
        probe = lightgbm.train(booster_params, fit, num_boost_round=int(settings["num_rounds"]),
                               valid_sets=[stop], valid_names=["stopping"], callbacks=callbacks)
        rounds = max(int(probe.best_iteration or probe.current_iteration()), 1)
        curve = recorded["stopping"][booster_params["metric"]]
        if progress is not None:  # the step ends on the rounds the model keeps, not the last 50 tried
            progress(epoch=rounds, max_epochs=int(settings["num_rounds"]), unit="round",
                     metric=float(curve[rounds - 1]), metric_name=booster_params["metric"], fraction=1.0)
        history = [{"epoch": i + 1, "valid_metric": float(v)} for i, v in enumerate(curve)
                   if (i + 1) % HISTORY_EVERY == 0 or i + 1 == rounds]
    booster = lightgbm.train(booster_params, dataset(np.ones(len(y), dtype=bool)), num_boost_round=rounds)
    model = AggregateModel(task_type=task_type, classes=list(classes), domains=domains,
                           features={d: dict(features.get(d, {})) for d in domains}, columns=columns,
                           params={**settings, "stopping_metric": booster_params["metric"]}, rounds=rounds,
                           class_weights=None if weights is None else weights.tolist(), booster=booster)
    return model, history


def _progress_callback(progress: Callable[..., None], max_rounds: int) -> Callable[[Any], None]:
    def report(env: Any) -> None:
        if (env.iteration + 1) % 50 == 0 and env.evaluation_result_list:
            _, metric_name, value, _ = env.evaluation_result_list[0][:4]
            progress(epoch=env.iteration + 1, max_epochs=max_rounds, unit="round", metric=float(value),
                     metric_name=metric_name, fraction=(env.iteration + 1) / max_rounds)

    return report
