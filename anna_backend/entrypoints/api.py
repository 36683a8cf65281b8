"""The REST API (v1). Routes are thin: parse, call one service, return a schema.

Domain errors map to statuses in one place (``_domain_error``): NotFound 404, Conflict 409, Forbidden 403,
Unauthenticated 401, InvalidInput 422 with its ``detail`` entries.
"""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import OAuth2PasswordBearer
from pydantic import ValidationError

from anna_backend.domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthenticated,
)
from anna_backend.domain.model import User
from anna_backend.entrypoints.schemas import (
    DeadRequestPublic,
    HealthPublic,
    MartPublic,
    RunCreate,
    RunPublic,
    SamplePublic,
    ScoreJobPublic,
    ScorePublic,
    TaskCreate,
    TaskPublic,
    TokenPublic,
    TokenRequest,
    UserCreate,
    UserPublic,
)
from anna_backend.service_layer import auth, runs, scoring, tasks
from anna_backend.service_layer.ports import Backend
from anna_backend.version import VERSION

_STATUS = {NotFound: 404, Conflict: 409, Forbidden: 403, Unauthenticated: 401, InvalidInput: 422,
           ServiceUnavailable: 503}
_bearer = OAuth2PasswordBearer(tokenUrl="auth/token", auto_error=False)


def get_backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


BackendDep = Annotated[Backend, Depends(get_backend)]


def current_user(backend: BackendDep, token: Annotated[str | None, Depends(_bearer)]) -> User:
    if not token:
        raise Unauthenticated("missing bearer token; log in with POST /auth/token (or `anna login`)")
    return auth.authenticate(backend, token)


CurrentUser = Annotated[User, Depends(current_user)]


