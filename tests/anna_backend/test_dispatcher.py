"""The embedded queue: at most N runs building or running, in submission order, with a fake runner."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from backend_fakes import FakeMartCatalog, FakeRunner, FakeScorer, seed_runs, states, wait_for

from anna_backend.adapters import tables
from anna_backend.bootstrap import Wiring, bootstrap
from anna_backend.domain.model import Run, RunState, utcnow
from anna_backend.service_layer import runs
from anna_backend.service_layer.ports import Backend, Builder

pytestmark = pytest.mark.all_databases


class ActiveCounter:
    """Samples how many runs the database has building or running, as fast as it can."""

    def __init__(self, backend: Backend) -> None:
        self.engine = sa.create_engine(backend.settings.database_url, isolation_level="AUTOCOMMIT")
        self.maximum = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with self.engine.connect() as connection:
            while not self._stop.is_set():
                count = connection.execute(
                    sa.text("SELECT count(*) FROM runs WHERE state IN ('building', 'running')")
                ).scalar_one()
                self.maximum = max(self.maximum, count)
                self.samples += 1
        self.engine.dispose()

    def __enter__(self) -> ActiveCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_six_runs_with_two_slots_never_exceed_two_and_start_in_order(
    wiring: Wiring, runner: FakeRunner
) -> None:
    backend = wiring.backend
    runner.duration_s = 0.15
    ids = seed_runs(backend, 6)
    active_at_start: list[int] = []
    original_start = runner.start

    def start(run: Run) -> int | None:
        with backend.uow() as uow:
            active_at_start.append(len(uow.runs.in_states(frozenset({RunState.BUILDING, RunState.RUNNING}))))
        return original_start(run)

    runner.start = start  # type: ignore[method-assign]
    with ActiveCounter(backend) as counter:
        wiring.dispatcher.start()
        wait_for(lambda: set(states(backend).values()) == {"succeeded"})
        wiring.dispatcher.stop()
    assert counter.samples > 50
    assert counter.maximum == 2
    assert max(active_at_start) <= 2
    assert [run_id for run_id, _ in runner.started] == ids  # submission order, each once
    with backend.uow() as uow:
        finished = [uow.runs.get(i) for i in ids]
    assert all(r is not None and r.attempt == 1 and r.model_uri for r in finished)
    starts = [r.started_at for r in finished if r is not None]
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_queue_positions_follow_submission_order(wiring: Wiring, runner: FakeRunner) -> None:
    backend = wiring.backend
    runner.auto_run = False
    ids = seed_runs(backend, 4)
    assert wiring.dispatcher.tick() == ids[:2]
    views = {v.run.id: v for v in runs.list_runs(backend)}
    assert [views[i].queue_position for i in ids] == [None, None, 1, 2]
    assert [views[i].run.state for i in ids] == [
        RunState.RUNNING,
        RunState.RUNNING,
        RunState.QUEUED,
        RunState.QUEUED,
    ]
    assert wiring.dispatcher.tick() == []  # no free slot


def test_a_driver_that_dies_fails_its_run_with_the_log_tail(wiring: Wiring, runner: FakeRunner) -> None:
    backend = wiring.backend
    runner.auto_run = False
    [run_id] = seed_runs(backend, 1)
    wiring.dispatcher.tick()
    runner.exit(run_id, 1, -9, log_tail="Traceback ...\nMemoryError")
    wiring.dispatcher.tick()
    run = runs.get_run(backend, run_id).run
    assert run.state is RunState.FAILED
    assert "code -9" in (run.error or "") and "MemoryError" in (run.error or "")


def test_cancelling_frees_the_slot_and_stops_the_driver(wiring: Wiring, runner: FakeRunner) -> None:
    backend = wiring.backend
    runner.auto_run = False
    first, second, third = seed_runs(backend, 3)
    wiring.dispatcher.tick()
    with backend.uow() as uow:
        user = uow.users.get_by_username("alice")
    assert user is not None
    runs.cancel_run(backend, user=user, run_id=third)  # queued: never starts
    runs.cancel_run(backend, user=user, run_id=first)  # running: its driver is stopped
    assert runner.stopped == [first]
    assert wiring.dispatcher.tick() == []
    assert states(backend) == {first: "cancelled", second: "running", third: "cancelled"}
    runner.exit(first, 1, -9)
    wiring.dispatcher.tick()
    assert states(backend)[first] == "cancelled"  # the dead driver does not turn it into a failure


def test_a_failed_build_fails_the_run(wiring: Wiring) -> None:
    class BrokenBuilder(Builder):
        def build(self, run: Run) -> str:
            raise RuntimeError("no tag")

    backend = wiring.backend
    backend.builder = BrokenBuilder()
    [run_id] = seed_runs(backend, 1)
    wiring.dispatcher.tick()
    run = runs.get_run(backend, run_id).run
    assert run.state is RunState.FAILED and run.error == "build failed: RuntimeError: no tag"


def test_a_run_is_claimed_once_even_by_racing_dispatchers(wiring: Wiring) -> None:
    backend = wiring.backend
    seed_runs(backend, 1)
    claimed: list[int | None] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        with backend.uow() as uow:
            run = uow.runs.claim_next(max_active=10, now=utcnow())
            uow.commit()
        claimed.append(run.id if run else None)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed, key=lambda x: x or 0) == [None, None, None, 1]


def test_a_submission_wakes_the_dispatcher(wiring: Wiring, runner: FakeRunner) -> None:
    backend = wiring.backend
    backend.settings.dispatch_interval_s = 30  # only a wake-up can start the run in time
    wiring.dispatcher.start()
    time.sleep(0.1)
    seed_runs(backend, 1)
    wait_for(lambda: runner.started != [], timeout=5)


def _claim_until_none(
    server: Backend, max_active: int, barrier: threading.Barrier, claimed: list[int]
) -> None:
    barrier.wait()
    while True:
        with server.uow() as uow:
            run = uow.runs.claim_next(max_active=max_active, now=utcnow())
            uow.commit()
        if run is None:
            return
        claimed.append(run.id or 0)


def test_dispatchers_with_separate_engines_never_claim_more_than_n(wiring: Wiring) -> None:
    """Two servers on one database (two engines, as two processes would have) share the N slots."""
    backend = wiring.backend
    max_active = 2
    ids = seed_runs(backend, 8)
    other = bootstrap(backend.settings, migrate_db=False, runner=FakeRunner(), marts=FakeMartCatalog(),
                      scorer=FakeScorer())
    try:
        for _ in range(15):  # rounds: each one races both dispatchers for the free slots
            claimed: list[int] = []
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=_claim_until_none, args=(server, max_active, barrier, claimed))
                       for server in (backend, other.backend)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(claimed) == max_active, claimed
            assert sorted(claimed) == ids[:max_active]  # still in submission order
            with wiring.engine.begin() as connection:  # put them back for the next round
                connection.execute(sa.update(tables.runs).where(tables.runs.c.id.in_(claimed))
                                   .values(state=RunState.QUEUED.value))
    finally:
        other.close()
