"""An MLflow tracking server on loopback: tracking and registry in a database, artifacts proxied by the
server into a folder (the artifact root), as full mode's "MLflow server" port expects.

The server runs as ``mlflow server`` from the interpreter's own environment; nothing of MLflow is
imported here, so the API process stays light.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from anna_backend.devservices.process import Service, http_ok, start, wait_until

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0  # healthy after 5-11 s on 2 busy cores; a fresh database is migrated first

# By default MLflow 3 also starts a job runner with seven huey consumer processes (GenAI evaluation,
# trace rollups): 10 processes and ~1.7 GB resident instead of 2 and ~0.5 GB, for work ANNA never asks.
_LEAN_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false",
}

_INHERITED = (
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_STORE_URI", "MLFLOW_DEFAULT_ARTIFACT_ROOT",
    "MLFLOW_ARTIFACTS_ONLY", "MLFLOW_STATIC_PREFIX", "MLFLOW_UVICORN_OPTS", "MLFLOW_GUNICORN_OPTS",
)


def mlflow_executable() -> Path:
    """The ``mlflow`` command of the environment this interpreter runs in."""
    return Path(sys.executable).parent / "mlflow"


def start_mlflow_server(
    home: Path,
    *,
    port: int,
    backend_store_uri: str | None = None,
    artifact_root: Path | str | None = None,
    workers: int = 1,
    timeout_s: float = START_TIMEOUT_S,
) -> Service:
    """Start ``mlflow server`` on 127.0.0.1:``port`` and wait until ``/health`` answers.

    ``backend_store_uri`` holds experiments, runs and the model registry: by default a SQLite file
    ``home/mlflow.db``; ``postgresql+psycopg://...`` works as well (MLflow 3.17 runs on psycopg 3).
    Clients log artifacts through the server (``mlflow-artifacts:/``), which writes them under
    ``artifact_root`` (default ``home/artifacts``); clients never need a path of their own there.
    The returned service's ``url`` is the tracking URI; ``extra`` holds ``artifact_root``,
    ``backend_store_uri`` and ``startup_s`` (seconds until healthy). Raises ``ServiceFailed`` with
    the end of ``home/mlflow-server.log`` when it does not come up.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    artifacts = Path(artifact_root or home / "artifacts").expanduser().resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    store = backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    executable = mlflow_executable()
    if not executable.exists():
        raise FileNotFoundError(f"{executable} is missing: install mlflow into {sys.prefix}")
    argv = [
        str(executable), "server",
        "--serve-artifacts",
        "--artifacts-destination", str(artifacts),
        "--host", HOST,
        "--port", str(port),
        "--workers", str(workers),
    ]
    # Settings inherited from the caller would put runs, models or artifacts somewhere else.
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    # Through the environment, not argv: a PostgreSQL URL may hold a password that ps would show.
    env.update(_LEAN_ENV, MLFLOW_BACKEND_STORE_URI=store)
    url = f"http://{HOST}:{port}"
    started = time.monotonic()
    # cwd=home: anything MLflow still writes relative to its working directory stays under home.
    service = start("mlflow", argv, env=env, log_path=home / "mlflow-server.log", cwd=home, url=url)
    try:
        wait_until(service, lambda: http_ok(f"{url}/health"), timeout_s=timeout_s, what="healthy")
    except BaseException:
        service.stop()
        raise
    service.extra.update(
        artifact_root=str(artifacts),
        backend_store_uri=store,
        startup_s=f"{time.monotonic() - started:.1f}",
    )
    return service
