"""The training pipeline's steps (docs/architecture.md): split, per domain extract + train, blend, evaluate.

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
from anna_models.split import PARTS, prepare_split, read_split
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


def domain_params(ctx: StepContext, domain: str) -> TrainParams:
    manifest_path = ctx.run_dir / "extract" / domain / "manifest.json"
    base = {}
    if manifest_path.exists():
        base["max_len"] = int(json.loads(manifest_path.read_text()).get("default_max_len", 256))
    return TrainParams.for_domain(ctx.config.params, domain, base=base)


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
    valid); save the chosen model, models/<domain>/trials.json, and predictions for valid and test rows."""
    from anna_models.automl import candidates, search

    cfg = ctx.config
    seqs, manifest = _load_extracts(ctx, domain)
    split, info = read_split(ctx.run_dir)
    y, params, name = _targets(ctx, split), domain_params(ctx, domain), step_name(train, domain)
    out = ctx.run_dir / "models" / domain

    def report(**fields: Any) -> None:
        ctx.progress(name, state="running", **fields)

    pretrained = _pretrained(ctx, split, domain, manifest, report) if params.search_budget_s > 0 else None
    result = search(
        {domain: seqs["train"]}, y["train"], {domain: seqs["valid"]}, y["valid"], task_type=cfg.task_type,
        metric=cfg.metric, classes=info["classes"], manifests={domain: manifest}, params=params,
        device=ctx.device, seed=cfg.seed, queue=candidates(params, seed=cfg.seed, pretrained=pretrained),
        progress=report,
        on_trial=lambda trials: write_json(out / "trials.json", trials),
    )
    write_json(out / "manifest.json", manifest)
    return {"train_rows": seqs["train"].n_rows, "valid_rows": seqs["valid"].n_rows,
            **_save_search(ctx, domain, result, params, seqs)}


def _pretrained(ctx: StepContext, split: pd.DataFrame, domain: str, manifest: dict,
                report: Callable[..., None]) -> Any:
    """The registry's pretrained encoder of ``domain`` that fits its mart, or None
    (``automl.find_pretrained_encoder``): pretrained only on events before every report date of the
    sample, so no row sees its own future through the starting weights."""
    from anna_models.automl import find_pretrained_encoder

    earliest = str(split["report_date"].min().date())
    return find_pretrained_encoder(ctx.config.tracking_uri, domain, manifest=manifest,
                                   earliest_report_date=earliest, progress=report)


def _save_search(ctx: StepContext, name: str, result: Any, params: TrainParams, seqs: dict[str, Any]) -> dict:
    """Save a search's chosen model (``_save_model``) and models/<name>/trials.json; the step's summary."""
    summary = _save_model(ctx, name, result.model, result.history, result.params, seqs)
    write_json(ctx.run_dir / "models" / name / "trials.json",
               result.to_json(metric=ctx.config.metric, budget_s=params.search_budget_s))
    return {**summary, "trials": len(result.trials), "chosen": result.trials[result.chosen].label()}


def model_names(domains: list[str]) -> list[str]:
    """The models a run trains and blends: one per domain, the fusion model when there are several, and
    LightGBM on the domains' aggregates."""
    return [*domains, FUSION, LIGHTGBM] if len(domains) > 1 else [*domains, LIGHTGBM]


@idempotent
def train_fusion(ctx: StepContext) -> dict:
    """Train the fusion model, which reads all domains at once, on the same rows as the domain encoders.

    A domain encoder squeezes its domain into one score, so the blender cannot tell which of the
    client's traits a score reflects, and counts a trait twice when two domains show it; the fusion
    model learns the domains' joint evidence instead (it lifts test ROC-AUC ~0.03 on the demo). When
    the registry holds pretrained encoders of the domains, a second trial starts from them, frozen
    (``automl.fusion_candidates``), and the better on valid is kept, as a domain's search keeps its best.
    """
    from anna_models.automl import fusion_candidates, search

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
    result = search(
        seqs["train"], y["train"], seqs["valid"], y["valid"], task_type=cfg.task_type, metric=cfg.metric,
        classes=info["classes"], manifests={d: loaded[d][1] for d in cfg.domains}, params=params,
        device=ctx.device, seed=cfg.seed, queue=fusion_candidates(params, cfg.domains, pretrained),
        progress=report, on_trial=lambda trials: write_json(out / "trials.json", trials),
    )
    return {"train_rows": len(y["train"]), **_save_search(ctx, FUSION, result, params, seqs)}


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


# ---------------------------------------------------------------- blend, evaluate


def domain_predictions(run_dir: Path, domains: list[str]) -> tuple[pd.DataFrame, dict, dict]:
    """Rows (row, part) and per model the raw outputs and presence flags (any event), aligned."""
    outputs, present, rows = {}, {}, None
    for domain in domains:
        frame = pd.read_parquet(Path(run_dir) / "models" / domain / "predictions.parquet")
        if rows is None:
            rows = frame[["row", "part"]]
        elif not np.array_equal(rows["row"].to_numpy(), frame["row"].to_numpy()):
            raise RuntimeError(f"predictions of {domain} are not aligned with those of {domains[0]}")
        outputs[domain] = frame[[c for c in frame.columns if c.startswith("out_")]].to_numpy()
        present[domain] = frame["length"].to_numpy() > 0
    return rows, outputs, present


