"""The pipeline driver: one process per run attempt, started by ``LocalRunner``.

``python -m anna_backend.entrypoints.pipeline_driver --run-id N [--attempt A]`` reads the run's
configuration from its tag in the model-config repo, runs the ``PRE`` steps, the ``PER_DOMAIN`` steps of
every domain in a process pool (spawned, one process per domain), then the ``POST`` steps, and writes
progress and the outcome to the database. Every write is guarded by the attempt number.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import logging
import math
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from anna_backend.bootstrap import bootstrap
from anna_backend.domain.model import PROGRESS_FIELDS
from anna_backend.service_layer.ports import Backend
from anna_backend.service_layer.run_progress import (
    begin_attempt,
    fail_run,
    finish_run,
    metrics_summary,
    record_progress,
)
from anna_backend.settings import Settings, get_settings
from anna_models.config import RunConfig, StepContext, TrainParams

log = logging.getLogger("anna_backend.driver")


class StepFailed(Exception):
    """A pipeline step raised; picklable, so it crosses back from a domain process."""

    def __init__(self, step: str, kind: str, message: str, trace: str = "") -> None:
        super().__init__(step, kind, message, trace)
        self.step, self.kind, self.message, self.trace = step, kind, message, trace

    def __str__(self) -> str:
        return f"step {self.step} failed: {self.kind}: {self.message}"


class RunAbandoned(Exception):
    """This attempt may no longer write (the run was cancelled or re-queued as a newer attempt)."""


class ProgressReporter:
    """The steps' ``progress(step, **fields)``: writes at most one update per step per interval, but every
    state change at once; ignores fields it does not know. Raises ``RunAbandoned`` once the run has moved
    on, which stops the pipeline."""

    def __init__(self, backend: Backend, run_id: int, attempt: int, interval_s: float) -> None:
        self.backend, self.run_id, self.attempt, self.interval_s = backend, run_id, attempt, interval_s
        self._pending: dict[str, dict[str, Any]] = {}
        self._written_at: dict[str, float] = {}
        self._state: dict[str, Any] = {}

    def __call__(self, step: str, **fields: Any) -> None:
        fields = {k: v for k, v in fields.items() if k == "state" or k in PROGRESS_FIELDS}
        pending = self._pending.setdefault(step, {})
        pending.update(fields)
        changes_state = "state" in fields and fields["state"] != self._state.get(step)
        due = time.monotonic() - self._written_at.get(step, -math.inf) >= self.interval_s
        if changes_state or due:
            self._write(step)

    def _write(self, step: str) -> None:
        fields = self._pending.pop(step, {})
        if not fields:
            return
        try:
            written = record_progress(self.backend, run_id=self.run_id, attempt=self.attempt, step=step,
                                      fields=fields)
        except Exception:  # progress is best effort: a locked database must not kill a training
            log.exception("run %s: could not record progress of %s", self.run_id, step)
            return
        if not written:
            raise RunAbandoned(f"run {self.run_id} attempt {self.attempt} may no longer write")
        self._written_at[step] = time.monotonic()
        if "state" in fields:
            self._state[step] = fields["state"]

    def flush(self) -> None:
        for step in list(self._pending):
            self._write(step)


def _name(pipeline: ModuleType, step: Callable[..., Any], domain: str | None = None) -> str:
    if hasattr(pipeline, "step_name"):
        return str(pipeline.step_name(step, domain) if domain is not None else pipeline.step_name(step))
    return step.__name__ if domain is None else f"{step.__name__}.{domain}"


def step_names(pipeline: ModuleType, domains: Sequence[str]) -> list[str]:
    names = [_name(pipeline, s) for s in pipeline.PRE]
    names += [_name(pipeline, s, d) for d in domains for s in pipeline.PER_DOMAIN]
    return names + [_name(pipeline, s) for s in pipeline.POST]


def _run_step(pipeline: ModuleType, step: Callable[..., Any], ctx: StepContext,
              domain: str | None = None) -> None:
    name = _name(pipeline, step, domain)
    try:
        step(ctx) if domain is None else step(ctx, domain)
    except RunAbandoned:
        raise
    except Exception as error:
        log.exception("run %s: step %s failed", ctx.config.run_id, name)
        failure = StepFailed(name, type(error).__name__, str(error), traceback.format_exc())
        try:
            ctx.progress(name, state="failed", message=f"{failure.kind}: {failure.message}"[:2000])
        except Exception:  # the failure itself is what matters
            log.exception("run %s: could not record the failure of %s", ctx.config.run_id, name)
        raise failure from error
    if isinstance(ctx.progress, ProgressReporter):
        ctx.progress.flush()


# ----------------------------------------------------------------------------------------- domain workers


def _init_domain_process() -> None:
    """Domain processes die with the driver (even a SIGKILLed one)."""
    from anna_backend.adapters.local_runner import die_with_parent

    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the driver died before the death signal was armed
        os._exit(1)


def run_domain(run_id: int, attempt: int, domain: str, config_json: str) -> str:
    """One domain's ``PER_DOMAIN`` steps, in a fresh process with its own database engine."""
    config = RunConfig.from_json(config_json)
    threads = TrainParams.for_domain(config.params, domain).threads
    # Read by torch when it is first imported in this fresh process (by the pipeline's training step).
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    settings = get_settings()
    _configure_logging(settings)
    backend = bootstrap(settings, migrate_db=False).backend
    pipeline = importlib.import_module(settings.pipeline_module)
    if "torch" in sys.modules:  # the pipeline module imported it already
        sys.modules["torch"].set_num_threads(threads)
    progress = ProgressReporter(backend, run_id, attempt, settings.progress_interval_s)
    ctx = StepContext(run_dir=settings.runs_dir / str(run_id), config=config, progress=progress,
                      device=settings.device)
    for step in pipeline.PER_DOMAIN:
        _run_step(pipeline, step, ctx, domain)
    return domain


