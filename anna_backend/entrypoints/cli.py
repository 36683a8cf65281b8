"""The ``anna`` command: starts the embedded server, makes demo data, and is a thin client over the REST API.

The commands live here; the API client is in :mod:`.cli_client`, the text formatting in :mod:`.cli_format`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from anna_backend.entrypoints.cli_client import DEFAULT_URL, CliEnv, follow_run, save_token
from anna_backend.entrypoints.cli_format import (
    format_duration,
    format_metrics,
    parse_params,
    print_report,
    print_run_metrics,
    run_duration,
    run_state_line,
    runs_table,
    table,
)

EXIT_RUN_NOT_SUCCEEDED = 1


pass_env = click.make_pass_decorator(CliEnv)


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
    """Start ANNA's server (embedded mode: with its run queue and local runner)."""
    from anna_backend.entrypoints.serve import serve as run_server

    run_server(host, port)


@cli.command()
def worker() -> None:
    """Full mode: take train requests from RabbitMQ and run them in Airflow (start one or more)."""
    from anna_backend.entrypoints.worker import run_worker

    sys.exit(run_worker())


@cli.command("run-full")
@click.option("--port", default=8000, show_default=True, type=int, envvar="PORT")
@click.option("--airflow-port", default=8080, show_default=True, type=int, envvar="AIRFLOW_PORT")
@click.option("--mlflow-port", default=5000, show_default=True, type=int, envvar="MLFLOW_PORT")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--postgres-url", envvar="ANNA_FULL_POSTGRES_URL", show_default=True,
              default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
              help="A PostgreSQL server's maintenance database; ANNA creates its databases beside it.")
def run_full(port: int, airflow_port: int, mlflow_port: int, workers: int, postgres_url: str) -> None:
    """Full mode on this machine: PostgreSQL, RabbitMQ, Airflow 3 and an MLflow server, then ANNA."""
    from anna_backend.entrypoints.full import FullOptions
    from anna_backend.entrypoints.full import run_full as start_all
    from anna_backend.settings import get_settings

    settings = get_settings()
    options = FullOptions(data_dir=settings.data_dir, postgres_url=postgres_url,
                          rabbitmq_url=settings.rabbitmq_url, port=port, airflow_port=airflow_port,
                          mlflow_port=mlflow_port, workers=workers,
                          max_concurrent_runs=settings.max_concurrent_runs)
    sys.exit(start_all(options))


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
@click.option("--domain", required=True, help="A mart under the marts root, or a unique prefix (card).")
@click.option("--before", help="Cutoff date: only events strictly before it are used. Default: the "
              "first day of the month in the middle of the mart's span. Runs whose report dates all "
              "fall on or after it may start from the encoder.")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(min=1))  # ColesParams.epochs
@click.option("--clients", type=click.IntRange(min=2), help="Use this many random clients (default: all).")
@click.option("--architecture", default="gru", show_default=True,
              type=click.Choice(["gru", "lstm", "transformer"]))
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(min=4))
@click.option("--layers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-len", type=click.IntRange(min=1), help="Events per client (default: the mart's).")
def pretrain(domain: str, before: str | None, epochs: int, clients: int | None, architecture: str,
             hidden: int, layers: int, max_len: int | None) -> None:
    """Pretrain a domain's encoder (contrastive, CoLES-style) and register it as pretrained-<domain>."""
    from anna_backend.entrypoints.pipeline_driver import tracking_store_turn
    from anna_backend.settings import get_settings
    from anna_models.coles import ColesParams
    from anna_models.marts import read_manifest
    from anna_models.pretrain import log_encoder, pretrain_domain

    settings = get_settings()
    marts = sorted(p.parent.name for p in settings.marts_dir.glob("*/manifest.json"))
    matches = [m for m in marts if m == domain] or [m for m in marts if m.startswith(domain)]
    if len(matches) != 1:
        known = ", ".join(marts) or f"none (no marts under {settings.marts_dir})"
        raise click.BadParameter(f"{domain!r} names {len(matches)} marts; known: {known}",
                                 param_hint="--domain")
    mart_path = settings.marts_dir / matches[0]
    manifest = read_manifest(mart_path)
    params = ColesParams(architecture=architecture, hidden=hidden, layers=layers, epochs=epochs,
                         max_len=max_len)
    started = time.monotonic()

    def progress(epoch: int, max_epochs: int, fraction: float, metric: float | None = None, **_: Any) -> None:
        if metric is not None:
            click.echo(f"  epoch {epoch}/{max_epochs}: contrastive loss {metric:.4f} "
                       f"({time.monotonic() - started:.0f} s)")

    click.echo(f"pretraining {matches[0]} ({manifest.get('n_clients', '?'):,} clients in the mart) ...")
    try:
        encoder, history = pretrain_domain(mart_path, before=before, params=params, clients=clients,
                                           progress=progress)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    with tracking_store_turn(settings, settings.tracking_uri):
        encoder = log_encoder(encoder, settings.tracking_uri)
    click.echo(f"registered {encoder.name} (events before {encoder.cutoff}; view accuracy "
               f"{history[-1]['accuracy']:.2f}) in {time.monotonic() - started:.0f} s")
    click.echo(f"runs whose earliest report date is on or after {encoder.cutoff} can start from it")


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
    "--domain-param", "domain_params", multiple=True, metavar="DOMAIN.KEY=VALUE",
    help="For one domain, or for the fusion or LightGBM model (fusion.hidden=16, lightgbm.num_leaves=7)."
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
    click.echo(runs_table(listed, metric_of))


@cli.command()
@click.argument("run_id", type=int)
@pass_env
def report(env: CliEnv, run_id: int) -> None:
    """Key figures of a succeeded run: test metrics per domain and blended, lift by decile."""
    client = env.client()
    run = client.get(f"/runs/{run_id}", not_found=f"no run {run_id} — see `anna runs`")
    content = client.get(f"/runs/{run_id}/report", not_found=f"no report for run {run_id}")
    print_report(run_id, run, content)


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
