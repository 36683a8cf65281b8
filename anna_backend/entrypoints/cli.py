"""The ``anna`` command: a thin client over the REST API, plus the commands that work on this machine
(start the server or a worker, make demo data, pretrain: :mod:`.cli_local`).

The API client is in :mod:`.cli_client`, the text formatting in :mod:`.cli_format`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from anna_backend.entrypoints import cli_local
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


for _command in cli_local.COMMANDS:
    cli.add_command(_command)


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
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also save the report's plots (PNG) into this folder.")
@pass_env
def report(env: CliEnv, run_id: int, plots_dir: Path | None) -> None:
    """Key figures of a succeeded run: test metrics per domain and blended, lift by decile."""
    client = env.client()
    run = client.get(f"/runs/{run_id}", not_found=f"no run {run_id} — see `anna runs`")
    content = client.get(f"/runs/{run_id}/report", not_found=f"no report for run {run_id}")
    print_report(run_id, run, content)
    names = content.get("plots") or []
    if plots_dir is None:
        if names:
            click.echo(f"\nplots: {', '.join(names)} (`anna report {run_id} --plots DIR` saves them)")
        return
    plots_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        response = client.request("GET", f"/runs/{run_id}/plots/{name}",
                                  not_found=f"run {run_id} has no {name}")
        (plots_dir / name).write_bytes(response.content)
    click.echo(f"\n{len(names)} plot(s) saved to {plots_dir}: {', '.join(names)}" if names else
               f"\nrun {run_id} has no plots (it was trained before ANNA drew them)")


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
