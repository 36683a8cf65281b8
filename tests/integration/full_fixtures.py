"""Full mode against real services: PostgreSQL and RabbitMQ of the machine, and the Airflow and MLflow server
that the fixtures start once per session. With CI=true a missing service fails the tests instead of
skipping them.

``full_anna`` runs ANNA itself in full mode: `anna serve` and two `anna worker` processes on a fresh
PostgreSQL database, a RabbitMQ prefix of its own and tiny demo data.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from airflow_fixtures import AirflowInstance, airflow  # noqa: F401
from mlflow_fixtures import mlflow_server  # noqa: F401
from service_support import fresh_postgres_database, unavailable

from anna_backend.devservices.process import Service, free_port

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "full-mode-admin-secret"
TINY_PARAMS: dict[str, Any] = {"default": {"hidden": 8, "max_epochs": 1, "max_len": 32, "search_budget_s": 0}}
DEMO_CLIENTS = 600
MAX_CONCURRENT_RUNS = 2
POLL_INTERVAL_S = 1.0
RABBITMQ_URL = os.environ.get("ANNA_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture(scope="session")
def rabbitmq_prefix() -> Iterator[str]:
    """A RabbitMQ topology of this session's own (deleted at the end)."""
    from anna_backend.adapters.rabbitmq import RabbitRequestQueue
    from anna_backend.domain.errors import ServiceUnavailable

    prefix = f"anna-it-{uuid.uuid4().hex[:8]}"
    queue = RabbitRequestQueue(RABBITMQ_URL, prefix)
    try:
        queue.declare()
    except ServiceUnavailable as error:
        queue.close()
        unavailable(str(error))
    try:
        yield prefix
    finally:
        queue.delete()
        queue.close()


@pytest.fixture(scope="session")
def anna_database() -> Iterator[str]:
    with fresh_postgres_database("anna_full") as url:
        yield url


@dataclass
class FullAnna:
    """ANNA in full mode: one server and numbered workers, each a process that may be killed and restarted."""

    data_dir: Path
    env: dict[str, str]
    airflow: AirflowInstance
    mlflow_url: str
    port: int = field(default_factory=free_port)
    server: Service | None = None
    workers: dict[int, Service] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self, name: str, *args: str) -> Service:
        from anna_backend.devservices.process import start

        command = [sys.executable, "-m", "anna_backend.entrypoints.cli", *args]
        return start(name, command, env=self.env, log_path=self.data_dir / "logs" / f"{name}.log", cwd=REPO)

    def start_server(self) -> None:
        from anna_backend.devservices.process import http_ok, wait_until

        self.server = self._start("server", "serve", "--port", str(self.port))
        wait_until(self.server, lambda: http_ok(f"{self.url}/health"), timeout_s=90, what="answering /health")

    def start_worker(self, number: int) -> Service:
        self.workers[number] = self._start(f"worker-{number}", "worker")
        return self.workers[number]

    def kill_worker(self, number: int) -> None:
        worker = self.workers.pop(number)
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(10)

    def logs(self, lines: int = 60) -> str:
        from anna_backend.adapters.artifacts import tail

        return "\n".join(f"----- {path.name} -----\n{tail(path, lines=lines)}"
                         for path in sorted((self.data_dir / "logs").glob("*.log")))

    def stop(self) -> None:
        for service in [*self.workers.values(), *([self.server] if self.server else [])]:
            service.stop()


