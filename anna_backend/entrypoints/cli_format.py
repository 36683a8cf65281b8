"""Text in and out of the ``anna`` command: ``KEY=VALUE`` parameters, durations, tables and run/step lines."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click


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
    unit = step.get("unit") or "epoch"  # LightGBM counts boosting rounds
    epoch, fraction = step.get("epoch") or 0, step.get("fraction")
    running = step.get("state") == "running"
    if step.get("max_epochs"):
        parts.append(f"{unit} {epoch}/{step['max_epochs']}")
    if step.get("metric") is not None:
        parts.append(f"{step.get('metric_name') or 'metric'}={format_value(step['metric'])}")
        # An encoder reports its metric when an epoch ends, so within the next one it is the last epoch's.
        if unit == "epoch" and running and fraction is not None and float(fraction) < 1 and epoch > 1:
            parts.append(f"after epoch {epoch - 1}")
    if fraction is not None and running:
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


def blended_metric(run: dict[str, Any], metric: str | None) -> str:
    """``roc_auc=0.7312`` for the task's metric on the blended test predictions; ``-`` before it exists."""
    test = (run.get("metrics") or {}).get("test") or {}
    if not test:
        return "-"
    name = metric if metric in test else next(iter(test))
    return f"{name}={format_value(test[name])}"


def format_created(value: str | None) -> str:
    parsed = parse_time(value)
    return parsed.astimezone().strftime("%Y-%m-%d %H:%M") if parsed else "-"


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


def leaderboard_table(content: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the report's leaderboard: every model and the blend, best valid metric first."""
    metric = content.get("metric") or "metric"
    rows = [[entry.get("model"), entry.get("kind"), entry.get("valid"), entry.get("test")]
            for entry in content.get("leaderboard") or []]
    return ["model", "kind", f"valid {metric}", f"test {metric}"], rows


def runs_table(listed: list[dict[str, Any]], metric_of: dict[Any, str]) -> str:
    """The ``anna runs`` table: one row per run with its blended test metric, creation time and duration."""
    rows = []
    for run in listed:
        rows.append(
            (
                run["id"],
                run.get("task_name") or run.get("task_id"),
                run["state"],
                run.get("attempt"),
                blended_metric(run, metric_of.get(run.get("task_id"))),
                format_created(run.get("created_at")),
                format_duration(run_duration(run)),
            )
        )
    return table(["id", "task", "state", "attempt", "test metric", "created", "duration"], rows)


def trials_tables(content: dict[str, Any]) -> list[str]:
    """One table per domain (and for the fusion model) of its AutoML trials (report.json's ``trials``),
    the chosen one marked."""
    metric = content.get("metric") or "metric"
    tables = []
    models = dict(content.get("domains") or {})
    if content.get("fusion"):
        models["fusion"] = content["fusion"]
    for model, entry in models.items():
        trials = entry.get("trials") or []
        cut = budget_note(entry.get("search") or {})
        if len(trials) < 2:
            if cut:  # the run's params alone used the budget: say so, or the user takes it for a search
                tables.append(f"AutoML search, {model}: only the run's params trained; {cut}")
            continue  # no search ran (budget 0): nothing to choose between
        rows = []
        for trial in trials:
            params = trial.get("params") or {}
            layers = params.get("layers", 1)
            depth = f"x{layers}" if layers > 1 else ""
            encoder = f"{params.get('architecture')} {params.get('hidden')}{depth}"
            seconds = f"{trial.get('seconds') or 0:.0f}"
            chosen = "chosen" if trial.get("chosen") else ""
            rows.append([trial.get("number"), encoder, trial.get("init"), trial.get("state"),
                         trial.get("epochs"), seconds, trial.get("best_valid_metric"), chosen])
        stopping = entry.get("stopping") or {"on": "valid"}
        on = "valid" if stopping["on"] == "valid" else "stopping rows"
        headers = ["trial", "encoder", "start", "state", "epochs", "seconds", f"{on} {metric}", ""]
        where = ("valid rows" if stopping["on"] == "valid" else
                 f"{stopping['rows']:,} stopping rows, {stopping['share']:.0%} of the train clients")
        note = f"\n{cut}" if cut else ""
        tables.append(f"AutoML trials, {model} (compared on {where})\n{table(headers, rows)}{note}")
    return tables


def budget_note(search: dict[str, Any]) -> str:
    """What the search's time budget left untried (report.json's ``search``), or "" if nothing."""
    skipped = search.get("skipped") or []
    if not skipped:
        return ""
    # Reports written before 2026-12-07 list "label: needs ~N s, M s left" strings.
    names = ", ".join(s["candidate"] if isinstance(s, dict) else str(s).split(":")[0] for s in skipped)
    return (f"{len(skipped)} candidate(s) not tried within the {search.get('budget_s', 0):.0f} s budget "
            f"({names}); raise search_budget_s to try them")


def print_report(run_id: int, run: dict[str, Any], content: dict[str, Any]) -> None:
    """Print ``anna report``: headline, split sizes, test metrics, lift by decile and the model."""
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
    header, rows = leaderboard_table(content)
    if rows:
        choice = (content.get("blender") or {}).get("choice") or {}
        inputs = ", ".join(choice.get("inputs") or [])
        kept = f"; the blender reads {inputs}" if choice.get("kind") == "single" else ""
        click.echo(f"\nleaderboard (best valid first; the blend's valid is cross-validated{kept})")
        click.echo(table(header, rows))
    calibration = ((content.get("blend") or {}).get("test") or {}).get("calibration") or {}
    if calibration.get("ece") is not None:
        click.echo(f"\ncalibration (blended, test): expected calibration error {calibration['ece']:.4f} "
                   f"over {len(calibration.get('bins') or [])} probability bins")
    lift = ((content.get("blend") or {}).get("test") or {}).get("lift") or []
    if lift:
        click.echo("\nlift by decile (blended, test; decile 1 = highest scores)")
        click.echo(
            table(
                ["decile", "rows", "rate", "lift"],
                [[r.get(k) for k in ("decile", "rows", "rate", "lift")] for r in lift],
            )
        )
    for trials in trials_tables(content):
        click.echo(f"\n{trials}")
    if run.get("model_uri"):
        click.echo(f"\nmodel: {run['model_uri']}")
