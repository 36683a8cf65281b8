"""The training pipeline's steps (docs/architecture.md): split, per domain extract + train, then the
fusion model and LightGBM; the closing steps (blend, evaluate, register) live in ``anna_models.ensemble``.

Each step reads and writes files under ``ctx.run_dir`` only and ends by writing
``steps/<step>[.<domain>].done.json`` atomically; a step whose marker exists returns at once, so
a re-run resumes after the last finished step.

Executors use the graph below: run ``PRE``, then ``PER_DOMAIN`` for every domain (domains are
independent and may run in parallel processes), then ``POST`` in order. ``POST`` starts with
``train_fusion``, a model over all domains at once, which the blender combines with the domains'.

The split rules live in ``anna_models.split``; the markers and the idempotent wrapper in
``anna_models.steps``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anna_models.config import FUSION as FUSION  # re-exported: callers use pipeline.FUSION
from anna_models.config import LIGHTGBM as LIGHTGBM  # and pipeline.LIGHTGBM
from anna_models.config import METRICS, TASK_TYPES, StepContext, TrainParams
from anna_models.config import domain_params as domain_params  # re-exported: pipeline.domain_params
from anna_models.config import model_names as model_names  # and pipeline.model_names
from anna_models.ensemble import blend, evaluate, register
from anna_models.split import PARTS, can_stop_on, prepare_split, read_split, stopping_rows
from anna_models.split import split_sample as split_sample  # re-exported: callers use pipeline.split_sample
from anna_models.steps import idempotent, write_json
from anna_models.steps import marker_path as marker_path  # re-exported: callers use pipeline.marker_path


def step_name(step: Callable, domain: str | None = None) -> str:
    return step.__name__ if domain is None else f"{step.__name__}.{domain}"


# ---------------------------------------------------------------- split


@idempotent
def validate_split(ctx: StepContext) -> dict:
    """Check the sample against the task, split it into train/valid/test, write split.parquet + split.json."""
    cfg = ctx.config
    if cfg.task_type not in TASK_TYPES or cfg.metric not in METRICS[cfg.task_type]:
        raise ValueError(f"metric {cfg.metric!r} does not fit task type {cfg.task_type!r}; "
                         f"choose one of {METRICS.get(cfg.task_type)}")
    for reserved in (FUSION, LIGHTGBM):
        if reserved in cfg.domains:
            raise ValueError(f"{reserved!r} is reserved for a model over all domains; rename that domain")
    sample, info = prepare_split(pd.read_parquet(cfg.sample_path), cfg.task_type, cfg.seed)
    tmp = ctx.run_dir / ".split.parquet.tmp"
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    sample.to_parquet(tmp, index=False)
    tmp.replace(ctx.run_dir / "split.parquet")
    write_json(ctx.run_dir / "split.json", info)
    return {"kind": info["kind"], "rows": {p: v["rows"] for p, v in info["parts"].items()}}


# ---------------------------------------------------------------- per domain


@idempotent
def extract(ctx: StepContext, domain: str) -> dict:
    """Point-in-time sequences of every sample row for one domain: extract/<domain>/<part>.npz."""
    from anna_models.extract import extract_sequences
    from anna_models.marts import Mart

    mart = Mart.open(Path(ctx.config.marts_root) / domain)
    pinned = ctx.config.mart_versions.get(domain)
    if pinned and pinned != mart.version:
        # New months append history after the old report dates, so point-in-time rows are unchanged.
        ctx.progress(step_name(extract, domain), state="running",
                     message=f"mart version {mart.version} differs from the pinned {pinned}")
    out = ctx.run_dir / "extract" / domain
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "manifest.json", mart.manifest)
    params = domain_params(ctx, domain)
    split, _ = read_split(ctx.run_dir)
    summary: dict[str, Any] = {"mart_version": mart.version, "max_len": params.max_len}
    for part in PARTS:
        rows = split[split["part"] == part]
        seqs = extract_sequences(mart, rows["client_id"].to_numpy(), rows["report_date"].to_numpy(),
                                 params.max_len, threads=params.threads)
        seqs.save(out / f"{part}.npz")
        empty = int((seqs.lengths == 0).sum())
        summary[part] = {"rows": seqs.n_rows, "events": seqs.n_events, "empty": empty}
    return summary


def _load_extracts(ctx: StepContext, domain: str) -> tuple[dict[str, Any], dict]:
    from anna_models.sequences import Sequences

    source = ctx.run_dir / "extract" / domain
    seqs = {part: Sequences.load(source / f"{part}.npz") for part in PARTS}
    return seqs, json.loads((source / "manifest.json").read_text())


def _save_model(ctx: StepContext, name: str, model: Any, history: list, params: TrainParams,
                seqs: dict[str, Any]) -> dict:
    """Write models/<name>/ (weights, config, history, params) and its raw outputs and embeddings for the
    valid and test rows (predictions.parquet); ``seqs[part]`` is what ``predict`` takes."""
    from anna_models.training import predict

    split, _ = read_split(ctx.run_dir)
    out = ctx.run_dir / "models" / name
    model.save(out)
    write_json(out / "history.json", history)
    write_json(out / "params.json", params.__dict__)
    frames = []
    started = time.perf_counter()
    for part in ("valid", "test"):
        outputs, embeddings = predict(model, seqs[part], device=ctx.device)
        outputs = outputs.reshape(len(embeddings), -1)
        parts = seqs[part] if isinstance(seqs[part], dict) else {name: seqs[part]}
        columns = {"row": split.loc[split["part"] == part, "row"].to_numpy(), "part": part,
                   "length": sum(s.lengths for s in parts.values())}
        columns.update({f"out_{k}": outputs[:, k] for k in range(outputs.shape[1])})
        columns.update({f"emb_{k}": embeddings[:, k] for k in range(embeddings.shape[1])})
        frames.append(pd.DataFrame(columns))
    predict_seconds = time.perf_counter() - started
    pd.concat(frames, ignore_index=True).to_parquet(out / "predictions.parquet", index=False)
    return {
        "epochs": len(history),
        "events_per_s": float(np.mean([h["events_per_s"] for h in history])) if history else 0.0,
        "predict_clients_per_s": sum(map(len, frames)) / max(predict_seconds, 1e-9),
    }


def _targets(ctx: StepContext, split: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """The target of each part's rows; ``split``: the run's split when the caller has read it already."""
    if split is None:
        split, _ = read_split(ctx.run_dir)
    return {part: split.loc[split["part"] == part, "y"].to_numpy() for part in PARTS}


@idempotent
def train(ctx: StepContext, domain: str) -> dict:
    """Search the domain encoder (anna_models.automl: trials on train rows, early stopping and choice on
    the stopping rows, ``_stopping_split``); save the chosen model, models/<domain>/trials.json, and
    predictions for valid and test rows."""
    from anna_models.automl import search
    from anna_models.search_space import candidates

    cfg = ctx.config
    seqs, manifest = _load_extracts(ctx, domain)
    split, info = read_split(ctx.run_dir)
    y, params, name = _targets(ctx, split), domain_params(ctx, domain), step_name(train, domain)
    out = ctx.run_dir / "models" / domain

    def report(**fields: Any) -> None:
        ctx.progress(name, state="running", **fields)

    pretrained = _pretrained(ctx, split, domain, manifest, report) if params.search_budget_s > 0 else None
    fit, y_fit, stop, y_stop, stopping = _stopping_split(
        split, {domain: seqs["train"]}, y["train"], {domain: seqs["valid"]}, y["valid"], params,
        cfg.task_type, cfg.seed)
    result = search(
        fit, y_fit, stop, y_stop, task_type=cfg.task_type, metric=cfg.metric, classes=info["classes"],
        manifests={domain: manifest}, params=params, device=ctx.device, seed=cfg.seed,
        queue=candidates(params, seed=cfg.seed, pretrained=pretrained), progress=report,
        on_trial=lambda trials: write_json(out / "trials.json", {**trials, "stopping": stopping}),
    )
    write_json(out / "manifest.json", manifest)
    return {"train_rows": seqs["train"].n_rows, "valid_rows": seqs["valid"].n_rows,
            **_save_search(ctx, domain, result, params, seqs, stopping)}


def _stopping_split(split: pd.DataFrame, train: dict[str, Any], y_train: np.ndarray, valid: dict[str, Any],
                    y_valid: np.ndarray, params: TrainParams, task_type: str, seed: int
                    ) -> tuple[dict[str, Any], np.ndarray, dict[str, Any], np.ndarray, dict[str, Any]]:
    """The rows an encoder trains on, the rows it stops early and chooses its trial on, and a description.

    The stopping rows are a client-grouped ``params.stopping_share`` of the train rows
    (``split.stopping_rows``: the same rows for every domain), so the valid rows stay held out for the
    blender. A sample too small to spare them (``split.can_stop_on``), or a share of 0, stops on valid.
    """
    rows = split.loc[split["part"] == "train"]
    stop = stopping_rows(rows["client_id"].to_numpy(), params.stopping_share, seed)
    if params.stopping_share <= 0 or not can_stop_on(stop, y_train, task_type):
        return train, y_train, valid, y_valid, {"on": "valid", "rows": len(y_valid)}
    fit_rows, stop_rows = np.flatnonzero(~stop), np.flatnonzero(stop)
    return ({d: s.take(fit_rows) for d, s in train.items()}, y_train[fit_rows],
            {d: s.take(stop_rows) for d, s in train.items()}, y_train[stop_rows],
            {"on": "train", "rows": len(stop_rows), "share": params.stopping_share})


def _pretrained(ctx: StepContext, split: pd.DataFrame, domain: str, manifest: dict,
                report: Callable[..., None]) -> Any:
    """The registry's pretrained encoder of ``domain`` that fits its mart, or None
    (``search_space.find_pretrained_encoder``): pretrained only on events before every report date of the
    sample, so no row sees its own future through the starting weights."""
    from anna_models.search_space import find_pretrained_encoder

    earliest = str(split["report_date"].min().date())
    return find_pretrained_encoder(ctx.config.tracking_uri, domain, manifest=manifest,
                                   earliest_report_date=earliest, progress=report)


def _save_search(ctx: StepContext, name: str, result: Any, params: TrainParams, seqs: dict[str, Any],
                 stopping: dict[str, Any]) -> dict:
    """Save a search's chosen model (``_save_model``) and models/<name>/trials.json, which also says which
    rows the trials stopped on (``stopping``); the step's summary."""
    summary = _save_model(ctx, name, result.model, result.history, result.params, seqs)
    trials = result.to_json(metric=ctx.config.metric, budget_s=params.search_budget_s)
    write_json(ctx.run_dir / "models" / name / "trials.json", {**trials, "stopping": stopping})
    return {**summary, "trials": len(result.trials), "chosen": result.trials[result.chosen].label(),
            "stopped_on": stopping["on"], "stopping_rows": stopping["rows"]}