@idempotent
def blend(ctx: StepContext) -> dict:
    """Fit the blender on valid rows only (blend of every model, or the best one alone if it cross-validates
    better there); write blend/blender.json and blended scores for valid and test."""
    from anna_models.blend import Blender

    cfg = ctx.config
    split, info = read_split(ctx.run_dir)
    names = model_names(cfg.domains)
    rows, outputs, present = domain_predictions(ctx.run_dir, names)
    y = split["y"].to_numpy()[rows["row"].to_numpy()]
    fit = (rows["part"] == "valid").to_numpy()
    n_classes = max(len(info["classes"]), 2)
    blender = Blender(task_type=cfg.task_type, domains=names, n_classes=n_classes)
    blender.fit({d: o[fit] for d, o in outputs.items()}, {d: p[fit] for d, p in present.items()}, y[fit],
                seed=cfg.seed, metric=cfg.metric)
    out = ctx.run_dir / "blend"
    out.mkdir(parents=True, exist_ok=True)
    blender.save(out / "blender.json")
    scores = np.asarray(blender.predict(outputs, present)).reshape(len(rows), -1)
    frame = rows.copy()
    for k in range(scores.shape[1]):
        frame[f"score_{k}"] = scores[:, k]
    frame.to_parquet(out / "predictions.parquet", index=False)
    return {"fit_parts": ["valid"], "fit_rows": int(fit.sum()), "chosen_regularisation": blender.chosen,
            "choice": blender.choice.get("kind"), "inputs": blender.inputs}


def _scores(task_type: str, values: np.ndarray) -> np.ndarray:
    return values if task_type == "multiclass" else values[:, 0]


@idempotent
def evaluate(ctx: StepContext) -> dict:
    """Write report.json: per domain, fusion and blended metrics on valid and test, curves, the split."""
    from anna_models.metrics import evaluation
    from anna_models.training import to_scores

    cfg = ctx.config
    split, info = read_split(ctx.run_dir)
    names = model_names(cfg.domains)
    rows, outputs, present = domain_predictions(ctx.run_dir, names)
    blended = pd.read_parquet(ctx.run_dir / "blend" / "predictions.parquet")
    y = split["y"].to_numpy()[rows["row"].to_numpy()]
    report: dict[str, Any] = {"run_id": cfg.run_id, "task_name": cfg.task_name, "task_type": cfg.task_type,
                              "metric": cfg.metric, "classes": info["classes"], "split": info, "domains": {}}
    for name in names:
        history = json.loads((ctx.run_dir / "models" / name / "history.json").read_text())
        entry: dict[str, Any] = {"history": history, "epochs": len(history)}
        trials_path = ctx.run_dir / "models" / name / "trials.json"
        if trials_path.exists():  # the AutoML search's trials (domain encoders and fusion)
            search = json.loads(trials_path.read_text())
            entry["trials"] = [{**t, "chosen": t["number"] == search["chosen"]} for t in search["trials"]]
        for part in ("valid", "test"):
            mask = (rows["part"] == part).to_numpy()
            scores = to_scores(cfg.task_type, _scores(cfg.task_type, outputs[name][mask]))
            entry[part] = evaluation(cfg.task_type, y[mask], scores)
            entry[part]["coverage"] = float(present[name][mask].mean())
        if name == LIGHTGBM:
            folder = ctx.run_dir / "models" / LIGHTGBM
            entry["epochs"] = json.loads((folder / "booster.json").read_text())["rounds"]
            entry["top_features"] = json.loads((folder / "importance.json").read_text())
            report[LIGHTGBM] = entry
        elif name == FUSION:
            report[FUSION] = entry
        else:
            report["domains"][name] = entry
    score_columns = [c for c in blended.columns if c.startswith("score_")]
    report["blend"] = {}
    for part in ("valid", "test"):
        mask = (blended["part"] == part).to_numpy()
        scores = _scores(cfg.task_type, blended.loc[mask, score_columns].to_numpy())
        report["blend"][part] = evaluation(cfg.task_type, y[mask], scores, curves=True)
    report["blender"] = json.loads((ctx.run_dir / "blend" / "blender.json").read_text())
    report["leaderboard"] = _leaderboard(report, names)
    write_json(ctx.run_dir / "report.json", report)
    return {"test": report["blend"]["test"]["metrics"]}


def model_entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    """A model's section of report.json: ``report[name]`` for fusion and LightGBM, else its domain's."""
    return report[name] if name in (FUSION, LIGHTGBM) else report["domains"][name]