def _run_domains(config: RunConfig, attempt: int) -> None:
    """Every domain in its own spawned process; the first failure stops the others."""
    if not config.domains:
        return
    pool = ProcessPoolExecutor(max_workers=len(config.domains),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_domain_process, max_tasks_per_child=1)
    futures: list[Future[str]] = [pool.submit(run_domain, config.run_id, attempt, d, config.to_json())
                                  for d in config.domains]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            error = future.exception()
            if error is not None:
                raise error
        for future in futures:
            future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.kill()
        raise
    pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------- the driver


@contextmanager
def tracking_store_turn(settings: Settings, tracking_uri: str) -> Iterator[None]:
    """One driver at a time in the steps that write MLflow's local store (SQLite + files).

    On a fresh store two drivers registering at once would both run its schema migrations, and two runs of
    one task would both create its experiment; an MLflow server (http) needs no such turn. The lock is a
    file lock, so a killed driver releases it.
    """
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        yield
        return
    path = settings.data_dir / "mlflow" / ".writer.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        started = time.monotonic()
        fcntl.flock(handle, fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited > 1:
            log.info("waited %.1f s for another run to finish writing the tracking store", waited)
        yield


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stdout,
                        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s")


def drive(backend: Backend, run_id: int, attempt: int | None = None) -> int:
    """Execute one attempt of a run; returns the process exit code."""
    settings = backend.settings
    pipeline = importlib.import_module(settings.pipeline_module)
    config = backend.model_config.read_run_config(run_id)
    run = begin_attempt(backend, run_id, step_names(pipeline, config.domains))
    if run is None or (attempt is not None and run.attempt != attempt):
        log.info("run %s: nothing to do for attempt %s (run is %s)", run_id, attempt,
                 f"{run.state.value}, attempt {run.attempt}" if run else "not active")
        return 0
    attempt = run.attempt
    log.info("run %s attempt %s: task %s, domains %s", run_id, attempt, config.task_name, config.domains)
    progress = ProgressReporter(backend, run_id, attempt, settings.progress_interval_s)
    run_dir = Path(settings.runs_dir) / str(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(run_dir=run_dir, config=config, progress=progress, device=settings.device)
    try:
        for step in pipeline.PRE:
            _run_step(pipeline, step, ctx)
        _run_domains(config, attempt)
        with tracking_store_turn(settings, config.tracking_uri):
            for step in pipeline.POST:
                _run_step(pipeline, step, ctx)
        progress.flush()
    except RunAbandoned as stop:
        log.warning("run %s: %s; stopping", run_id, stop)
        return 0
    except StepFailed as failure:
        fail_run(backend, run_id=run_id, attempt=attempt, error=str(failure))
        return 1
    registered = backend.artifacts.registered(run_id) or {}
    metrics = metrics_summary(backend.artifacts.report(run_id))
    finish_run(backend, run_id=run_id, attempt=attempt, metrics=metrics,
               model_uri=registered.get("model_uri"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one attempt of an ANNA training run.")
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--attempt", type=int, default=None,
                        help="refuse to run unless this is the run's current attempt")
    args = parser.parse_args(argv)
    settings = get_settings()
    _configure_logging(settings)
    wiring = bootstrap(settings, migrate_db=False)
    try:
        return drive(wiring.backend, args.run_id, args.attempt)
    except Exception as error:  # outside any step: the configuration, the database, the pipeline module
        log.exception("run %s: the driver failed", args.run_id)
        if args.attempt is not None:
            fail_run(wiring.backend, run_id=args.run_id, attempt=args.attempt,
                     error=f"the pipeline driver failed: {type(error).__name__}: {error}")
        return 1
    finally:
        wiring.engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
