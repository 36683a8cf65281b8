"""Pretrained domain encoders: trained once per mart (``anna_models.coles``), stored in the registry, and
found again by the runs that may start from them.

Point in time: an encoder is pretrained on the events strictly before its ``cutoff``, and a run may start
from it only if the cutoff is at or before the run's earliest report date, so no event at or after any
report date reaches a model through its initial weights.

Storage: a folder (``save_encoder`` / ``load_encoder``: model.json, encoder.pt, pretrain.json), logged to
MLflow as a version of the registered model ``pretrained-<domain>`` with the folder's facts as tags, so
``find_pretrained`` chooses without downloading anything.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from anna_models.coles import ColesParams
    from anna_models.config import TrainParams
    from anna_models.marts import Mart
    from anna_models.sequences import Sequences

log = logging.getLogger(__name__)
EXPERIMENT = "pretrained-encoders"
ARTIFACT_PATH = "encoder"


def registered_name(domain: str) -> str:
    return f"pretrained-{domain}"


@dataclass
class PretrainedEncoder:
    """A domain's pretrained event + sequence encoder, ready for ``train_model(init=encoder.state)``."""

    name: str  # e.g. "pretrained-card_transactions v2"
    architecture: str
    hidden: int
    layers: int
    max_len: int
    cutoff: str  # ISO date; events strictly before it were used
    # Keys "events.0.*", "sequences.0.*" (and "embed.*", see ColesParams.transfer_embedding) of a
    # single-domain DomainModel.
    state: dict[str, torch.Tensor]
    domain: str = ""
    mart_version: str = ""
    categorical: dict[str, int] = field(default_factory=dict)  # feature -> vocab size it was trained with
    n_dense: int = 0  # numeric + time features
    facts: dict[str, Any] = field(default_factory=dict)  # clients, epochs, loss, seconds, ...

    def fits(self, manifest: dict[str, Any]) -> bool:
        """Whether a model built from this mart manifest has the shapes of these weights."""
        features = manifest.get("features", {})
        vocab = {n: int(f["vocab_size"]) for n, f in features.items() if f.get("kind") == "categorical"}
        n_numeric = sum(f.get("kind") == "numeric" for f in features.values())
        return vocab == self.categorical and n_numeric + 4 == self.n_dense

    def train_params(self, params: TrainParams) -> TrainParams:
        """``params`` with the encoder's shape, so that ``state`` loads into the model they build."""
        return replace(params, architecture=self.architecture, hidden=self.hidden, layers=self.layers,
                       max_len=self.max_len)


