"""The ``anna`` commands that work on this machine rather than through the REST API: start the server
(embedded or full mode) or a worker, generate demo data, pretrain a domain's encoder. ``cli`` adds them
to the ``anna`` group.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from anna_models.config import DEMO_CLIENTS


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Start ANNA's server (embedded mode: with its run queue and local runner)."""
    from anna_backend.entrypoints.serve import serve as run_server

    run_server(host, port)


@click.command()
def worker() -> None:
    """Full mode: take train requests from RabbitMQ and run them in Airflow (start one or more)."""
    from anna_backend.entrypoints.worker import run_worker

    sys.exit(run_worker())


@click.command("run-full")
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


@click.command("demo-data")
@click.option("--clients", default=DEMO_CLIENTS, show_default=True, type=click.IntRange(min=1))
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


@click.command()
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


COMMANDS = (serve, worker, run_full, demo_data, pretrain)
