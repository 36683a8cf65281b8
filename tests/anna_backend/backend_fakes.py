"""Fakes and helpers for the backend tests: marts, a runner, a scorer, an API client wrapper."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from anna_backend.domain.model import Run, RunState, Task
from anna_backend.service_layer.ports import Backend, DriverExit, MartCatalog, Runner, Scorer
from anna_backend.service_layer.run_progress import begin_attempt, finish_run, record_progress

HERE = Path(__file__).parent
MakeTask = Callable[..., dict[str, Any]]
ADMIN_PASSWORD = "admin-secret-pw"

# Two marts: "cards" knows clients 1..200 over 2024; "accounts" knows 150..300 from mid-2023 to mid-2024.
MARTS = {
    "cards": {
        "clients": np.arange(1, 201, dtype=np.int64),
        "time_min": "2024-01-01T00:00:00",
        "time_max": "2024-12-31T23:59:59",
    },
    "accounts": {
        "clients": np.arange(150, 301, dtype=np.int64),
        "time_min": "2023-06-01T00:00:00",
        "time_max": "2024-06-30T23:59:59",
    },
}


class FakeMartCatalog(MartCatalog):
    def __init__(self, marts: dict[str, dict[str, Any]] | None = None) -> None:
        self.marts = marts if marts is not None else MARTS

    def manifests(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "version": f"v-{name}",
                "time_min": m["time_min"],
                "time_max": m["time_max"],
                "n_clients": len(m["clients"]),
                "n_events": 10 * len(m["clients"]),
                "features": {"amount": {"kind": "numeric"}},
            }
            for name, m in sorted(self.marts.items())
        ]

    def client_ids(self, name: str) -> np.ndarray:
        return self.marts[name]["clients"]


class FakeRunner(Runner):
    """Simulates a driver per run in a thread: begins the attempt, reports progress, succeeds.

    Records every start and, at each start, how many runs the database has building or running.
    """

    def __init__(self, duration_s: float = 0.05, auto_run: bool = True) -> None:
        self.backend: Backend | None = None
        self.duration_s = duration_s
        self.auto_run = auto_run
        self.started: list[tuple[int, int]] = []  # (run_id, attempt)
        self.stopped: list[int] = []
        self._exits: list[DriverExit] = []
        self._alive: set[int] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, run: Run) -> int | None:
        assert run.id is not None
        with self._lock:
            self.started.append((run.id, run.attempt))
            self._alive.add(run.id)
        if self.auto_run:
            thread = threading.Thread(target=self._drive, args=(run.id, run.attempt), daemon=True)
            self._threads.append(thread)
            thread.start()
        return 4_000_000 + run.id  # no such pid

    def _drive(self, run_id: int, attempt: int) -> None:
        assert self.backend is not None
        backend = self.backend
        begin_attempt(backend, run_id, ["validate_split", "train.cards", "blend"])
        for name in ("validate_split", "train.cards", "blend"):
            record_progress(backend, run_id=run_id, attempt=attempt, step=name, fields={"state": "running"})
            time.sleep(self.duration_s / 3)
            record_progress(backend, run_id=run_id, attempt=attempt, step=name, fields={"state": "done"})
        finish_run(
            backend,
            run_id=run_id,
            attempt=attempt,
            metrics={"test": {"roc_auc": 0.7}, "domains": {}},
            model_uri=f"models:/fake/{run_id}",
        )
        self.exit(run_id, attempt, 0)

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the simulated drivers to end (before the test's database goes away)."""
        for thread in self._threads:
            thread.join(timeout)

    def exit(self, run_id: int, attempt: int, returncode: int, log_tail: str = "") -> None:
        with self._lock:
            self._alive.discard(run_id)
            self._exits.append(
                DriverExit(run_id=run_id, attempt=attempt, returncode=returncode, log_tail=log_tail)
            )

    def exited(self) -> list[DriverExit]:
        with self._lock:
            exits, self._exits = self._exits, []
        return exits

    def is_alive(self, run: Run) -> bool:
        return run.id in self._alive

    def stop(self, run: Run) -> None:
        assert run.id is not None
        with self._lock:
            self.stopped.append(run.id)
            self._alive.discard(run.id)


class FakeScorer(Scorer):
    """Scores ``(client_id % 10) / 10``. ``errors`` are raised by the next calls, one each; with a ``gate``,
    scoring first waits until it is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.errors: list[Exception] = []
        self.gate: threading.Event | None = None

    def score(self, run: Run, task: Task, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any] | None]:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(20)
        if self.errors:
            raise self.errors.pop(0)
        scored = rows[["client_id", "report_date"]].copy()
        scored["score"] = (rows["client_id"] % 10) / 10.0
        metrics = {"roc_auc": 0.5} if "target" in rows.columns else None
        return scored, metrics


class Api:
    """A TestClient with helpers for logging in as different users."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def token(self, username: str, password: str) -> str:
        answer = self.client.post("/auth/token", json={"username": username, "password": password})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def headers(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username, password)}"}

    def user(self, username: str, role: str, password: str = "user-password") -> dict[str, str]:
        answer = self.client.post(
            "/users", json={"username": username, "password": password, "role": role}, headers=self.headers()
        )
        assert answer.status_code == 201, answer.text
        return self.headers(username, password)


def sample_frame(
    n: int = 40, positives: int = 10, first_client: int = 1, report_date: str = "2024-06-01"
) -> pd.DataFrame:
    """A valid binary sample for the cards mart: clients first_client.., one report date, 0/1 targets."""
    return pd.DataFrame(
        {
            "client_id": np.arange(first_client, first_client + n),
            "report_date": [report_date] * n,
            "target": [1] * positives + [0] * (n - positives),
        }
    )


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def upload(api: Api, headers: dict[str, str], task: str, content: bytes, filename: str = "sample.csv") -> Any:
    return api.client.post(
        f"/tasks/{task}/samples", files={"file": (filename, io.BytesIO(content))}, headers=headers
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def seed_runs(
    backend: Backend, n: int, *, task: str = "churn", domains: tuple[str, ...] = ("cards",)
) -> list[int]:
    """A task with a sample and ``n`` queued runs, made through the services; returns the run ids."""
    from anna_backend.service_layer import auth, runs, tasks

    with backend.uow() as uow:
        user = uow.users.get_by_username("alice")
    if user is None:
        user = auth.create_user(backend, username="alice", password="pw-alice", role="analyst", actor=None)
    tasks.create_task(backend, user=user, name=task, task_type="binary", domains=list(domains))
    content = csv_bytes(sample_frame())
    tasks.upload_sample(backend, user=user, task_ref=task, filename="s.csv", content=content)
    return [runs.submit_run(backend, user=user, task_ref=task).run.id or 0 for _ in range(n)]


def succeed_run(backend: Backend, run_id: int) -> None:
    """Take a queued run through the state machine to succeeded, as its driver would have."""
    with backend.uow() as uow:
        run = uow.runs.get(run_id, for_update=True)
        assert run is not None
        run.transition(RunState.BUILDING)
        run.start(None)
        run.succeed(metrics={"test": {"roc_auc": 0.7}, "domains": {}}, model_uri=f"models:/fake/{run_id}")
        uow.runs.save(run)
        uow.commit()


def scorer_of(backend: Backend) -> FakeScorer:
    assert isinstance(backend.scorer, FakeScorer)
    return backend.scorer


def states(backend: Backend) -> dict[int, str]:
    with backend.uow() as uow:
        return {r.id or 0: r.state.value for r in uow.runs.search()}
