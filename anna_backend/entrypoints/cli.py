"""The ``anna`` command: starts the embedded server, makes demo data, and is a thin client over the REST API.

Every API call goes through :class:`AnnaClient`, which turns HTTP failures into one line naming what to fix.
Tests hand in their own ``httpx.Client`` (for example FastAPI's ``TestClient``) through ``CliEnv``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")
EXIT_RUN_NOT_SUCCEEDED = 1


# ---------------------------------------------------------------------------------------------- API client


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


pass_env = click.make_pass_decorator(CliEnv)


# ---------------------------------------------------------------------------------------------- formatting


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def run_duration(run: dict[str, Any], now: datetime | None = None) -> float | None:
    started = parse_time(run.get("started_at"))
    if started is None:
        return None
    finished = parse_time(run.get("finished_at")) or now or datetime.now(UTC)
    return (finished - started).total_seconds()


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)


def format_metrics(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    return "  ".join(f"{k}={format_value(v)}" for k, v in metrics.items() if not isinstance(v, dict | list))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain left-aligned text table."""
    cells = [list(headers)] + [[format_value(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """``8`` -> 8, ``0.1`` -> 0.1, ``true`` -> True, ``gru`` -> "gru" (JSON when it parses, else a string)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(params: Sequence[str], domain_params: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` into ``{"default": {...}}`` and ``DOMAIN.KEY=VALUE`` into ``{DOMAIN: {...}}``."""
    merged: dict[str, dict[str, Any]] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. max_epochs=5)", param_hint="--param")
        merged.setdefault("default", {})[key.strip()] = parse_value(value.strip())
    for item in domain_params:
        target, sep, value = item.partition("=")
        domain, dot, key = target.strip().rpartition(".")
        if not sep or not dot or not domain or not key:
            raise click.BadParameter(
                f"{item!r} is not DOMAIN.KEY=VALUE (e.g. card_transactions.hidden=32)",
                param_hint="--domain-param",
            )
        merged.setdefault(domain, {})[key] = parse_value(value.strip())
    return merged


def step_line(step: dict[str, Any]) -> str:
    """One compact line per pipeline step: name, state, epoch, metric, progress, message."""
    parts = [f"{step.get('name', '?'):<32}", f"{step.get('state', '?'):<9}"]
    if step.get("max_epochs"):
        parts.append(f"epoch {step.get('epoch') or 0}/{step['max_epochs']}")
    if step.get("metric") is not None:
        parts.append(f"{step.get('metric_name') or 'metric'}={format_value(step['metric'])}")
    fraction = step.get("fraction")
    if fraction is not None and step.get("state") == "running":
        parts.append(f"{100 * float(fraction):.0f}%")
    if step.get("message"):
        parts.append(str(step["message"]))
    return "  ".join(parts).rstrip()


def run_state_line(run: dict[str, Any]) -> str:
    line = f"run {run['id']} ({run.get('task_name') or run.get('task_id')}): {run['state']}"
    if run["state"] == "queued" and run.get("queue_position") is not None:
        line += f", position {run['queue_position']} in the queue"
    if (run.get("attempt") or 1) > 1:
        line += f", attempt {run['attempt']}"
    return line


def print_run_metrics(run: dict[str, Any]) -> None:
    metrics = run.get("metrics") or {}
    click.echo(f"blended test: {format_metrics(metrics.get('test'))}")
    for domain, values in sorted((metrics.get("domains") or {}).items()):
        test = values.get("test", values) if isinstance(values, dict) else values
        click.echo(f"  {domain:<24} {format_metrics(test)}")


# ---------------------------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="ANNA_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="ANNA's address (also ANNA_URL).",
)
@click.pass_context
def cli(ctx: click.Context, url: str) -> None:
    """ANNA: AutoML for neural networks on banks' sequential client data."""
    env = ctx.obj if isinstance(ctx.obj, CliEnv) else CliEnv()
    env.url = url.rstrip("/")
    ctx.obj = env


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Start ANNA (API, run queue and local runner) on this machine."""
    from anna_backend.entrypoints.serve import serve as run_server

    run_server(host, port)


PROGRESS_STEPS = 1000


@cli.command("demo-data")
@click.option("--clients", default=20000, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("ANNA_DATA_DIR", "data"),
    show_default="ANNA_DATA_DIR or ./data",
)
def demo_data(clients: int, seed: int, data_dir: Path) -> None:
    """Generate synthetic marts and example samples into the data directory."""
    from anna_models.demo_data import generate_demo

    started = time.monotonic()
    with click.progressbar(length=PROGRESS_STEPS, label="generating", file=sys.stderr) as bar:
        done = 0

        def progress(fraction: float, message: str) -> None:
            nonlocal done
            bar.label = message
            target = int(max(0.0, min(1.0, fraction)) * PROGRESS_STEPS)
            bar.update(max(0, target - done))
            done = max(done, target)

        result = generate_demo(data_dir, clients=clients, seed=seed, progress=progress)
        bar.update(PROGRESS_STEPS - done)
    seconds = time.monotonic() - started
    click.echo(f"demo data for {clients:,} clients (seed {seed}) written to {data_dir} in {seconds:.1f} s")
    events: dict[str, int] = result.get("events") or {}
    for name, n_events in sorted(events.items()):
        click.echo(f"  {name:<24} {n_events:>12,} events")
    click.echo(f"  {'all domains':<24} {sum(events.values()):>12,} events")
    samples = Path(result.get("paths", {}).get("samples") or data_dir / "demo" / "samples")
    click.echo(f"samples: {', '.join(sorted(p.name for p in samples.glob('*.csv')))} in {samples}")
    click.echo("next: `anna serve`, then `anna login` and `anna sample upload --task NAME FILE`")


@cli.command()
@click.option("--user", "username", required=True, help="User name, e.g. admin.")
@click.option("--password", help="The password (visible in your shell history; prefer --password-file).")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_env
def login(env: CliEnv, username: str, password: str | None, password_file: Path | None) -> None:
    """Log in and save the token for the next commands."""
    if password is not None and password_file is not None:
        raise click.UsageError("give --password or --password-file, not both")
    if password_file is not None:
        password = password_file.read_text().rstrip("\r\n")
    if password is None:
        password = click.prompt("password", hide_input=True)
    answer = env.client().post("/auth/token", json={"username": username, "password": password}, auth=False)
    path = save_token(answer["access_token"])
    expires = f", valid until {answer['expires_at']}" if answer.get("expires_at") else ""
    click.echo(f"logged in to {env.url} as {username}{expires}; token saved to {path}")


@cli.group()
def task() -> None:
    """Create and list tasks."""


@task.command("create")
@click.option("--name", required=True, help="Slug: lower-case letters, digits, _ and -.")
@click.option("--type", "task_type", required=True, type=click.Choice(["binary", "multiclass", "regression"]))
@click.option("--metric", help="Default: roc_auc (binary), log_loss (multiclass), rmse (regression).")
@click.option("--domains", help="Comma-separated data domains; default: all marts.")
@click.option("--description")
@pass_env
def task_create(
    env: CliEnv, name: str, task_type: str, metric: str | None, domains: str | None, description: str | None
) -> None:
    """Create a task."""
    body: dict[str, Any] = {"name": name, "task_type": task_type}
    if metric:
        body["metric"] = metric
    if domains:
        body["domains"] = [d.strip() for d in domains.split(",") if d.strip()]
    if description:
        body["description"] = description
    created = env.client().post("/tasks", json=body, invalid=f"task {name!r} was not created")
    click.echo(
        f"task {created['name']} (id {created['id']}): {created['task_type']}, metric {created['metric']}, "
        f"domains {', '.join(created.get('domains') or [])}"
    )


@task.command("list")
@pass_env
def task_list(env: CliEnv) -> None:
    """List tasks."""
    tasks = env.client().get("/tasks")
    if not tasks:
        click.echo("no tasks yet — `anna task create --name NAME --type binary`")
        return
    rows = [
        (
            t["id"],
            t["name"],
            t["task_type"],
            t["metric"],
            ",".join(t.get("domains") or []),
            t.get("created_by"),
        )
        for t in tasks
    ]
    click.echo(table(["id", "name", "type", "metric", "domains", "created by"], rows))


@cli.group()
def sample() -> None:
    """Upload samples."""


@sample.command("upload")
@click.option("--task", "task_ref", required=True, help="Task name or id.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_env
def sample_upload(env: CliEnv, task_ref: str, file: Path) -> None:
    """Upload a sample (CSV or Parquet with client_id, report_date, target)."""
    with file.open("rb") as f:
        created = env.client().post(
            f"/tasks/{task_ref}/samples",
            files={"file": (file.name, f)},
            not_found=f"no task {task_ref!r} — see `anna task list`",
            invalid=f"{file.name} was rejected, nothing was stored",
        )
    click.echo(
        f"sample {created['id']} stored for task {task_ref}: {created['n_rows']:,} rows, "
        f"{created['n_clients']:,} clients, report dates {created['report_date_min']} .. "
        f"{created['report_date_max']}"
    )
    summary = created.get("target_summary") or {}
    if summary:
        click.echo(f"target: {format_metrics(summary) if isinstance(summary, dict) else summary}")
    click.echo(f"fingerprint {created['fingerprint']}; next: `anna train --task {task_ref} --wait`")


@cli.command()
@click.option("--task", "task_ref", required=True, help="Task name or id.")
@click.option("--sample", "sample_id", type=int, help="Sample id; default: the task's latest sample.")
@click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE", help="For every domain, e.g. max_epochs=5."
)
@click.option(
    "--domain-param", "domain_params", multiple=True, metavar="DOMAIN.KEY=VALUE", help="For one domain."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--wait", is_flag=True, help="Follow the run until it finishes; exit 0 only if it succeeded.")
@pass_env
def train(
    env: CliEnv,
    task_ref: str,
    sample_id: int | None,
    params: tuple[str, ...],
    domain_params: tuple[str, ...],
    seed: int,
    wait: bool,
) -> None:
    """Start a training run."""
    body: dict[str, Any] = {"seed": seed}
    merged = parse_params(params, domain_params)
    if merged:
        body["params"] = merged
    if sample_id is not None:
        body["sample_id"] = sample_id
    client = env.client()
    run = client.post(
        f"/tasks/{task_ref}/runs",
        json=body,
        not_found=f"no task {task_ref!r} or no such sample — see `anna task list`",
        invalid="the run was not started",
    )
    if not wait:
        click.echo(f"{run_state_line(run)} — follow it with `anna runs --task {task_ref}`")
        return
    try:
        final = follow_run(client, run["id"], env.poll_interval)
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped following run {run['id']}; it goes on — `anna runs --task {task_ref}`", err=True
        )
        sys.exit(130)
    if final["state"] != "succeeded":
        click.echo(f"run {final['id']} {final['state']}: {final.get('error') or 'no reason given'}", err=True)
        sys.exit(EXIT_RUN_NOT_SUCCEEDED)
    click.echo(f"run {final['id']} succeeded in {format_duration(run_duration(final))}")
    print_run_metrics(final)


def follow_run(
    client: AnnaClient, run_id: int, interval: float, *, echo: Callable[[str], None] = click.echo
) -> dict[str, Any]:
    """Poll a run until it finishes, printing a line whenever the run or one of its steps changes."""
    shown: dict[str, str] = {}
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
            if shown.get(name) != text and (step.get("state") != "pending" or name in shown):
                echo(f"  {text}")
                shown[name] = text
        if run["state"] in FINISHED:
            return dict(run)
        time.sleep(interval)


@cli.command()
@click.option("--task", "task_ref", help="Only this task's runs (name or id).")
@click.option(
    "--state", type=click.Choice(["queued", "building", "running", "succeeded", "failed", "cancelled"])
)
@pass_env
def runs(env: CliEnv, task_ref: str | None, state: str | None) -> None:
    """List runs, newest first."""
    client = env.client()
    query = {k: v for k, v in {"task": task_ref, "state": state}.items() if v}
    listed = client.get("/runs", params=query, not_found=f"no task {task_ref!r} — see `anna task list`")
    if not listed:
        click.echo("no runs yet — `anna train --task NAME --wait`")
        return
    metric_of = {t["id"]: t["metric"] for t in client.get("/tasks")}
    rows = []
    for run in listed:
        rows.append(
            (
                run["id"],
                run.get("task_name") or run.get("task_id"),
                run["state"],
                run.get("attempt"),
                blended_metric(run, metric_of.get(run.get("task_id"))),
                _format_created(run.get("created_at")),
                format_duration(run_duration(run)),
            )
        )
    click.echo(table(["id", "task", "state", "attempt", "test metric", "created", "duration"], rows))


def blended_metric(run: dict[str, Any], metric: str | None) -> str:
    """``roc_auc=0.7312`` for the task's metric on the blended test predictions; ``-`` before it exists."""
    test = (run.get("metrics") or {}).get("test") or {}
    if not test:
        return "-"
    name = metric if metric in test else next(iter(test))
    return f"{name}={format_value(test[name])}"


def _format_created(value: str | None) -> str:
    parsed = parse_time(value)
    return parsed.astimezone().strftime("%Y-%m-%d %H:%M") if parsed else "-"


@cli.command()
@click.argument("run_id", type=int)
@pass_env
def report(env: CliEnv, run_id: int) -> None:
    """Key figures of a succeeded run: test metrics per domain and blended, lift by decile."""
    client = env.client()
    run = client.get(f"/runs/{run_id}", not_found=f"no run {run_id} — see `anna runs`")
    content = client.get(f"/runs/{run_id}/report", not_found=f"no report for run {run_id}")
    kind = f"{content.get('task_type')}, metric {content.get('metric')}"
    click.echo(
        f"run {run_id}, task {run.get('task_name')} ({kind}): {run['state']}, attempt {run.get('attempt')}, "
        f"took {format_duration(run_duration(run))}"
    )
    split = content.get("split") or {}
    parts = split.get("parts") or {}
    if parts:
        sizes = ", ".join(
            f"{name} {p.get('rows')} rows ({p.get('date_min')} .. {p.get('date_max')})"
            for name, p in parts.items()
        )
        click.echo(f"split: {split.get('kind')}; {sizes}")
    header, rows = report_metric_table(content)
    click.echo("\ntest metrics")
    click.echo(table(header, rows))
    lift = ((content.get("blend") or {}).get("test") or {}).get("lift") or []
    if lift:
        click.echo("\nlift by decile (blended, test; decile 1 = highest scores)")
        click.echo(
            table(
                ["decile", "rows", "rate", "lift"],
                [[r.get(k) for k in ("decile", "rows", "rate", "lift")] for r in lift],
            )
        )
    if run.get("model_uri"):
        click.echo(f"\nmodel: {run['model_uri']}")


def report_metric_table(content: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (blended first, then each domain) of the report's test metrics and coverage."""
    blended = (content.get("blend") or {}).get("test") or {}
    domains = content.get("domains") or {}
    names = list((blended.get("metrics") or {}).keys())
    for entry in domains.values():
        names += [n for n in ((entry.get("test") or {}).get("metrics") or {}) if n not in names]
    rows = [["blended", blended.get("rows"), *[(blended.get("metrics") or {}).get(n) for n in names], None]]
    for domain, entry in domains.items():
        test = entry.get("test") or {}
        metrics = test.get("metrics") or {}
        coverage = test.get("coverage")
        rows.append(
            [
                domain,
                test.get("rows"),
                *[metrics.get(n) for n in names],
                None if coverage is None else f"{coverage:.0%}",
            ]
        )
    return ["model", "rows", *names, "coverage"], rows


@cli.command()
@click.option("--run", "run_id", required=True, type=int)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write all scores here (CSV).")
@pass_env
def score(env: CliEnv, run_id: int, file: Path, out: Path | None) -> None:
    """Score a sample with a run's model (retro-inference); prints metrics when the file has targets."""
    with file.open("rb") as f:
        response = env.client().request(
            "POST",
            f"/runs/{run_id}/score",
            params={"format": "csv"},
            files={"file": (file.name, f)},
            not_found=f"no run {run_id} — see `anna runs`",
            invalid=f"{file.name} could not be scored",
        )
    text = response.text
    lines = text.splitlines()
    n_rows = max(0, len(lines) - 1)
    if out is not None:
        out.write_text(text)
        click.echo(f"{n_rows:,} scores written to {out}")
    else:
        click.echo("\n".join(lines[:11]))
        if n_rows > 10:
            click.echo(f"... {n_rows:,} rows in all; --out FILE writes them all")
    # CSV answers carry the metrics (present when the file had a target) in a header.
    metrics = json.loads(response.headers.get("X-Anna-Metrics") or "null")
    if metrics:
        click.echo(f"metrics on {file.name}: {format_metrics(metrics)}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``anna``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="anna", obj=CliEnv())


if __name__ == "__main__":
    main()
