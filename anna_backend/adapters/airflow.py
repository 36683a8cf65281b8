"""Full mode's orchestrator: each run's attempt is one DAG run of ``dags/anna_training.py`` in Airflow 3,
driven and followed through the REST API v2 (JWT from ``/auth/token``)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import httpx

from anna_backend.domain.errors import ServiceUnavailable
from anna_backend.domain.model import Run
from anna_backend.service_layer.ports import ModelConfigRepo, Orchestrator, PipelineStatus, StepStatus
from anna_backend.settings import Settings

# Airflow's task instance states (None: not scheduled yet) as ANNA's step states.
STEP_STATES: dict[str | None, str] = {
    None: "pending", "none": "pending", "scheduled": "pending", "queued": "pending",
    "running": "running", "deferred": "running", "restarting": "running",
    "up_for_retry": "retrying", "up_for_reschedule": "retrying",
    "success": "succeeded", "failed": "failed", "upstream_failed": "failed",
    "skipped": "skipped", "removed": "skipped",
}
RUN_STATES = {"queued": "queued", "running": "running", "success": "succeeded", "failed": "failed"}
READY_TIMEOUT_S = 60.0
LOG_LINES = 20


class AirflowClient:
    """A small client of Airflow's REST API v2 that logs in with a user's password and renews its token."""

    def __init__(self, url: str, username: str, password: str, *, timeout_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._username, self._password = username, password
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport)
        self._token: str | None = None

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """Send with a valid token; returns the response when it is 2xx or in ``ok``, raises otherwise."""
        for fresh in (False, True):
            if self._token is None or fresh:
                self._token = self._login()
            response = self._send(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            if response.status_code != 401:
                break
        if response.is_success or response.status_code in ok:
            return response
        raise ServiceUnavailable(f"Airflow at {self.url} answered {method} {path} with "
                                 f"{response.status_code}: {response.text[:500]}")

    def get_json(self, path: str, **params: Any) -> dict[str, Any]:
        return dict(self.request("GET", path, params=params).json())

    def close(self) -> None:
        self._http.close()

    def _login(self) -> str:
        credentials = {"username": self._username, "password": self._password}
        response = self._send("POST", "/auth/token", json=credentials)
        if response.status_code in (401, 403):
            raise ServiceUnavailable(f"Airflow at {self.url} refused user {self._username!r}: check "
                                     "ANNA_AIRFLOW_USERNAME and ANNA_AIRFLOW_PASSWORD")
        if not response.is_success:
            raise ServiceUnavailable(f"Airflow at {self.url} gave no token ({response.status_code}): "
                                     f"{response.text[:300]}")
        return str(response.json()["access_token"])

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ServiceUnavailable(f"Airflow is not reachable at {self.url} ({error}): start it, or set "
                                     "ANNA_AIRFLOW_URL") from error


class AirflowOrchestrator(Orchestrator):
    """Runs each run's attempt as the DAG run ``anna-run-<id>-attempt-<n>``, so a repeated ``start`` (a
    redelivered request) finds the existing DAG run instead of starting a second one."""

    def __init__(self, settings: Settings, model_config: ModelConfigRepo, *,
                 client: AirflowClient | None = None) -> None:
        self.settings = settings
        self.model_config = model_config
        password = settings.airflow_password.get_secret_value() if settings.airflow_password else ""
        self.client = client or AirflowClient(settings.airflow_url, settings.airflow_username, password)
        self._domains: dict[int, list[str]] = {}  # a run's configuration never changes: read it once

    @property
    def _dag(self) -> str:
        return f"/api/v2/dags/{self.settings.airflow_dag_id}"

    @staticmethod
    def dag_run_id(run: Run) -> str:
        """One DAG run per run attempt; the run's commit keeps two ANNA installations sharing an Airflow
        (or one whose database was reset) from taking each other's DAG runs for their own."""
        commit = f"-{run.git_commit[:10]}" if run.git_commit else ""
        return f"anna-run-{run.id}-attempt-{run.attempt}{commit}"

    def ensure_ready(self) -> None:
        dag_id, url = self.settings.airflow_dag_id, self.client.url
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (found := self.client.request("GET", self._dag, ok=(404,))).status_code == 404:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"Airflow at {url} has not parsed DAG {dag_id}: is ANNA's dags/ "
                                         f"folder its dags_folder?{self._import_errors()}")
            time.sleep(1.0)
        if found.json().get("is_paused"):
            self.client.request("PATCH", self._dag, json={"is_paused": False})
        pool, slots = self.settings.airflow_pool, self.settings.airflow_pool_slots
        existing = self.client.request("GET", f"/api/v2/pools/{pool}", ok=(404,))
        if existing.status_code == 404:
            self.client.request("POST", "/api/v2/pools", json={"name": pool, "slots": slots}, ok=(409,))
        elif existing.json().get("slots") != slots:
            self.client.request("PATCH", f"/api/v2/pools/{pool}", json={"slots": slots})

    def start(self, run: Run) -> None:
        assert run.id is not None
        config = self.model_config.read_run_config(run.id)
        self._domains[run.id] = list(config.domains)
        conf = {"anna_run_id": run.id, "attempt": run.attempt,
                "run_dir": str(self.settings.runs_dir / str(run.id)), "device": self.settings.device,
                "config": json.loads(config.to_json())}
        body = {"dag_run_id": self.dag_run_id(run), "logical_date": None, "conf": conf}
        self.client.request("POST", f"{self._dag}/dagRuns", json=body, ok=(409,))  # 409: already started
        return None

    def status(self, run: Run) -> PipelineStatus:
        response = self.client.request("GET", self._run_path(run), ok=(404,))
        if response.status_code == 404:
            return PipelineStatus(state="missing", steps=[])
        run_state = RUN_STATES.get(str(response.json().get("state")), "running")
        names = self._names(run)
        by_name = {step.name: step for step in self._steps(run)}
        steps = [by_name.get(name) or StepStatus(name=name, state="pending") for name in names]
        steps += [step for name, step in by_name.items() if name not in names]
        if run_state == "succeeded" and any(s.state != "succeeded" for s in steps):
            # The DAG fails fast: a failed step skips the rest, and a DAG run whose last task was skipped
            # counts as a success in Airflow. Without every step, ANNA has no model.
            run_state = "failed"
        error = None
        if run_state == "failed":  # name the step that failed first, not those it took down with it
            ran = [s for s in steps if s.state == "failed" and s.try_number > 0]
            first = min(ran, key=StepStatus.failure_order, default=None)
            error = f"step {first.name} failed: {first.error}" if first else "the DAG run failed"
        return PipelineStatus(state=run_state, steps=steps, error=error)

    def stop(self, run: Run) -> None:
        # Airflow fails the running task instances too; their supervisors then kill the task processes.
        response = self.client.request("GET", self._run_path(run), ok=(404,))
        if response.status_code == 404 or response.json().get("state") not in ("queued", "running"):
            return
        self.client.request("PATCH", self._run_path(run), json={"state": "failed"}, ok=(404,))

    def is_alive(self, run: Run) -> bool:
        response = self.client.request("GET", self._run_path(run), ok=(404,))
        return response.status_code != 404 and response.json().get("state") in ("queued", "running")

    # ---------------------------------------------------------------------------------------- internals

    def _run_path(self, run: Run) -> str:
        return f"{self._dag}/dagRuns/{self.dag_run_id(run)}"

    def _domains_of(self, run: Run) -> list[str]:
        assert run.id is not None
        if run.id not in self._domains:
            self._domains[run.id] = list(self.model_config.read_run_config(run.id).domains)
        return self._domains[run.id]

    def _names(self, run: Run) -> list[str]:
        domains = self._domains_of(run)
        from anna_models.pipeline import step_names  # the DAG's task ids are the pipeline's step names

        return step_names(domains)

    def _task_instances(self, run: Run) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self.client.get_json(f"{self._run_path(run)}/taskInstances", limit=100, offset=len(found))
            found += page.get("task_instances", [])
            if not page.get("task_instances") or len(found) >= int(page.get("total_entries", 0)):
                return found

    def _steps(self, run: Run) -> list[StepStatus]:
        from anna_models.progress import read_progress

        domains = self._domains_of(run)
        progress = read_progress(self.settings.runs_dir / str(run.id))
        steps = []
        for ti in self._task_instances(run):
            task_id, index = str(ti["task_id"]), int(ti.get("map_index", -1))
            if index >= 0:
                if index >= len(domains):
                    continue
                name = f"{task_id}.{domains[index]}"
            elif task_id in _per_domain_steps():
                continue  # the mapped task before it was expanded: its steps show as pending
            else:
                name = task_id
            state = STEP_STATES.get(ti.get("state"), "pending")
            raised = state in ("failed", "retrying") and progress.get(name, {}).get("state") == "failed"
            error = progress[name].get("message") if raised else None
            if state == "failed" and error is None:  # killed, or failed outside the step: ask the log
                error = self._log_tail(run, ti)
            steps.append(StepStatus(name=name, state=state, try_number=int(ti.get("try_number") or 0),
                                    started_at=_time(ti.get("start_date")),
                                    finished_at=_time(ti.get("end_date")), error=error, raised=raised))
        return steps

    def _log_tail(self, run: Run, ti: dict[str, Any]) -> str | None:
        """The last lines of a task's log, for failures that left no progress message (a killed task)."""
        if not ti.get("try_number"):
            return "upstream step failed" if ti.get("state") == "upstream_failed" else None
        path = f"{self._run_path(run)}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
        try:
            content = self.client.get_json(path, map_index=ti.get("map_index", -1), full_content="true")
        except ServiceUnavailable:
            return None
        lines = []
        for entry in content.get("content") or []:
            if isinstance(entry, dict):
                text = str(entry.get("event", ""))
                if entry.get("error_detail"):
                    text += f" {json.dumps(entry['error_detail'])[:1000]}"
                lines.append(text)
            else:
                lines.append(str(entry))
        return "\n".join(lines[-LOG_LINES:]) or None

    def _import_errors(self) -> str:
        try:
            errors = self.client.get_json("/api/v2/importErrors").get("import_errors", [])
        except ServiceUnavailable:
            return ""
        return "".join(f"\nimport error in {e.get('filename')}: {e.get('stack_trace', '')[-1000:]}"
                       for e in errors)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def _per_domain_steps() -> set[str]:
    from anna_models import pipeline

    return {pipeline.step_name(step) for step in pipeline.PER_DOMAIN}