@pytest.fixture(scope="module")
def full_anna(tmp_path_factory: pytest.TempPathFactory, airflow: AirflowInstance,  # noqa: F811
              mlflow_server: Service, rabbitmq_prefix: str, anna_database: str) -> Iterator[FullAnna]:  # noqa: F811
    from anna_models.demo_data import generate_demo

    data_dir = tmp_path_factory.mktemp("full") / "data"
    generate_demo(data_dir, clients=DEMO_CLIENTS, seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANNA_", "AIRFLOW"))}
    env.update(
        ANNA_DATA_DIR=str(data_dir), ANNA_DATABASE_URL=anna_database, ANNA_ADMIN_PASSWORD=ADMIN_PASSWORD,
        ANNA_QUEUE="rabbitmq", ANNA_RABBITMQ_URL=RABBITMQ_URL, ANNA_RABBITMQ_PREFIX=rabbitmq_prefix,
        ANNA_ORCHESTRATOR="airflow", ANNA_AIRFLOW_URL=airflow.url, ANNA_AIRFLOW_USERNAME=airflow.username,
        ANNA_AIRFLOW_PASSWORD=airflow.password, ANNA_AIRFLOW_POOL=airflow.pool,
        ANNA_AIRFLOW_POOL_SLOTS=str(airflow.pool_slots), ANNA_TRACKING_URI=mlflow_server.url,
        ANNA_MAX_CONCURRENT_RUNS=str(MAX_CONCURRENT_RUNS), ANNA_POLL_INTERVAL_S=str(POLL_INTERVAL_S),
        ANNA_MIN_SAMPLE_ROWS="20", ANNA_MIN_POSITIVES="5", ANNA_DEVICE="cpu", PYTHONUNBUFFERED="1")
    anna = FullAnna(data_dir=data_dir, env=env, airflow=airflow, mlflow_url=mlflow_server.url)
    try:
        anna.start_server()
        anna.start_worker(1)
        anna.start_worker(2)
        yield anna
    finally:
        anna.stop()


class Api:
    """A logged-in client of the full-mode server; a wrong status fails with the body and the logs."""

    def __init__(self, anna: FullAnna) -> None:
        self.anna = anna
        self.http = httpx.Client(base_url=anna.url, timeout=60)
        token = self.expect(self.http.post("/auth/token", json={"username": "admin",
                                                                 "password": ADMIN_PASSWORD}), 200)
        self.http.headers["Authorization"] = f"Bearer {token['access_token']}"

    def expect(self, response: httpx.Response, status: int) -> Any:
        if response.status_code != status:
            pytest.fail(f"{response.request.method} {response.request.url} answered {response.status_code}, "
                        f"expected {status}: {response.text[:2000]}\n{self.anna.logs()}")
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.expect(self.http.get(path, **kwargs), 200)

    def post(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        return self.expect(self.http.post(path, **kwargs), status)

    def task_with_sample(self, name: str) -> None:
        self.post("/tasks", 201, json={"name": name, "task_type": "binary"})
        sample = self.anna.data_dir / "demo" / "samples" / "default_12m.csv"
        with sample.open("rb") as handle:
            self.post(f"/tasks/{name}/samples", 201, files={"file": (sample.name, handle)})

    def train(self, task: str, seed: int = 0) -> int:
        return int(self.post(f"/tasks/{task}/runs", 201, json={"params": TINY_PARAMS, "seed": seed})["id"])

    def wait_finished(self, run_id: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.get(f"/runs/{run_id}")
            if run["state"] in ("succeeded", "failed", "cancelled"):
                return run
            time.sleep(0.5)
        pytest.fail(f"run {run_id} did not finish within {timeout_s:.0f} s; last seen {run.get('state')}, "
                    f"steps {[(s['name'], s['state']) for s in run.get('steps') or []]}\n{self.anna.logs()}")


@pytest.fixture(scope="module")
def api(full_anna: FullAnna) -> Iterator[Api]:
    client = Api(full_anna)
    try:
        yield client
    finally:
        client.http.close()


def airflow_client(instance: AirflowInstance) -> httpx.Client:
    """An authenticated client of Airflow's REST API v2, as a test's own eyes on the DAG runs."""
    token = httpx.post(f"{instance.url}/auth/token", json={"username": instance.username,
                                                           "password": instance.password}, timeout=30)
    token.raise_for_status()
    return httpx.Client(base_url=f"{instance.url}/api/v2", timeout=30,
                        headers={"Authorization": f"Bearer {token.json()['access_token']}"})


def dag_runs_of(client: httpx.Client, run_id: int, dag_id: str = "anna_training") -> list[dict[str, Any]]:
    answer = client.get(f"/dags/{dag_id}/dagRuns", params={"limit": 1000})
    answer.raise_for_status()
    return [r for r in answer.json()["dag_runs"] if r["dag_run_id"].startswith(f"anna-run-{run_id}-")]

