"""ANNA's training pipeline as an Airflow DAG: one task per step of ``anna_models.pipeline``.

validate_split → (extract → train) per domain, mapped over the run's domains → train_fusion and
train_lightgbm side by side → blend → evaluate → register. Each task calls exactly one step; the steps
are idempotent, so a retried task resumes where its last try stopped. Parsing stays cheap: torch, pandas
and ``anna_models`` are imported inside the tasks only.

A DAG run carries its ANNA run in its conf (the backend's ``AirflowOrchestrator`` sends exactly this)::

    {"anna_run_id": 7, "attempt": 1, "run_dir": "/data/runs/7", "device": "auto",
     "config": {...RunConfig as JSON...}}

Steps report progress as files under ``<run_dir>/progress/``; ANNA reads them back, since tasks never
touch ANNA's database.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException

# Bounds how many encoders train at once (GPU slots); the backend creates it with ANNA_AIRFLOW_POOL_SLOTS.
POOL = os.environ.get("ANNA_AIRFLOW_POOL", "anna_encoders")

# Errors in the run's data or configuration: another try would fail the same way.
PERMANENT_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError)

DEFAULT_ARGS: dict[str, Any] = {
    "retries": 2,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=2),
}


def run_step(step: str, domain: str | None = None, *, threads_of: str | None = None) -> None:
    """Run the pipeline step called ``step`` (for ``domain``) on the DAG run's ANNA run.

    ``threads_of`` names the model whose ``threads`` parameter sets torch's thread count; it must be set
    before torch (and numpy's BLAS) is first imported in this process.
    """
    conf = get_current_context()["dag_run"].conf or {}
    if threads_of is not None:
        from anna_models.config import TrainParams

        threads = TrainParams.for_domain(conf["config"].get("params", {}), threads_of).threads
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)

    import json
    from pathlib import Path

    from anna_models import pipeline
    from anna_models.config import RunConfig, StepContext
    from anna_models.progress import FileProgress

    run_dir = Path(conf["run_dir"])
    progress = FileProgress(run_dir)
    ctx = StepContext(run_dir=run_dir, config=RunConfig.from_json(json.dumps(conf["config"])),
                      progress=progress, device=conf.get("device", "auto"))
    name = step if domain is None else f"{step}.{domain}"
    function = getattr(pipeline, step)
    try:
        function(ctx) if domain is None else function(ctx, domain)
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        progress(name, state="failed", message=message[:2000])
        if isinstance(error, PERMANENT_ERRORS):
            raise AirflowFailException(message) from error
        raise
    finally:
        progress.flush()


@dag(
    dag_id="anna_training",
    schedule=None,
    catchup=False,
    default_args=DEFAULT_ARGS,
    max_active_runs=16,
    fail_fast=True,  # the first failed step stops the run's other tasks, as the embedded driver does
    tags=["anna"],
    params={
        "anna_run_id": Param(0, type="integer", description="ANNA's run id"),
        "attempt": Param(1, type="integer", description="the run's attempt"),
        "run_dir": Param("", type="string", description="the run's folder; every step works under it"),
        "device": Param("auto", enum=["auto", "cpu", "cuda"]),
        "config": Param({}, type="object", description="the run's RunConfig, as run.json holds it"),
    },
    doc_md=__doc__,
)
def anna_training() -> None:
    @task
    def validate_split() -> list[str]:
        """Split the sample; returns the run's domains, which the per-domain tasks are mapped over."""
        run_step("validate_split")
        return list((get_current_context()["dag_run"].conf or {})["config"]["domains"])

    @task
    def extract(domain: str) -> str:
        run_step("extract", domain)
        return domain

    @task(pool=POOL)
    def train(domain: str) -> None:
        run_step("train", domain, threads_of=domain)

    @task_group(prefix_group_id=False)
    def per_domain(domain: str) -> None:
        # A mapped group: train[i] waits for extract[i] only, not for every domain's extract.
        extracted: Any = extract(domain)  # an XComArg standing for the domain at run time
        train(extracted)

    @task(pool=POOL)
    def train_fusion() -> None:
        # "fusion" is anna_models.config.FUSION, spelled out: importing anna_models loads numpy before
        # the thread count is set.
        run_step("train_fusion", threads_of="fusion")

    @task
    def train_lightgbm() -> None:
        # LightGBM on aggregates uses one thread and no encoder slot.
        run_step("train_lightgbm")

    @task
    def blend() -> None:
        run_step("blend")

    @task
    def evaluate() -> None:
        run_step("evaluate")

    @task
    def register() -> None:
        run_step("register")

    domains = per_domain.expand(domain=validate_split())
    domains >> [train_fusion(), train_lightgbm()] >> blend() >> evaluate() >> register()


anna_training()