@idempotent
def train_fusion(ctx: StepContext) -> dict:
    """Train the fusion model, which reads all domains at once, on the same rows as the domain encoders.

    A domain encoder squeezes its domain into one score, so the blender cannot tell which of the
    client's traits a score reflects, and counts a trait twice when two domains show it; the fusion
    model learns the domains' joint evidence instead (it lifts test ROC-AUC ~0.03 on the demo). When
    the registry holds pretrained encoders of the domains, a trial started from them, frozen, comes first
    and the scratch one second (``search_space.fusion_candidates``); the better on the stopping rows is
    kept, as a domain's search keeps its best.
    """
    from anna_models.automl import search
    from anna_models.search_space import fusion_candidates

    cfg = ctx.config
    if FUSION not in model_names(cfg.domains):
        return {"skipped": "a single domain needs no fusion"}
    loaded = {d: _load_extracts(ctx, d) for d in cfg.domains}
    seqs = {part: {d: loaded[d][0][part] for d in cfg.domains} for part in PARTS}
    split, info = read_split(ctx.run_dir)
    y, name = _targets(ctx, split), step_name(train_fusion)
    params = TrainParams.for_domain(cfg.params, FUSION)
    out = ctx.run_dir / "models" / FUSION

    def report(**fields: Any) -> None:
        ctx.progress(name, state="running", **fields)

    pretrained: dict[str, Any] = {}
    if params.search_budget_s > 0:
        pretrained = {d: _pretrained(ctx, split, d, loaded[d][1], report) for d in cfg.domains}
    fit, y_fit, stop, y_stop, stopping = _stopping_split(
        split, seqs["train"], y["train"], seqs["valid"], y["valid"], params, cfg.task_type, cfg.seed)
    result = search(
        fit, y_fit, stop, y_stop, task_type=cfg.task_type, metric=cfg.metric,
        classes=info["classes"], manifests={d: loaded[d][1] for d in cfg.domains}, params=params,
        device=ctx.device, seed=cfg.seed, queue=fusion_candidates(params, cfg.domains, pretrained),
        progress=report,
        on_trial=lambda trials: write_json(out / "trials.json", {**trials, "stopping": stopping}),
    )
    return {"train_rows": len(y["train"]), **_save_search(ctx, FUSION, result, params, seqs, stopping)}


