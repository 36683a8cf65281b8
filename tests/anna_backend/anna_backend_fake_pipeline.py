"""A pipeline shaped like the real one (PRE, PER_DOMAIN, POST, step_name) that trains nothing: for tests.

Knobs (environment): FAKE_PIPELINE_FAIL=<step> raises there, FAKE_PIPELINE_CRASH=<step> kills the process
there, FAKE_PIPELINE_SLEEP=<seconds> per train step, FAKE_PIPELINE_PIDS=<dir> where each step writes its pid.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anna_models.config import StepContext


def step_name(step: Callable[..., Any], domain: str | None = None) -> str:
    return step.__name__ if domain is None else f"{step.__name__}.{domain}"


def _step(ctx: StepContext, name: str, epochs: int = 0) -> None:
    marker = ctx.run_dir / "steps" / f"{name}.done.json"
    if marker.exists():
        ctx.progress(name, state="done", message="already done")
        return
    ctx.progress(name, state="running")
    if os.environ.get("FAKE_PIPELINE_PIDS"):
        Path(os.environ["FAKE_PIPELINE_PIDS"], f"{name}.pid").write_text(str(os.getpid()))
    if os.environ.get("FAKE_PIPELINE_CRASH") == name:
        os._exit(3)
    if os.environ.get("FAKE_PIPELINE_FAIL") == name:
        raise ValueError(f"{name} was told to fail")
    for epoch in range(1, epochs + 1):
        ctx.progress(
            name,
            state="running",
            epoch=epoch,
            max_epochs=epochs,
            metric=0.5 + epoch / 100,
            metric_name=ctx.config.metric,
            fraction=1.0,
        )
    if epochs:
        time.sleep(float(os.environ.get("FAKE_PIPELINE_SLEEP", "0")))
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"step": name}))
    ctx.progress(name, state="done")


def validate_split(ctx: StepContext) -> None:
    _step(ctx, "validate_split")


def extract(ctx: StepContext, domain: str) -> None:
    _step(ctx, step_name(extract, domain))


def train(ctx: StepContext, domain: str) -> None:
    _step(ctx, step_name(train, domain), epochs=2)


def blend(ctx: StepContext) -> None:
    _step(ctx, "blend")


def evaluate(ctx: StepContext) -> None:
    _step(ctx, "evaluate")
    metrics = {"roc_auc": 0.71, "log_loss": 0.5}
    domains = {d: {"test": {"metrics": {"roc_auc": 0.6}, "coverage": 1.0}} for d in ctx.config.domains}
    report = {
        "run_id": ctx.config.run_id,
        "domains": domains,
        "blend": {"valid": {"metrics": metrics}, "test": {"metrics": metrics}},
    }
    (ctx.run_dir / "report.json").write_text(json.dumps(report))


def register(ctx: StepContext) -> str:
    _step(ctx, "register")
    uri = f"models:/{ctx.config.task_name}/1"
    (ctx.run_dir / "registered.json").write_text(
        json.dumps({"mlflow_run_id": "abc", "model_uri": uri, "model_version": "1"})
    )
    return uri


PRE = [validate_split]
PER_DOMAIN = [extract, train]
POST = [blend, evaluate, register]