def _domain_error(request: Request, error: Exception) -> JSONResponse:
    status = next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 400)
    detail: Any = error.issues if isinstance(error, InvalidInput) else str(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _date_text(value: Any) -> str:
    stamp = pd.Timestamp(value)
    return stamp.strftime("%Y-%m-%d") if stamp == stamp.normalize() else stamp.isoformat()


def _scores(result: scoring.ScoreResult, format: str) -> Any:
    """Scores as ``ScorePublic`` JSON, or as CSV with the metrics in the ``X-Anna-Metrics`` header."""
    frame = result.scores.copy()
    frame["report_date"] = frame["report_date"].map(_date_text)
    if format == "csv":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        headers = {"X-Anna-Metrics": json.dumps(result.metrics)} if result.metrics is not None else None
        return Response(buffer.getvalue(), media_type="text/csv", headers=headers)
    records = json.loads(frame.to_json(orient="records"))
    return ScorePublic(run_id=result.run_id, n_rows=len(frame), scores=records, metrics=result.metrics)


ScoreFile = Annotated[UploadFile, File(description="client_id, report_date[, target]")]
ScoreFormat = Annotated[Literal["json", "csv"], Query()]


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(title="ANNA", version=VERSION,
                  description="AutoML for neural networks on banks' sequential client data.")
    app.state.backend = backend
    app.add_exception_handler(DomainError, _domain_error)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        """The address `make run` prints opens the API's interactive docs until the web UI lands."""
        return RedirectResponse("/docs")

    @app.get("/health", tags=["meta"])
    def health(backend: BackendDep) -> HealthPublic:
        settings = backend.settings
        return HealthPublic(status="ok", version=VERSION, mode="full" if settings.full_mode else "embedded",
                            queue=settings.queue, orchestrator=settings.orchestrator)

    # ------------------------------------------------------------------------------------ auth, users

    @app.post("/auth/token", tags=["auth"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": TokenRequest.model_json_schema()},
        "application/x-www-form-urlencoded": {"schema": TokenRequest.model_json_schema()}}}})
    async def login(request: Request, backend: BackendDep) -> TokenPublic:
        """A bearer token for a username and password (JSON body or OAuth2 password form)."""
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body: Any = await request.json()
            except ValueError:
                raise RequestValidationError([{"loc": ("body",), "msg": "the body is not valid JSON",
                                               "type": "json_invalid"}]) from None
        else:
            body = dict(await request.form())
        try:
            credentials = TokenRequest.model_validate({k: body.get(k) for k in ("username", "password")}
                                                      if isinstance(body, dict) else body)
        except ValidationError as error:
            issues = [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
            raise RequestValidationError(issues) from None
        issued = await run_in_threadpool(auth.issue_token, backend, username=credentials.username,
                                         password=credentials.password)
        return TokenPublic(access_token=issued.access_token, expires_at=issued.expires_at)

    @app.get("/users/me", tags=["auth"])
    def me(user: CurrentUser) -> UserPublic:
        return UserPublic.of(user)

    @app.post("/users", tags=["auth"], status_code=201)
    def create_user(body: UserCreate, user: CurrentUser, backend: BackendDep) -> UserPublic:
        """Create a user (admin only)."""
        created = auth.create_user(backend, username=body.username, password=body.password, role=body.role,
                                   actor=user)
        return UserPublic.of(created)

    # ------------------------------------------------------------------------------- marts and tasks

    @app.get("/marts", tags=["tasks"])
    def list_marts(user: CurrentUser, backend: BackendDep) -> list[MartPublic]:
        return [MartPublic.of(m) for m in tasks.list_marts(backend)]

    @app.post("/tasks", tags=["tasks"], status_code=201)
    def create_task(body: TaskCreate, user: CurrentUser, backend: BackendDep) -> TaskPublic:
        task = tasks.create_task(backend, user=user, name=body.name, task_type=body.task_type,
                                 metric=body.metric, domains=body.domains, description=body.description)
        return TaskPublic.of(task)

    @app.get("/tasks", tags=["tasks"])
    def list_tasks(user: CurrentUser, backend: BackendDep) -> list[TaskPublic]:
        return [TaskPublic.of(t) for t in tasks.list_tasks(backend)]

    @app.get("/tasks/{task_ref}", tags=["tasks"])
    def get_task(task_ref: str, user: CurrentUser, backend: BackendDep) -> TaskPublic:
        """A task by id or by name."""
        return TaskPublic.of(tasks.get_task(backend, task_ref))

    @app.post("/tasks/{task_ref}/samples", tags=["tasks"], status_code=201)
    def upload_sample(task_ref: str, file: Annotated[UploadFile, File(description=".csv or .parquet")],
                      user: CurrentUser, backend: BackendDep) -> SamplePublic:
        """Upload a sample (client_id, report_date, target); 422 names every bad row and column."""
        sample = tasks.upload_sample(backend, user=user, task_ref=task_ref, filename=file.filename or "",
                                     content=file.file.read())
        return SamplePublic.of(sample)

    @app.get("/tasks/{task_ref}/samples", tags=["tasks"])
    def list_samples(task_ref: str, user: CurrentUser, backend: BackendDep) -> list[SamplePublic]:
        return [SamplePublic.of(s) for s in tasks.list_samples(backend, task_ref)]

    # ------------------------------------------------------------------------------------------- runs

    @app.post("/tasks/{task_ref}/runs", tags=["runs"], status_code=201)
    def submit_run(task_ref: str, user: CurrentUser, backend: BackendDep, body: RunCreate | None = None
                   ) -> RunPublic:
        """Queue a training run; it starts when fewer than ANNA_MAX_CONCURRENT_RUNS runs are active."""
        body = body or RunCreate()
        view = runs.submit_run(backend, user=user, task_ref=task_ref, sample_id=body.sample_id,
                               params=body.params, seed=body.seed)
        return RunPublic.of(view)

    @app.get("/runs", tags=["runs"])
    def list_runs(user: CurrentUser, backend: BackendDep, task: str | None = None,
                  state: str | None = None) -> list[RunPublic]:
        """Runs, newest first; filter by task (id or name) and state."""
        return [RunPublic.of(v) for v in runs.list_runs(backend, task_ref=task, state=state)]

    @app.get("/runs/{run_id}", tags=["runs"])
    def get_run(run_id: int, user: CurrentUser, backend: BackendDep) -> RunPublic:
        return RunPublic.of(runs.get_run(backend, run_id))

    @app.post("/runs/{run_id}/cancel", tags=["runs"])
    def cancel_run(run_id: int, user: CurrentUser, backend: BackendDep) -> RunPublic:
        return RunPublic.of(runs.cancel_run(backend, user=user, run_id=run_id))

    @app.get("/runs/{run_id}/report", tags=["runs"])
    def get_report(run_id: int, user: CurrentUser, backend: BackendDep) -> dict[str, Any]:
        """The run's report.json (409 until the run has succeeded)."""
        return runs.get_report(backend, run_id)

    @app.get("/runs/{run_id}/plots/{name}", tags=["runs"], response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}, "description": "the plot as PNG"}})
    def get_plot(run_id: int, name: str, user: CurrentUser, backend: BackendDep) -> FileResponse:
        """One plot of the run's report as PNG; the report's `plots` lists them (leaderboard.png,
        learning_curves.png, and by task type roc_pr.png, lift.png, calibration.png, confusion.png,
        deciles.png)."""
        return FileResponse(runs.get_plot(backend, run_id, name), media_type="image/png")

    @app.post("/runs/{run_id}/score", tags=["scoring"], response_model=ScorePublic,
              responses={200: {"content": {"text/csv": {}}}})
    def score(run_id: int, file: ScoreFile, user: CurrentUser, backend: BackendDep,
              format: ScoreFormat = "json") -> Any:
        """Retro-inference: score a file with the run's model; with a target column, also its metrics."""
        return _scores(scoring.score_sample(backend, user=user, run_id=run_id, filename=file.filename or "",
                                            content=file.file.read()), format)

    @app.post("/runs/{run_id}/score-jobs", tags=["scoring"], status_code=202)
    def submit_score_job(run_id: int, file: ScoreFile, user: CurrentUser, backend: BackendDep
                         ) -> ScoreJobPublic:
        """Queue a score job for the file (validated now; 422 names the rows); poll GET /score-jobs/{id}."""
        return ScoreJobPublic.of(scoring.submit_score_job(backend, user=user, run_id=run_id,
                                                          filename=file.filename or "",
                                                          content=file.file.read()))

    @app.get("/score-jobs/{job_id}", tags=["scoring"])
    def get_score_job(job_id: int, user: CurrentUser, backend: BackendDep) -> ScoreJobPublic:
        return ScoreJobPublic.of(scoring.get_score_job(backend, job_id))

    @app.get("/score-jobs/{job_id}/result", tags=["scoring"], response_model=ScorePublic,
             responses={200: {"content": {"text/csv": {}}}})
    def score_job_result(job_id: int, user: CurrentUser, backend: BackendDep,
                         format: ScoreFormat = "json") -> Any:
        """The job's scores, as POST /runs/{id}/score answers them (409 until the job has succeeded)."""
        return _scores(scoring.score_job_result(backend, job_id), format)

    @app.get("/queue/dead-letters", tags=["runs"])
    def dead_letters(user: CurrentUser, backend: BackendDep,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeadRequestPublic]:
        """Requests the queue gave up on (invalid, or failing past the retry limit), oldest first; empty in
        embedded mode, which retries nothing."""
        return [DeadRequestPublic(**vars(d)) for d in runs.dead_letters(backend, limit=limit)]

    return app