def _leaderboard(report: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """Every model and the blend by the run's metric, best valid first. The blender was fit on the valid
    rows, so its valid figure is the out-of-fold one from its cross-validation there."""
    from anna_models.metrics import leaderboard

    metric = report["metric"]
    rows = [{"model": name, "kind": name if name in (FUSION, LIGHTGBM) else "domain",
             "valid": model_entry(report, name)["valid"]["metrics"][metric],
             "test": model_entry(report, name)["test"]["metrics"][metric]} for name in names]
    choice = report["blender"].get("choice") or {}
    chosen = "blend" if choice.get("kind", "blend") == "blend" else choice["inputs"][0]
    valid = (choice.get("cv") or {}).get(chosen, report["blend"]["valid"]["metrics"][metric])
    rows.append({"model": "blend", "kind": "blend", "valid": valid,
                 "test": report["blend"]["test"]["metrics"][metric], "inputs": choice.get("inputs", names)})
    return leaderboard(rows, metric)


def _metrics_by_part(entry: dict[str, Any]) -> dict[str, float]:
    return {f"{part}_{k}": v for part in ("valid", "test") for k, v in entry[part]["metrics"].items()}


def _log_to_mlflow(ctx: StepContext) -> dict:
    """Package the ensemble and log the run (parent + nested domain and blender runs) to MLflow."""
    from anna_models.pyfunc import log_run, package_ensemble

    cfg = ctx.config
    report = json.loads((ctx.run_dir / "report.json").read_text())
    versions = {d: json.loads((ctx.run_dir / "models" / d / "manifest.json").read_text())["version"]
                for d in cfg.domains}
    ensemble = {"task_type": cfg.task_type, "classes": report["classes"], "domains": list(cfg.domains),
                "models": model_names(cfg.domains), "marts_root": cfg.marts_root, "run_id": cfg.run_id,
                "max_len": {d: domain_params(ctx, d).max_len for d in cfg.domains}, "mart_versions": versions}
    folder = package_ensemble(ctx.run_dir, ctx.run_dir / "package", ensemble=ensemble)
    # The chosen trial's params (params.json), and every trial of the search as a run nested in the domain's.
    children = [{"name": d, "params": json.loads((ctx.run_dir / "models" / d / "params.json").read_text()),
                 "metrics": _metrics_by_part(entry), "history": entry["history"],
                 "trials": entry.get("trials", [])} for d, entry in report["domains"].items()]
    if FUSION in report:
        chosen = json.loads((ctx.run_dir / "models" / FUSION / "params.json").read_text())
        children.append({"name": FUSION, "params": chosen,
                         "metrics": _metrics_by_part(report[FUSION]), "history": report[FUSION]["history"],
                         "trials": report[FUSION].get("trials", [])})
    if LIGHTGBM in report:
        booster = json.loads((ctx.run_dir / "models" / LIGHTGBM / "booster.json").read_text())
        settings = {**booster["params"], "rounds": booster["rounds"], "columns": len(booster["columns"])}
        children.append({"name": LIGHTGBM, "params": settings, "metrics": _metrics_by_part(report[LIGHTGBM]),
                         "history": report[LIGHTGBM]["history"]})
    choice = report["blender"].get("choice") or {}
    blender = {"regularisation": report["blender"]["chosen"], "offered": ",".join(model_names(cfg.domains)),
               "inputs": ",".join(report["blender"].get("inputs") or model_names(cfg.domains)),
               "choice": choice.get("kind", "blend")}
    blender_metrics = {**_metrics_by_part(report["blend"]),
                       **{f"cv_{name}": v for name, v in (choice.get("cv") or {}).items()}}
    children.append({"name": "blender", "params": blender, "metrics": blender_metrics})
    params = {"task_type": cfg.task_type, "metric": cfg.metric, "domains": ",".join(cfg.domains),
              "seed": cfg.seed, "sample_fingerprint": cfg.sample_fingerprint,
              "split": report["split"]["kind"], **{f"mart_version.{d}": v for d, v in versions.items()}}
    metrics = _metrics_by_part(report["blend"])
    for name in model_names(cfg.domains):
        metrics.update({f"{name}.{k}": v for k, v in _metrics_by_part(model_entry(report, name)).items()})
    if "calibration" in report["blend"]["test"]:
        metrics["test_ece"] = report["blend"]["test"]["calibration"]["ece"]
    registered = log_run(
        tracking_uri=cfg.tracking_uri, experiment=cfg.task_name, run_name=f"anna-run-{cfg.run_id}",
        tags={"anna.run_id": str(cfg.run_id), "anna.task_type": cfg.task_type}, params=params,
        metrics=metrics, children=children, ensemble_dir=folder, registered_name=cfg.task_name,
        artifacts=[ctx.run_dir / "report.json", ctx.run_dir / "split.json"],
    )
    write_json(ctx.run_dir / "registered.json", registered)
    return registered


_register = idempotent(_log_to_mlflow, step="register")


def register(ctx: StepContext) -> str:
    """Log the run to MLflow and register the ensemble under the task name; returns the model URI."""
    _register(ctx)
    return json.loads((ctx.run_dir / "registered.json").read_text())["model_uri"]


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
