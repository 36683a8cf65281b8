"""Crash recovery and the attempt guard: runs a dead server left run once more; stale drivers are mute."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from backend_fakes import FakeMartCatalog, FakeRunner, FakeScorer, seed_runs, states, wait_for

from anna_backend.adapters.local_runner import LocalRunner
from anna_backend.bootstrap import Wiring, bootstrap
from anna_backend.domain.model import RunState, RunStep, StepState, utcnow
from anna_backend.entrypoints.pipeline_driver import ProgressReporter, RunAbandoned
from anna_backend.service_layer.ports import Backend, Runner
from anna_backend.service_layer.run_progress import fail_run, finish_run, record_progress
from anna_backend.settings import Settings

pytestmark = pytest.mark.all_databases


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def leave_running(backend: Backend, run_id: int, pid: int | None) -> None:
    """What a crashed server leaves: a claimed, running run with one finished and one interrupted step."""
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
        assert run is not None
        run.transition(RunState.BUILDING)
        run.start(pid)
        run.steps = [
            RunStep("validate_split", 0, StepState.SUCCEEDED, finished_at=utcnow()),
            RunStep("train.cards", 1, StepState.RUNNING, epoch=2, max_epochs=5),
        ]
        uow.runs.save(run)
        uow.commit()


def restart(settings: Settings, runner: Runner) -> Wiring:
    """A new server process over the same data dir."""
    wired = bootstrap(settings, runner=runner, marts=FakeMartCatalog(), scorer=FakeScorer())
    if isinstance(runner, FakeRunner):
        runner.backend = wired.backend
    return wired


@pytest.fixture
def new_server(settings: Settings) -> Iterator[tuple[Wiring, FakeRunner]]:
    runner = FakeRunner()
    wired = restart(settings, runner)
    yield wired, runner
    wired.close()


def test_runs_with_a_dead_driver_are_requeued_and_complete_once(
    wiring: Wiring, new_server: tuple[Wiring, FakeRunner]
) -> None:
    old = wiring.backend
    first, second, third = seed_runs(old, 3)
    leave_running(old, first, dead_pid())
    leave_running(old, second, None)  # crashed between claiming and recording the pid
    wiring.close()

    server, runner = new_server
    assert sorted(server.dispatcher.recover()) == [first, second]
    with server.backend.uow() as uow:
        run = uow.runs.get(first)
    assert run is not None and run.state is RunState.QUEUED and run.attempt == 2 and run.pid is None
    assert [(s.name, s.state) for s in run.steps] == [
        ("validate_split", StepState.SUCCEEDED),
        ("train.cards", StepState.PENDING),
    ]

    server.dispatcher.start()
    wait_for(lambda: set(states(server.backend).values()) == {"succeeded"})
    assert sorted(runner.started) == [(first, 2), (second, 2), (third, 1)]  # each exactly once
    assert server.dispatcher.recover() == []  # nothing left behind twice


def test_a_live_driver_of_the_previous_server_is_killed_before_requeueing(
    wiring: Wiring, settings: Settings
) -> None:
    old = wiring.backend
    first, second = seed_runs(old, 2)
    # A process that looks like the driver of `first` (its argv names the module and the run id) ...
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(60)",
            "anna_backend.entrypoints.pipeline_driver",
            "--run-id",
            str(first),
        ],
        start_new_session=True,
    )
    # ... and an unrelated process that happens to have the pid recorded for `second`.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        leave_running(old, first, driver.pid)
        leave_running(old, second, stranger.pid)
        wiring.close()
        server = restart(settings, LocalRunner(settings))
        try:
            assert sorted(server.dispatcher.recover()) == [first, second]
        finally:
            server.close()
        assert driver.wait(timeout=10) == -9
        assert stranger.poll() is None  # never kill what is not our driver
        assert states(server.backend) == {first: "queued", second: "queued"}
    finally:
        for process in (driver, stranger):
            process.kill()
            process.wait()


def test_a_stale_driver_cannot_overwrite_a_newer_attempt(wiring: Wiring) -> None:
    backend = wiring.backend
    [run_id] = seed_runs(backend, 1)
    leave_running(backend, run_id, dead_pid())
    wiring.dispatcher.recover()  # attempt 2 is queued
    backend.runner = FakeRunner(auto_run=False)
    wiring.dispatcher.tick()  # attempt 2 is running
    assert states(backend)[run_id] == "running"

    assert not record_progress(backend, run_id=run_id, attempt=1, step="train.cards", fields={"epoch": 9})
    assert not finish_run(
        backend, run_id=run_id, attempt=1, metrics={"test": {}}, model_uri="models:/stale/1"
    )
    assert not fail_run(backend, run_id=run_id, attempt=1, error="stale")
    reporter = ProgressReporter(backend, run_id, attempt=1, interval_s=0)
    with pytest.raises(RunAbandoned):
        reporter("train.cards", state="running", epoch=9)

    with backend.uow() as uow:
        run = uow.runs.get(run_id)
    assert run is not None and run.state is RunState.RUNNING and run.attempt == 2
    assert run.model_uri is None and run.error is None
    assert run.step("train.cards") is not None and run.step("train.cards").epoch != 9  # type: ignore[union-attr]

    assert record_progress(backend, run_id=run_id, attempt=2, step="train.cards", fields={"epoch": 1})
    assert finish_run(backend, run_id=run_id, attempt=2, metrics={"test": {}}, model_uri="models:/fresh/1")
    assert states(backend)[run_id] == "succeeded"


def test_a_cancelled_run_stays_cancelled_whatever_its_driver_writes(
    wiring: Wiring, runner: FakeRunner
) -> None:
    backend = wiring.backend
    runner.auto_run = False
    [run_id] = seed_runs(backend, 1)
    wiring.dispatcher.tick()
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
        assert run is not None
        run.cancel()
        uow.runs.save(run)
        uow.commit()
    assert not finish_run(backend, run_id=run_id, attempt=1, metrics=None, model_uri="models:/late/1")
    assert states(backend)[run_id] == "cancelled"
