"""``anna run-full`` (``make run-full``): ANNA in full mode on this machine, without Docker.

Checks that PostgreSQL and RabbitMQ answer (and says how to start them when they do not), creates ANNA's
and Airflow's databases, starts an MLflow server and Airflow (API server, scheduler, DAG processor) on
loopback, then ``anna serve`` and ``anna worker`` processes in full mode, and stops everything on Ctrl-C.
All of it keeps its files under ``<data dir>/full``.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import sqlalchemy as sa

from anna_backend.devservices.process import Service, ServiceFailed, http_ok, port_open, start, wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FullOptions:
    data_dir: Path
    postgres_url: str  # the server's maintenance database; ANNA's databases are created beside it
    rabbitmq_url: str
    port: int = 8000
    airflow_port: int = 8080
    mlflow_port: int = 5000
    workers: int = 2
    max_concurrent_runs: int = 2

    @property
    def home(self) -> Path:
        return self.data_dir / "full"


def check_prerequisites(options: FullOptions) -> list[str]:
    """What is missing, each as a sentence that says what to do; empty when all is there."""
    problems = []
    try:
        engine = sa.create_engine(options.postgres_url)
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        where = sa.make_url(options.postgres_url).render_as_string()
        problems.append(f"PostgreSQL does not answer at {where} ({type(error).__name__}): start it "
                        "(Debian: `pg_ctlcluster 15 main start`) or point ANNA_FULL_POSTGRES_URL at a "
                        "server ANNA may create databases on")
    from anna_backend.adapters.rabbitmq import RabbitRequestQueue
    from anna_backend.domain.errors import ServiceUnavailable

    queue = RabbitRequestQueue(options.rabbitmq_url, "anna")
    try:
        queue.declare()
    except ServiceUnavailable as error:
        problems.append(f"{error} (Debian: `rabbitmq-server -detached`)")
    finally:
        queue.close()
    for name, port in (("ANNA", options.port), ("Airflow", options.airflow_port),
                       ("MLflow", options.mlflow_port)):
        if port_open("127.0.0.1", port):
            problems.append(f"port {port}, meant for {name}, is taken: stop what listens there or choose "
                            "another with PORT / AIRFLOW_PORT / MLFLOW_PORT")
    return problems


def ensure_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the server if it is missing; returns its URL."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                    {"n": name}).first()
        if not exists:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _secret(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def anna_env(options: FullOptions, *, database_url: str, airflow_password: str, tracking_uri: str
             ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANNA_", "AIRFLOW"))}
    env.update(
        ANNA_DATA_DIR=str(options.data_dir), ANNA_DATABASE_URL=database_url, ANNA_QUEUE="rabbitmq",
        ANNA_RABBITMQ_URL=options.rabbitmq_url, ANNA_ORCHESTRATOR="airflow",
        ANNA_AIRFLOW_URL=f"http://127.0.0.1:{options.airflow_port}", ANNA_AIRFLOW_USERNAME="anna",
        ANNA_AIRFLOW_PASSWORD=airflow_password, ANNA_TRACKING_URI=tracking_uri,
        ANNA_MAX_CONCURRENT_RUNS=str(options.max_concurrent_runs), PYTHONUNBUFFERED="1")
    for key in ("ANNA_ADMIN_PASSWORD", "ANNA_ENV", "ANNA_LOG_LEVEL", "ANNA_DEFAULT_PARAMS", "ANNA_DEVICE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def run_full(options: FullOptions) -> int:
    from anna_backend.devservices.airflow import start_airflow
    from anna_backend.devservices.mlflow_server import start_mlflow_server

    problems = check_prerequisites(options)
    if problems:
        for problem in problems:
            click.echo(f"anna run-full: {problem}", err=True)
        return 2
    home = options.home
    home.mkdir(parents=True, exist_ok=True)
    anna_db = ensure_database(options.postgres_url, "anna")
    airflow_db = ensure_database(options.postgres_url, "anna_airflow")
    airflow_password = _secret(home / "airflow-password.txt")
    started: list[Service] = []
    stop_airflow = None
    try:
        click.echo("starting MLflow ...")
        mlflow = start_mlflow_server(home / "mlflow", port=options.mlflow_port,
                                     artifact_root=os.environ.get("ANNA_MLFLOW_ARTIFACT_ROOT"))
        started.append(mlflow)
        click.echo(f"MLflow at {mlflow.url}; starting Airflow (a minute or two the first time) ...")
        airflow = start_airflow(home / "airflow", database_url=airflow_db, port=options.airflow_port,
                                dags_folder=REPO / "dags", username="anna", password=airflow_password,
                                pool="anna_encoders", pool_slots=3)
        stop_airflow = airflow.stop
        click.echo(f"Airflow at {airflow.url} (user anna, password in {home / 'airflow-password.txt'})")
        env = anna_env(options, database_url=anna_db, airflow_password=airflow_password,
                       tracking_uri=mlflow.url)
        cli = [sys.executable, "-m", "anna_backend.entrypoints.cli"]
        server = start("anna serve", [*cli, "serve", "--port", str(options.port)], env=env,
                       log_path=home / "anna-serve.log", cwd=REPO, url=f"http://127.0.0.1:{options.port}")
        started.append(server)
        wait_until(server, lambda: http_ok(f"{server.url}/health"), timeout_s=60, what="answering /health")
        for n in range(options.workers):
            started.append(start(f"anna worker {n + 1}", [*cli, "worker"], env=env,
                                 log_path=home / f"anna-worker-{n + 1}.log", cwd=REPO))
        click.echo(f"ANNA (full mode) at {server.url} with {options.workers} worker(s); logs in {home}. "
                   "Ctrl-C stops everything.")
        return _watch(started)
    except ServiceFailed as error:
        click.echo(f"anna run-full: {error}", err=True)
        return 1
    finally:
        for service in reversed(started):
            service.stop()
        if stop_airflow is not None:
            stop_airflow()


def _watch(services: list[Service]) -> int:
    """Block until Ctrl-C / SIGTERM or until one of the services dies (which is reported)."""
    stopping: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell's background job ignores it by default
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    while not stopping:
        for service in services:
            if not service.alive():
                died = service.failure(f"exited with code {service.process.returncode}")
                click.echo(str(died), err=True)
                return 1
        time.sleep(1)
    click.echo("stopping ...")
    return 0
