"""The real LocalRunner and pipeline driver (driver process, domain process pool, progress in SQLite),
over a fake pipeline module that trains nothing."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_fakes import HERE, FakeMartCatalog, FakeScorer, seed_runs, states, wait_for

from anna_backend.bootstrap import Wiring, bootstrap
from anna_backend.domain.model import Run, StepState
from anna_backend.service_layer import runs
from anna_backend.service_layer.ports import Backend
from anna_backend.settings import Settings

DOMAINS = ("cards", "accounts")
STEPS = [
    "validate_split",
    "extract.cards",
    "train.cards",
    "extract.accounts",
    "train.accounts",
    "blend",
    "evaluate",
    "register",
]


@pytest.fixture
def local(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wiring]:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    settings = settings.model_copy(
        update={"pipeline_module": "anna_backend_fake_pipeline", "progress_interval_s": 0.0}
    )
    wired = bootstrap(settings, marts=FakeMartCatalog(), scorer=FakeScorer())  # the real LocalRunner
    yield wired
    wired.close()


def run_of(backend: Backend, run_id: int) -> Run:
    return runs.get_run(backend, run_id).run


def finished(backend: Backend, run_id: int) -> bool:
    return run_of(backend, run_id).is_finished


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def open_files() -> set[str]:
    """The paths this process holds open."""
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed since listdir
            pass
    return paths


def test_a_run_goes_through_driver_and_domain_processes(local: Wiring) -> None:
    backend = local.backend
    [run_id] = seed_runs(backend, 1, domains=DOMAINS)
    local.dispatcher.start()
    wait_for(lambda: finished(backend, run_id), timeout=60)
    run = run_of(backend, run_id)
    log = (backend.settings.runs_dir / str(run_id) / "driver.log").read_text()
    assert run.state.value == "succeeded", f"{run.error}\n{log}"
    assert [s.name for s in run.steps] == STEPS
    assert all(s.state is StepState.SUCCEEDED and s.finished_at for s in run.steps)
    train = run.step("train.accounts")
    assert train is not None and (train.epoch, train.max_epochs, train.metric_name) == (2, 2, "roc_auc")
    assert run.metrics == {
        "test": {"roc_auc": 0.71, "log_loss": 0.5},
        "domains": {"cards": {"roc_auc": 0.6}, "accounts": {"roc_auc": 0.6}},
    }
    assert run.model_uri == "models:/churn/1" and run.pid is not None
    assert "--- attempt 1 ---" in log


def test_a_failing_step_fails_the_run_naming_step_and_error(
    local: Wiring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PIPELINE_FAIL", "train.accounts")
    backend = local.backend
    [run_id] = seed_runs(backend, 1, domains=DOMAINS)
    local.dispatcher.start()
    wait_for(lambda: finished(backend, run_id), timeout=60)
    run = run_of(backend, run_id)
    assert run.state.value == "failed"
    assert run.error == "step train.accounts failed: ValueError: train.accounts was told to fail"
    step = run.step("train.accounts")
    assert step is not None and step.state is StepState.FAILED and "told to fail" in (step.message or "")
    assert run.step("blend").state is StepState.PENDING  # type: ignore[union-attr]


def test_a_crashing_driver_fails_the_run_with_its_log(local: Wiring, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_PIPELINE_CRASH", "blend")
    backend = local.backend
    [run_id] = seed_runs(backend, 1, domains=("cards",))
    local.dispatcher.start()
    wait_for(lambda: finished(backend, run_id), timeout=60)
    run = run_of(backend, run_id)
    assert run.state.value == "failed"
    assert "exited with code 3" in (run.error or "") and "attempt 1" in (run.error or "")


def test_cancel_kills_the_driver_and_its_domain_processes(
    local: Wiring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("FAKE_PIPELINE_PIDS", str(pids))
    monkeypatch.setenv("FAKE_PIPELINE_SLEEP", "60")
    backend = local.backend
    [run_id] = seed_runs(backend, 1, domains=DOMAINS)
    local.dispatcher.start()
    wait_for(lambda: all((pids / f"train.{d}.pid").exists() for d in DOMAINS), timeout=60)
    workers = [int((pids / f"train.{d}.pid").read_text()) for d in DOMAINS]
    driver = run_of(backend, run_id).pid
    assert driver is not None and alive(driver) and all(alive(p) for p in workers)
    # `anna serve` runs for months: a running driver's log holds no descriptor in the server.
    log_path = (backend.settings.runs_dir / str(run_id) / "driver.log").resolve()
    assert "--- attempt 1 ---" in log_path.read_text()
    assert str(log_path) not in open_files()

    with backend.uow() as uow:
        user = uow.users.get_by_username("alice")
    assert user is not None
    assert runs.cancel_run(backend, user=user, run_id=run_id).run.state.value == "cancelled"
    wait_for(lambda: not alive(driver) and not any(alive(p) for p in workers), timeout=10)
    time.sleep(0.2)  # the dispatcher reaps the driver; the run must stay cancelled
    assert states(backend)[run_id] == "cancelled"


def test_drivers_take_turns_writing_the_local_tracking_store(settings: Settings) -> None:
    from anna_backend.entrypoints.pipeline_driver import tracking_store_turn

    inside: list[tuple[str, float, float]] = []

    def register(name: str) -> None:
        with tracking_store_turn(settings, settings.tracking_uri):
            entered = time.monotonic()
            time.sleep(0.2)
            inside.append((name, entered, time.monotonic()))

    threads = [threading.Thread(target=register, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (_, _, first_left), (_, second_entered, _) = sorted(inside, key=lambda x: x[1])
    assert second_entered >= first_left
    with tracking_store_turn(settings, "http://mlflow:5000"):  # a server needs no turn
        pass
