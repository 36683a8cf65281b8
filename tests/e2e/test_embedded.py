"""The embedded mode end to end, as a user meets it: a real `anna serve`, real runs, real crashes."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Api, Server

pytestmark = pytest.mark.integration

ACTIVE = ("building", "running")
FINISHED = ("succeeded", "failed", "cancelled")


def samples_dir(server: Server) -> Path:
    return server.data_dir / "demo" / "samples"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def smallest_domain(api: Api) -> str:
    """The queue and crash tests are about runs, not models: one small domain keeps them cheap."""
    return str(min(api.get("/marts"), key=lambda m: m["n_events"])["name"])


def sample_for_domain(server: Server, domain: str, out: Path) -> Path:
    """default_12m.csv cut to the clients the domain's mart knows (a one-domain task rejects the others)."""
    import pandas as pd

    known = pd.concat(
        pd.read_parquet(part, columns=["client_id"])
        for part in (server.data_dir / "marts" / domain).glob("*.parquet")
    )["client_id"]
    sample = pd.read_csv(samples_dir(server) / "default_12m.csv")
    sample[sample["client_id"].isin(set(known))].to_csv(out, index=False)
    return out


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_train_report_and_score_end_to_end(api: Api, server: Server, tmp_path: Path) -> None:
    domains = sorted(m["name"] for m in api.get("/marts"))
    assert len(domains) == 3, f"the demo data should give three marts, got {domains}"
    task = api.create_task("e2e-default", domains=domains)
    assert sorted(task["domains"]) == domains and task["metric"] == "roc_auc"

    sample_file = samples_dir(server) / "default_12m.csv"
    sample = api.upload("e2e-default", sample_file)
    assert sample["n_rows"] == len(read_rows(sample_file))

    run = api.train("e2e-default")
    assert run["state"] in ("queued", "building", "running") and run["sample_id"] == sample["id"]
    final = api.wait_finished(run["id"], timeout=150)
    assert final["state"] == "succeeded", f"{final['error']}\n{server.log_tail()}"

    steps = {s["name"]: s for s in final["steps"]}
    for domain in domains:
        for kind in ("extract", "train"):
            assert f"{kind}.{domain}" in steps, f"no {kind} step for {domain}: {sorted(steps)}"
    assert {name for name, s in steps.items() if s["state"] != "succeeded"} == set()

    metrics = final["metrics"]
    assert 0.0 <= metrics["test"]["roc_auc"] <= 1.0
    assert sorted(metrics["domains"]) == domains

    report = api.get(f"/runs/{run['id']}/report")
    check_report(report, domains)

    score_file = samples_dir(server) / "default_12m_score.csv"
    expected = read_rows(score_file)
    with score_file.open("rb") as f:
        scored = api.post(f"/runs/{run['id']}/score", files={"file": (score_file.name, f)})
    assert scored["n_rows"] == len(expected) == len(scored["scores"])
    assert all(0.0 <= row["score"] <= 1.0 for row in scored["scores"])
    assert {str(r["client_id"]) for r in scored["scores"]} == {r["client_id"] for r in expected}
    assert 0.0 <= scored["metrics"]["roc_auc"] <= 1.0, "the score file has targets, so metrics are due"

    out = tmp_path / "scores.csv"
    done = server.cli(api.token, "score", "--run", str(run["id"]), str(score_file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    written = read_rows(out)
    assert len(written) == len(expected)
    assert all(0.0 <= float(row["score"]) <= 1.0 for row in written)
    assert "roc_auc" in done.stdout


def check_report(report: dict[str, Any], domains: list[str]) -> None:
    """The report has blended and per-domain test metrics and a ROC curve from (0, 0) to (1, 1)."""
    assert 0.0 <= report["blend"]["test"]["metrics"]["roc_auc"] <= 1.0
    for domain in domains:
        assert 0.0 <= report["domains"][domain]["test"]["metrics"]["roc_auc"] <= 1.0, domain
    roc = report["blend"]["test"]["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) >= 2
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert roc["fpr"] == sorted(roc["fpr"]) and roc["tpr"] == sorted(roc["tpr"])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_four_runs_queue_behind_two_slots(
    own_server: Server, make_api: Callable[[Server], Api], tmp_path: Path
) -> None:
    # A fresh installation: the first runs ever also set up the tracking store side by side.
    server = own_server
    server.start()
    api = make_api(server)
    domain = smallest_domain(api)
    api.create_task("e2e-queue", domains=[domain])
    api.upload("e2e-queue", sample_for_domain(server, domain, tmp_path / "sample.csv"))

    runs = 4  # twice the slots: two must wait, and each slot runs two in turn
    with ThreadPoolExecutor(max_workers=runs) as pool:
        submitted = list(pool.map(lambda seed: api.train("e2e-queue", seed=seed), range(runs)))
    ids = sorted(r["id"] for r in submitted)
    assert len(set(ids)) == runs

    saw_queued = False
    deadline = time.monotonic() + 200
    while True:
        listed = api.get("/runs")
        active = [r["id"] for r in listed if r["state"] in ACTIVE]
        assert len(active) <= 2, f"more than two runs at once: {active}"
        mine = [r for r in listed if r["id"] in ids]
        saw_queued = saw_queued or any(r["state"] == "queued" for r in mine)
        if all(r["state"] in FINISHED for r in mine):
            break
        assert time.monotonic() < deadline, f"runs did not finish: {[(r['id'], r['state']) for r in mine]}"
        time.sleep(0.3)

    outcomes = [(r["id"], r["state"], (r["error"] or "")[:300]) for r in mine]
    assert [r["state"] for r in mine] == ["succeeded"] * runs, f"{outcomes}\n{server.log_tail(40)}"
    assert saw_queued, "four runs with two slots: some must have waited"
    assert max_overlap(listed) == 2, "two slots: two runs should have run side by side"
    by_id = sorted(mine, key=lambda r: r["id"])
    starts = [when(r["started_at"]) for r in by_id]
    assert starts == sorted(starts), "queued runs start in submission order"


def max_overlap(runs: list[dict[str, Any]]) -> int:
    """The most runs whose [started_at, finished_at) intervals overlap at one instant."""
    events = []
    for run in runs:
        if run.get("started_at") and run.get("finished_at"):
            events.append((when(run["started_at"]), 1))
            events.append((when(run["finished_at"]), -1))
    events.sort(key=lambda e: (e[0], e[1]))  # at equal times a finish frees its slot before a start
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_run_survives_a_server_crash(
    own_server: Server, make_api: Callable[[Server], Api], tiny_params: dict[str, Any], tmp_path: Path
) -> None:
    server = own_server
    server.start()
    api = make_api(server)
    domain = smallest_domain(api)
    api.create_task("e2e-crash", domains=[domain])
    api.upload("e2e-crash", sample_for_domain(server, domain, tmp_path / "sample.csv"))
    run = api.train("e2e-crash", params={"default": {**tiny_params["default"], "max_epochs": 2}})

    deadline = time.monotonic() + 90
    while True:
        seen = api.get(f"/runs/{run['id']}")
        started = [
            s["name"]
            for s in seen["steps"]
            if s["name"].split(".")[0] in ("extract", "train") and s["state"] in ("running", "succeeded")
        ]
        if seen["state"] == "running" and started:
            break
        assert seen["state"] not in FINISHED, (
            f"the run ended before the crash: {seen['state']} {seen['error']}"
        )
        assert time.monotonic() < deadline, f"the run never reached a domain step: {seen}"
        time.sleep(0.1)

    first_attempt = server.driver_processes(run["id"])
    assert first_attempt, "a running run should have a driver process"
    server.kill9()
    api.close()

    server.start()
    api = make_api(server)
    final = api.wait_finished(run["id"], timeout=150)
    assert final["state"] == "succeeded", f"{final['error']}\n{server.log_tail()}"
    assert final["attempt"] == 2
    assert [r["id"] for r in api.get("/runs")] == [run["id"]], "the restart must not create runs"
    alive = server.still_alive(first_attempt)
    assert not alive, f"processes of the first attempt outlived the restart: {alive}"
    api.close()


def _without_column(rows: list[list[str]], column: str) -> list[list[str]]:
    i = rows[0].index(column)
    return [r[:i] + r[i + 1 :] for r in rows]


def _set_cell(rows: list[list[str]], row: int, column: str, value: str) -> list[list[str]]:
    rows = [list(r) for r in rows]
    rows[row][rows[0].index(column)] = value
    return rows


def _to_csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


# name -> (make the file from the good sample's rows, a word the messages must hold, the column they
# must name, the data row they must name)
BAD_SAMPLES: dict[str, tuple[Callable[[list[list[str]]], bytes], str, str | None, int | None]] = {
    "missing-column": (lambda rows: _to_csv(_without_column(rows, "target")), "missing", "target", None),
    "bad-date": (
        lambda rows: _to_csv(_set_cell(rows, 3, "report_date", "2024-13-45")),
        "date",
        "report_date",
        3,
    ),
    "duplicate-key": (lambda rows: _to_csv([*rows, rows[1]]), "duplicate", None, 1),
    "non-binary-target": (lambda rows: _to_csv(_set_cell(rows, 5, "target", "2")), "0 or 1", "target", 5),
    "empty-file": (lambda rows: b"", "empty", None, None),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLES))
def test_bad_samples_are_rejected_and_not_stored(api: Api, server: Server, tmp_path: Path, case: str) -> None:
    task = f"e2e-bad-{case}"
    api.create_task(task)
    with (samples_dir(server) / "default_12m.csv").open(newline="") as f:
        good = list(csv.reader(f))
    make, word, column, row = BAD_SAMPLES[case]
    bad = tmp_path / f"{case}.csv"
    bad.write_bytes(make(good))
    stored = server.data_dir / "samples"
    before = sorted(stored.iterdir()) if stored.exists() else []

    problems = api.upload(task, bad, status=422)["detail"]

    text = " | ".join(f"row={p.get('row')} column={p.get('column')} {p.get('msg')}" for p in problems)
    assert word in text.lower(), text
    if column is not None:
        assert any(p.get("column") == column or column in str(p.get("msg")) for p in problems), text
    if row is not None:
        # A duplicate may be reported at its first row or at the copy (data row len(good), the last).
        wanted = {row, len(good)} if case == "duplicate-key" else {row}
        assert wanted & {p.get("row") for p in problems}, text
    assert api.get(f"/tasks/{task}/samples") == []
    assert (sorted(stored.iterdir()) if stored.exists() else []) == before