@idempotent
def train_lightgbm(ctx: StepContext) -> dict:
    """Train LightGBM on every domain's automatic aggregates (train rows; early stopping on a client-grouped
    share of them, so valid stays held out for the blender) and write its raw outputs for valid and test
    rows to models/lightgbm/predictions.parquet, as the encoders do."""
    from anna_models.boosting import AggregateModel, train_aggregate_model

    cfg = ctx.config
    loaded = {d: _load_extracts(ctx, d) for d in cfg.domains}
    split, info = read_split(ctx.run_dir)
    train_rows = split[split["part"] == "train"]
    name, out = step_name(train_lightgbm), ctx.run_dir / "models" / LIGHTGBM
    model, history = train_aggregate_model(
        {d: loaded[d][0]["train"] for d in cfg.domains}, train_rows["y"].to_numpy(),
        client_id=train_rows["client_id"].to_numpy(), task_type=cfg.task_type, metric=cfg.metric,
        classes=info["classes"], features={d: loaded[d][1].get("features", {}) for d in cfg.domains},
        params=cfg.params.get(LIGHTGBM), seed=cfg.seed,
        progress=lambda **fields: ctx.progress(name, state="running", **fields),
    )
    model.save(out)
    model = AggregateModel.load(out)  # score with the saved model, exactly as the packaged ensemble will
    write_json(out / "history.json", history)
    write_json(out / "importance.json", model.importance())
    frames = []
    for part in ("valid", "test"):
        seqs = {d: loaded[d][0][part] for d in cfg.domains}
        outputs = model.predict(seqs).reshape(seqs[cfg.domains[0]].n_rows, -1)
        columns = {"row": split.loc[split["part"] == part, "row"].to_numpy(), "part": part,
                   "length": sum(s.lengths for s in seqs.values())}
        columns.update({f"out_{k}": outputs[:, k] for k in range(outputs.shape[1])})
        frames.append(pd.DataFrame(columns))
    pd.concat(frames, ignore_index=True).to_parquet(out / "predictions.parquet", index=False)
    return {"train_rows": len(train_rows), "rounds": model.rounds, "columns": len(model.columns),
            "class_weights": model.class_weights}


PRE: list[Callable[[StepContext], None]] = [validate_split]
PER_DOMAIN: list[Callable[[StepContext, str], None]] = [extract, train]
POST: list[Callable[[StepContext], Any]] = [train_fusion, train_lightgbm, blend, evaluate, register]


def step_names(domains: list[str]) -> list[str]:
    """Every step's name (= its marker's name) in an order that respects the graph."""
    names = [step_name(s) for s in PRE]
    names += [step_name(s, d) for d in domains for s in PER_DOMAIN]
    return names + [step_name(s) for s in POST]


def run_all(ctx: StepContext) -> str:
    """Run every step in this process, domains one after another; returns the registered model URI."""
    for step in PRE:
        step(ctx)
    for domain in ctx.config.domains:
        for domain_step in PER_DOMAIN:
            domain_step(ctx, domain)
    for step in POST[:-1]:
        step(ctx)
    return register(ctx)
