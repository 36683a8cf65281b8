"""The run's configuration as the model-config repo's tag holds it, and the step context."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TASK_TYPES = ("binary", "multiclass", "regression")
METRICS = {
    "binary": ("roc_auc", "pr_auc", "log_loss", "accuracy", "f1"),
    "multiclass": ("roc_auc_ovr", "log_loss", "accuracy", "f1_macro"),
    "regression": ("rmse", "mae", "r2"),
}
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
# The demo's size (anna_models.demo_data): anna demo-data's default, so make run's, and the benchmarks'.
# Here rather than in demo_data, whose import loads numpy and pandas, so that the anna CLI starts fast.
DEMO_CLIENTS = 20_000


MAX_STOPPING_SHARE = 0.9  # TrainParams.stopping_share above this would leave too few rows to train on
FUSION = "fusion"  # the model over all domains at once; no domain may take this name
LIGHTGBM = "lightgbm"  # LightGBM on every domain's aggregates (anna_models.boosting); reserved too

# Per-model defaults over TrainParams' own. "fusion" is the model over all domains at once: it runs
# alone after the domain encoders (so it may take two threads), and with three domains inside it a
# narrower GRU per domain trains in half the time at the same quality (demo: test ROC-AUC 0.816 vs 0.815).
DOMAIN_DEFAULTS: dict[str, dict[str, Any]] = {FUSION: {"hidden": 32, "threads": 2}}


@dataclass
class TrainParams:
    """Hyperparameters of one domain encoder. Defaults are what a run uses when the user sets nothing."""

    architecture: str = "gru"  # gru | lstm | transformer
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.1
    max_len: int = 256
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-5
    max_epochs: int = 10
    patience: int = 3
    threads: int = 1  # torch threads per domain process
    # With pretrained weights (train_model's init): keep the event and sequence encoders as pretrained and
    # train only the embedding and head; epochs take less than half as long (no gradient through the encoder).
    freeze_encoder: bool = False
    # Seconds per domain for the AutoML search of the encoder (anna_models.automl); 0 trains only these
    # params. The given params always train to the end; further trials run while the budget lasts.
    search_budget_s: float = 150.0
    # The share of the train rows' clients the encoder stops early and chooses its trial on (as LightGBM
    # does), so the blender's valid rows stay held out; 0 stops on valid. Demo, 2026-12-07: see
    # docs/benchmarks.md#held-out-blend.
    stopping_share: float = 0.15

    @classmethod
    def for_domain(cls, params: dict[str, Any], domain: str, base: dict[str, Any] | None = None
                   ) -> TrainParams:
        """Merge, later winning: the class defaults, ``base`` (e.g. the mart's ``default_max_len``),
        ``DOMAIN_DEFAULTS[domain]``, ``params["default"]``, ``params[domain]``. Unknown keys are an error."""
        merged = {**(base or {}), **DOMAIN_DEFAULTS.get(domain, {}), **params.get("default", {}),
                  **params.get(domain, {})}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**merged)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; the run's tag in the model-config repo holds exactly this as run.json."""

    run_id: int
    task_name: str
    task_type: str
    metric: str
    domains: list[str]
    sample_path: str
    sample_fingerprint: str
    marts_root: str
    mart_versions: dict[str, str]
    tracking_uri: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls(**json.loads(text))


def _no_progress(step: str, **fields: Any) -> None:
    return None


@dataclass
class StepContext:
    """What a pipeline step gets: the run's folder, its configuration and a progress callback.

    ``progress(step, **fields)``; fields: state, epoch, max_epochs, unit (what ``epoch``
    counts: "epoch" or "round"), metric, metric_name, message, fraction.
    """

    run_dir: Path
    config: RunConfig
    progress: Callable[..., None] = _no_progress
    device: str = "auto"  # auto | cpu | cuda


def model_names(domains: list[str]) -> list[str]:
    """The models a run trains and blends: one per domain, the fusion model when there are several, and
    LightGBM on the domains' aggregates."""
    return [*domains, FUSION, LIGHTGBM] if len(domains) > 1 else [*domains, LIGHTGBM]


def domain_params(ctx: StepContext, domain: str) -> TrainParams:
    """The domain's training params: the run's over the mart's ``default_max_len`` (from the extract step's
    copy of the mart manifest, once it has run)."""
    manifest_path = ctx.run_dir / "extract" / domain / "manifest.json"
    base = {}
    if manifest_path.exists():
        base["max_len"] = int(json.loads(manifest_path.read_text()).get("default_max_len", 256))
    return TrainParams.for_domain(ctx.config.params, domain, base=base)
