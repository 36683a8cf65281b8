"""A local Airflow 3 for full mode and its tests: metadata in PostgreSQL, LocalExecutor, simple auth.

Everything runs through the ``airflow`` CLI of this interpreter's environment, never in-process: Airflow
configures logging and SQLAlchemy globally on import, which must not leak into ANNA's processes. The whole
configuration is environment variables (no ``airflow.cfg`` is read), so one ``home`` folder holds all an
instance writes: its logs, the password file and the JWT secret.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from anna_backend.devservices.process import Service, ServiceFailed, http_ok, start, wait_until

STARTUP_TIMEOUT_S = 120.0
COMPONENTS = ("api-server", "scheduler", "dag-processor")  # no deferrable tasks: no triggerer


@dataclass
class AirflowServices:
    """A started Airflow: its API URL, the admin user and the component processes."""

    url: str
    username: str
    password: str
    home: Path
    services: list[Service] = field(default_factory=list)
    started_in_s: float = 0.0

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def airflow_cli() -> Path:
    return Path(sys.executable).parent / "airflow"


def airflow_env(home: Path, *, database_url: str, port: int, dags_folder: Path, username: str,
                pool: str, parallelism: int) -> dict[str, str]:
    """The environment every component and CLI call of this instance runs with."""
    url = f"http://127.0.0.1:{port}"
    secret_file = home / "jwt-secret"
    if not secret_file.exists():  # kept, so a restarted instance accepts the tokens it gave out
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    settings = {
        "CORE__EXECUTOR": "LocalExecutor",
        "CORE__PARALLELISM": str(parallelism),
        "CORE__DAGS_FOLDER": str(dags_folder.resolve()),
        "CORE__LOAD_EXAMPLES": "False",
        "CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
        "CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        # psycopg 3 serves both engines; without the async URL Airflow would look for asyncpg.
        "DATABASE__SQL_ALCHEMY_CONN": database_url,
        "DATABASE__SQL_ALCHEMY_CONN_ASYNC": database_url,
        "API__BASE_URL": url,
        "API__HOST": "127.0.0.1",
        "API__PORT": str(port),
        "API__WORKERS": "1",
        "API_AUTH__JWT_SECRET": secret_file.read_text().strip(),
        "API__SECRET_KEY": secret_file.read_text().strip(),
        # A new or changed DAG file is seen within seconds, not minutes.
        "DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        "DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
        "LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
    env.update({f"AIRFLOW__{key}": value for key, value in settings.items()})
    env.update({"AIRFLOW_HOME": str(home), "ANNA_AIRFLOW_POOL": pool, "PYTHONUNBUFFERED": "1"})
    return env


def start_airflow(home: Path, *, database_url: str, port: int, dags_folder: Path, username: str,
                  password: str, pool: str, pool_slots: int, parallelism: int = 8) -> AirflowServices:
    """Migrate the metadata database, start the API server, scheduler and DAG processor, create the pool,
    and wait until Airflow reports itself healthy. Raises ``ServiceFailed`` (with the log's end) if not."""
    started = time.monotonic()
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "passwords.json").write_text(json.dumps({username: password}) + "\n")
    (home / "passwords.json").chmod(0o600)
    env = airflow_env(home, database_url=database_url, port=port, dags_folder=dags_folder,
                      username=username, pool=pool, parallelism=parallelism)
    cli = str(airflow_cli())
    _run_cli([cli, "db", "migrate"], env=env, log_path=home / "db-migrate.log")

    airflow = AirflowServices(url=f"http://127.0.0.1:{port}", username=username, password=password,
                              home=home)
    try:
        for component in COMPONENTS:
            argv = [cli, component, *(["--port", str(port)] if component == "api-server" else [])]
            airflow.services.append(start(f"airflow {component}", argv, env=env,
                                          log_path=home / f"{component}.log", cwd=home))
        api = airflow.services[0]
        wait_until(api, lambda: http_ok(f"{airflow.url}/api/v2/monitor/health"),
                   timeout_s=STARTUP_TIMEOUT_S, what="serving /api/v2/monitor/health")
        # Through the API, not `airflow pools set`: another CLI process would slow the start by seconds.
        _set_pool(airflow, pool, pool_slots)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while (unhealthy := _unhealthy(airflow.url)) and time.monotonic() < deadline:
            for service in airflow.services:
                if not service.alive():
                    raise service.failure(f"exited with code {service.process.returncode}")
            time.sleep(0.5)
        if unhealthy:
            name = "scheduler" if "scheduler" in unhealthy else "dag-processor"
            service = next(s for s in airflow.services if s.name.endswith(name))
            raise service.failure(f"is not healthy ({', '.join(unhealthy)}) after {STARTUP_TIMEOUT_S:.0f} s")
    except BaseException:
        airflow.stop()
        raise
    airflow.started_in_s = time.monotonic() - started
    return airflow


def _set_pool(airflow: AirflowServices, pool: str, slots: int) -> None:
    import httpx

    credentials = {"username": airflow.username, "password": airflow.password}
    with httpx.Client(base_url=airflow.url, timeout=10.0) as http:
        token = http.post("/auth/token", json=credentials).raise_for_status().json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        created = http.post("/api/v2/pools", headers=headers, json={"name": pool, "slots": slots})
        if created.status_code == 409:
            created = http.patch(f"/api/v2/pools/{pool}", headers=headers, json={"slots": slots})
    if not created.is_success:
        raise airflow.services[0].failure(f"refused to create pool {pool}: {created.text[:300]}")


def _unhealthy(url: str) -> list[str]:
    """The components the health endpoint does not yet report healthy (the triggerer is not run)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
        health = json.load(response)
    wanted = ("metadatabase", "scheduler", "dag_processor")
    return [name for name in wanted if (health.get(name) or {}).get("status") != "healthy"]


def _run_cli(argv: list[str], *, env: dict[str, str], log_path: Path) -> None:
    with open(log_path, "ab") as log:
        result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=log_path.parent, timeout=300)
    if result.returncode != 0:
        from anna_backend.adapters.artifacts import tail

        raise ServiceFailed(f"`airflow {' '.join(argv[1:3])}` exited with code {result.returncode}; "
                            f"the end of {log_path}:\n{tail(log_path, lines=40)}")
