"""The HTTP side of the ``anna`` command: API client, user-facing errors, saved token, run following.

Every API call goes through :class:`AnnaClient`, which turns HTTP failures into one line naming what to fix.
Tests hand in their own ``httpx.Client`` (for example FastAPI's ``TestClient``) through ``CliEnv``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from anna_backend.entrypoints.cli_format import run_state_line, step_line

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")
PROGRESS_EVERY_S = 10.0  # how often `anna train --wait` shows a step's progress within an epoch


class AnnaError(click.ClickException):
    """An error the user can fix; printed as ``Error: <message>`` and exit code 1."""


def token_path() -> Path:
    """Where ``anna login`` keeps the token: ``$ANNA_CONFIG_DIR/token`` or ``~/.config/anna/token``."""
    config_dir = os.environ.get("ANNA_CONFIG_DIR")
    base = Path(config_dir) if config_dir else Path.home() / ".config" / "anna"
    return base / "token"


def save_token(token: str) -> Path:
    """Write the token readable by its owner only (mode 600), replacing any earlier one."""
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # the file may have existed with a wider mode
        f.write(token + "\n")
    return path


def load_token() -> str | None:
    """``ANNA_TOKEN`` wins over the saved token."""
    token = os.environ.get("ANNA_TOKEN")
    if token:
        return token.strip()
    path = token_path()
    return (path.read_text().strip() or None) if path.is_file() else None


def login_hint() -> str:
    data_dir = os.environ.get("ANNA_DATA_DIR", "data")
    return f"anna login --user admin --password-file {data_dir.rstrip('/')}/admin-password.txt"


def describe_problems(body: Any) -> list[str]:
    """The lines of an error body: sample-row problems, FastAPI validation errors or a plain detail."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if detail is None or detail == "":
        return []
    if not isinstance(detail, list):
        return [str(detail)]
    lines = []
    for item in detail:
        if not isinstance(item, dict):
            lines.append(str(item))
            continue
        msg = str(item.get("msg", item))
        if "loc" in item:
            loc = ".".join(str(p) for p in item["loc"] if p not in ("body", "query", "path"))
            lines.append(f"{loc}: {msg}" if loc else msg)
            continue
        where = []
        if item.get("row") is not None:
            where.append(f"row {item['row']}")
        if item.get("column"):
            where.append(f"column '{item['column']}'")
        lines.append(f"{', '.join(where)}: {msg}" if where else msg)
    return lines


@dataclass
class AnnaClient:
    """Calls the ANNA API; every failure becomes an :class:`AnnaError` with a message naming the fix."""

    url: str
    token: str | None
    http: httpx.Client

    def request(
        self,
        method: str,
        path: str,
        *,
        not_found: str | None = None,
        invalid: str | None = None,
        auth: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            raise AnnaError(f"ANNA at {self.url} did not answer {method} {path} in time — try again") from exc
        except httpx.TransportError as exc:
            raise AnnaError(
                f"cannot reach ANNA at {self.url} — is `make run` / `anna serve` running? "
                "(--url or ANNA_URL if it runs elsewhere)"
            ) from exc
        if response.status_code < 400:
            return response
        self._fail(response, auth=auth, not_found=not_found, invalid=invalid)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    def _fail(
        self, response: httpx.Response, *, auth: bool, not_found: str | None, invalid: str | None
    ) -> NoReturn:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text.strip()[:500]
        problems = describe_problems(body)
        detail = "; ".join(problems)
        status = response.status_code
        if status == 401 and not auth:
            raise AnnaError(f"login refused: {detail or 'wrong user name or password'}")
        if status == 401 and not self.token:
            raise AnnaError(f"not logged in — run `{login_hint()}` (or set ANNA_TOKEN)")
        if status == 401:
            raise AnnaError(f"your login was refused or has expired — run `{login_hint()}` again")
        if status == 403:
            raise AnnaError(f"your role may not do this: {detail or 'forbidden'} — ask an admin")
        if status == 404:
            raise AnnaError(not_found or f"not found: {detail or response.request.url.path}")
        if status == 409:
            raise AnnaError(f"conflict: {detail}")
        if status == 422:
            head = invalid or "invalid input"
            listing = "\n".join(f"  - {line}" for line in problems)
            raise AnnaError(
                f"{head} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{listing}"
            )
        raise AnnaError(
            f"ANNA answered {status} to {response.request.method} {response.request.url.path}: {detail}"
        )


@dataclass
class CliEnv:
    """What the commands share. ``http`` is injectable; by default a real client on ``--url``."""

    url: str = DEFAULT_URL
    http: httpx.Client | None = None
    poll_interval: float = 2.0
    _client: AnnaClient | None = field(default=None, repr=False)

    def client(self) -> AnnaClient:
        if self._client is None:
            http = self.http or httpx.Client(base_url=self.url, timeout=httpx.Timeout(300.0, connect=5.0))
            self._client = AnnaClient(url=self.url, token=load_token(), http=http)
        return self._client


def follow_run(
    client: AnnaClient, run_id: int, interval: float, *, echo: Callable[[str], None] = click.echo,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll a run until it finishes, printing a line whenever the run or one of its steps changes: at once
    for a new state, epoch, metric or message, and for progress within an epoch at most every
    ``PROGRESS_EVERY_S`` seconds per step (a step reports its share done about ten times an epoch).
    LightGBM's boosting rounds (``unit`` "round") are progress too: it reports every 50 of thousands."""
    shown: dict[str, tuple[tuple, str, float]] = {}  # step -> (milestone, line, when) last printed
    state_line = ""
    unreachable_since: float | None = None
    while True:
        try:
            run = client.get(f"/runs/{run_id}", not_found=f"run {run_id} is gone")
            unreachable_since = None
        except AnnaError as exc:
            # A restarting server (crash recovery) must not end the watch at once.
            if "cannot reach" not in exc.message:
                raise
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > 120:
                raise
            echo(f"lost contact with ANNA, retrying ... ({exc.message.split(' (')[0]})")
            time.sleep(max(interval, 1.0))
            continue
        line = run_state_line(run)
        if line != state_line and run["state"] not in FINISHED:
            echo(line)
            state_line = line
        for step in run.get("steps") or []:
            name, text = step.get("name", ""), step_line(step)
            # Pending steps are noise until seen running (a resumed run resets its unfinished ones).
            if step.get("state") == "pending" and name not in shown:
                continue
            counted = ("epoch", "metric") if step.get("unit") != "round" else ()
            milestone = tuple(step.get(k) for k in ("state", "message", *counted))
            last_milestone, last_text, last_when = shown.get(name, (None, "", -math.inf))
            if milestone != last_milestone or (text != last_text and clock() - last_when >= PROGRESS_EVERY_S):
                echo(f"  {text}")
                shown[name] = (milestone, text, clock())
        if run["state"] in FINISHED:
            return dict(run)
        time.sleep(interval)