def default_cutoff(manifest: dict[str, Any]) -> str:
    """The first day of the month in the middle of the mart's span: half the history to pretrain on, and
    report dates in the other half may use the encoder."""
    start = np.datetime64(manifest["time_min"], "s").astype(np.int64)
    end = np.datetime64(manifest["time_max"], "s").astype(np.int64)
    return str(np.datetime64(int((start + end) // 2), "s").astype("datetime64[M]").astype("datetime64[D]"))


def pretraining_sequences(mart: Mart, before: str, max_len: int, *, clients: int | None = None,
                          seed: int = 0) -> Sequences:
    """Each client's (or ``clients`` random ones') latest ``max_len`` events strictly before ``before``."""
    from anna_models.extract import extract_sequences

    ids = np.asarray(mart.client_ids, dtype=np.int64)
    if clients is not None and clients < len(ids):
        ids = np.sort(np.random.default_rng(seed).choice(ids, clients, replace=False))
    # One point-in-time extraction with the cutoff as every client's report date: no later event can enter.
    return extract_sequences(mart, ids, np.full(len(ids), np.datetime64(before, "s")), max_len)


def pretrain_domain(mart_path: Path, *, before: str | None = None, params: ColesParams | None = None,
                    clients: int | None = None, progress: Callable[..., None] | None = None
                    ) -> tuple[PretrainedEncoder, list[dict[str, float]]]:
    """Pretrain the encoder of the mart at ``mart_path`` on its events strictly before ``before``.

    ``clients``: a random subset of that many clients (all by default). Returns the encoder and the
    per-epoch history of ``anna_models.coles.train_coles``.
    """
    from anna_models.coles import ColesParams, encoder_state, train_coles
    from anna_models.marts import Mart
    from anna_models.training import model_config

    params = params or ColesParams()
    mart = Mart.open(Path(mart_path))
    cutoff = str(np.datetime64(before or default_cutoff(mart.manifest), "D"))
    if params.max_len is None:
        params = replace(params, max_len=int(mart.manifest.get("default_max_len", 256)))
    seqs = pretraining_sequences(mart, cutoff, params.max_len or 256, clients=clients, seed=params.seed)
    config = model_config({mart.name: seqs}, {mart.name: mart.manifest}, params.train_params(),
                          task_type="binary", classes=[0, 1], y_train=np.zeros(0))
    started = time.perf_counter()
    model, history = train_coles(seqs, config, params, progress)
    shape = config.encoders[mart.name]
    encoder = PretrainedEncoder(
        name=registered_name(mart.name), architecture=shape.architecture, hidden=shape.hidden,
        layers=shape.layers, max_len=shape.max_len, cutoff=cutoff,
        state=encoder_state(model, embedding=params.transfer_embedding),
        domain=mart.name, mart_version=mart.version, categorical=dict(shape.categorical),
        n_dense=shape.n_dense,
        facts={"clients": int((seqs.lengths >= params.min_events).sum()), "events": seqs.n_events,
               "epochs": params.epochs, "loss": "infonce", "final_loss": history[-1]["loss"],
               "final_accuracy": history[-1]["accuracy"], "seconds": round(time.perf_counter() - started, 1),
               "params": asdict(params)})
    return encoder, history


# ------------------------------------------------------------------------------------------ storage


def _tags(encoder: PretrainedEncoder) -> dict[str, str]:
    return {"domain": encoder.domain, "mart_name": encoder.domain, "mart_version": encoder.mart_version,
            "cutoff": encoder.cutoff, "architecture": encoder.architecture, "hidden": str(encoder.hidden),
            "layers": str(encoder.layers), "max_len": str(encoder.max_len),
            "categorical": json.dumps(encoder.categorical, sort_keys=True), "n_dense": str(encoder.n_dense),
            "epochs": str(encoder.facts.get("epochs", "")), "loss": str(encoder.facts.get("loss", ""))}


def save_encoder(encoder: PretrainedEncoder, folder: Path) -> Path:
    """Write model.json (the encoder's shape), encoder.pt (weights_only-loadable) and pretrain.json."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = {"categorical": encoder.categorical, "n_dense": encoder.n_dense,
             "architecture": encoder.architecture, "hidden": encoder.hidden,
             "layers": encoder.layers, "max_len": encoder.max_len}
    (folder / "model.json").write_text(json.dumps(shape, indent=2))
    torch.save(encoder.state, folder / "encoder.pt")
    facts = {"name": encoder.name, "domain": encoder.domain, "mart_version": encoder.mart_version,
             "cutoff": encoder.cutoff, "facts": encoder.facts}
    (folder / "pretrain.json").write_text(json.dumps(facts, indent=2, default=str))
    return folder


def load_encoder(folder: Path, name: str | None = None) -> PretrainedEncoder:
    import torch

    folder = Path(folder)
    shape = json.loads((folder / "model.json").read_text())
    facts = json.loads((folder / "pretrain.json").read_text())
    state = torch.load(folder / "encoder.pt", map_location="cpu", weights_only=True)
    return PretrainedEncoder(name=name or facts["name"], state=state, cutoff=facts["cutoff"],
                             domain=facts["domain"], mart_version=facts["mart_version"], facts=facts["facts"],
                             **shape)


def log_encoder(encoder: PretrainedEncoder, tracking_uri: str) -> PretrainedEncoder:
    """Log the encoder to MLflow (one run of the experiment "pretrained-encoders") and register it as a
    new version of ``pretrained-<domain>``; returns it named "pretrained-<domain> v<version>"."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from anna_models.tracking import artifact_location, require_server

    require_server(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = found.experiment_id if found else client.create_experiment(
        EXPERIMENT, artifact_location=artifact_location(tracking_uri, EXPERIMENT))
    tags = _tags(encoder)
    run = client.create_run(experiment_id, run_name=encoder.name,
                            tags={f"anna.{k}": v for k, v in tags.items()})
    for key, value in tags.items():
        client.log_param(run.info.run_id, key, value[:500])
    for key in ("final_loss", "final_accuracy", "seconds", "clients", "events"):
        if isinstance(encoder.facts.get(key), int | float):
            client.log_metric(run.info.run_id, key, float(encoder.facts[key]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_encoder(encoder, Path(tmp) / ARTIFACT_PATH)
        client.log_artifacts(run.info.run_id, str(folder), ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    name = registered_name(encoder.domain)
    try:
        client.create_registered_model(name, description="CoLES-pretrained event + sequence encoder")
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}",
                                          run_id=run.info.run_id, tags=tags)
    return replace(encoder, name=f"{name} v{version.version}")


def _store_exists(tracking_uri: str) -> bool:
    """Cheap check that there may be anything to find, without creating a local store as a side effect."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).exists()
    if tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # it answered
        except OSError:
            return False
    local = Path(tracking_uri[len("file://"):] if tracking_uri.startswith("file://") else tracking_uri)
    return local.exists()


def find_pretrained(tracking_uri: str, domain: str, *, mart_version: str | None, earliest_report_date: str,
                    manifest: dict[str, Any] | None = None) -> PretrainedEncoder | None:
    """The newest registered encoder of ``domain`` that a run may start from, or None.

    It qualifies when its cutoff is at or before ``earliest_report_date`` and, given the mart's current
    ``manifest``, when its vocabularies and features still fit it (a mart version that differs by
    appended months keeps them). Among those fitting, one pretrained on ``mart_version`` itself comes
    first. Never raises: a missing store, model or server means None (the run trains from scratch).
    """
    if not _store_exists(tracking_uri):
        return None
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)
        versions = client.search_model_versions(f"name = '{registered_name(domain)}'")
        latest = np.datetime64(str(earliest_report_date)[:10], "D")
        usable = []
        for v in versions:
            tags = v.tags or {}
            if not v.run_id or not tags.get("cutoff") or np.datetime64(tags["cutoff"], "D") > latest:
                continue
            if manifest is not None and not _fits_tags(tags, manifest):
                continue
            usable.append((tags.get("mart_version") == mart_version, int(v.version), v))
        if not usable:
            return None
        _, number, chosen = max(usable, key=lambda u: (u[0], u[1]))
        # MLflow draws a progress bar per download; in a step's or a task's log it is only noise (a user
        # who wants it sets the variable).
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with tempfile.TemporaryDirectory() as tmp:
            folder = client.download_artifacts(str(chosen.run_id), ARTIFACT_PATH, tmp)
            return load_encoder(Path(folder), name=f"{registered_name(domain)} v{number}")
    except Exception:  # noqa: BLE001 — a registry problem must not fail the run that asked
        log.warning("no pretrained encoder for %s from %s", domain, tracking_uri, exc_info=True)
        return None


def _fits_tags(tags: dict[str, str], manifest: dict[str, Any]) -> bool:
    probe = PretrainedEncoder(name="", architecture="", hidden=0, layers=0, max_len=0, cutoff="", state={},
                              categorical=json.loads(tags.get("categorical", "{}")),
                              n_dense=int(tags.get("n_dense", 0)))
    return probe.fits(manifest)
