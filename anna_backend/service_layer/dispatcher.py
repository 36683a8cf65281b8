"""The embedded queue: a thread that starts queued runs, at most N at once, in submission order, and has
queued score jobs run one after another in a second thread.

The database is the queue. A run is claimed with one conditional update (``queued → building`` only if it
is still queued and fewer than N runs are building or running), built, and handed to the runner. Drivers
that exit without having written a final state fail their run with the tail of their log. Score jobs run
in their own thread, so a long one never delays claiming runs; that thread takes the queued jobs oldest
first and ends when there are none. At start-up, ``recover`` re-queues the runs a dead server left
behind (attempt + 1; finished steps are kept), and its running score jobs (attempt + 1).
"""

from __future__ import annotations

import logging
import threading

from anna_backend.domain.model import ACTIVE_STATES, Run, RunState, utcnow
from anna_backend.service_layer.ports import Backend, RunQueue
from anna_backend.service_layer.run_progress import fail_run
from anna_backend.service_layer.scoring import execute_score_job, next_queued, requeue_interrupted

log = logging.getLogger(__name__)


class WakeUp(RunQueue):
    """The embedded ``RunQueue``: a submitted run or score job only needs to wake the dispatcher."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def submitted(self, run_id: int) -> None:
        self._event.set()

    def submitted_score(self, job_id: int, run_id: int) -> None:
        self._event.set()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()


class Dispatcher:
    """Claims, builds and starts runs; watches their drivers. ``tick`` does one round (tests call it)."""

    def __init__(self, backend: Backend, wakeup: WakeUp) -> None:
        self.backend = backend
        self.wakeup = wakeup
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scoring: threading.Thread | None = None

    # ---------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Recover what a previous server left, then run the loop in a daemon thread."""
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="anna-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wakeup.submitted(0)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.join_scoring(timeout)

    def join_scoring(self, timeout: float = 10.0) -> None:
        """Wait for the scoring thread to end (it ends when no job is queued, or after stop)."""
        scoring = self._scoring
        if scoring is not None:
            scoring.join(timeout)

    def _loop(self) -> None:
        log.info("dispatcher started: at most %s run(s) at once", self.backend.settings.max_concurrent_runs)
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad round must not end the queue; the next round retries
                log.exception("dispatcher round failed")
            self.wakeup.wait(self.backend.settings.dispatch_interval_s)
        log.info("dispatcher stopped")

    # ------------------------------------------------------------------------------------------- rounds

    def tick(self) -> list[int]:
        """Settle exited drivers, start as many queued runs as there are free slots (returns those), and
        start the scoring thread if jobs are queued and it is not running."""
        self.reap()
        self._score_queued()
        started = []
        while not self._stop.is_set():
            with self.backend.uow() as uow:
                run = uow.runs.claim_next(max_active=self.backend.settings.max_concurrent_runs, now=utcnow())
                uow.commit()
            if run is None:
                break
            self._launch(run)
            started.append(run.id)
        return [r for r in started if r is not None]

    def _score_queued(self) -> None:
        if self._scoring is not None and self._scoring.is_alive():
            return
        if next_queued(self.backend) is None:
            return
        self._scoring = threading.Thread(target=self._score_loop, name="anna-score-jobs", daemon=True)
        self._scoring.start()

    def _score_loop(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = next_queued(self.backend)
                if job_id is None:
                    return
                execute_score_job(self.backend, job_id)  # fails the job on any error: nothing hangs
            except Exception:  # the database itself failed; the next tick starts the thread again
                log.exception("the scoring thread failed")
                return

    def reap(self) -> None:
        """Fail runs whose driver ended without writing a final state (crash, kill, out of memory)."""
        for ended in self.backend.runner.exited():
            error = (f"the pipeline driver (attempt {ended.attempt}) exited with code {ended.returncode} "
                     f"without finishing the run; the end of driver.log:\n{ended.log_tail}")
            if fail_run(self.backend, run_id=ended.run_id, attempt=ended.attempt, error=error):
                log.error("run %s: driver died with code %s", ended.run_id, ended.returncode)

    def _launch(self, run: Run) -> None:
        assert run.id is not None
        try:
            built = self.backend.builder.build(run)
        except Exception as error:
            log.exception("run %s: build failed", run.id)
            fail_run(self.backend, run_id=run.id, attempt=run.attempt,
                     error=f"build failed: {type(error).__name__}: {error}")
            return
        try:
            pid = self.backend.runner.start(run)
        except Exception as error:
            log.exception("run %s: could not start the pipeline", run.id)
            fail_run(self.backend, run_id=run.id, attempt=run.attempt,
                     error=f"could not start the pipeline: {type(error).__name__}: {error}")
            return
        with self.backend.uow() as uow:
            current = uow.runs.get(run.id, for_update=True)
            recorded = (
                current is not None and current.state is RunState.BUILDING and current.attempt == run.attempt
            )
            if current is not None and recorded:  # (repeated for mypy's narrowing)
                current.start(pid)
                current.git_commit = current.git_commit or built
                uow.runs.save(current)
                uow.commit()
        if not recorded:
            # Cancelled while it was being built (or finished already): make sure nothing keeps running.
            if current is None or current.state is not RunState.SUCCEEDED:
                self.backend.runner.stop(run)
            return
        log.info("run %s attempt %s running (pid %s)", run.id, run.attempt, pid)

    # ------------------------------------------------------------------------------------------ recovery

    def recover(self) -> list[int]:
        """Re-queue runs (returns their ids) and score jobs left building or running by a previous server.

        A driver that is still alive belongs to the previous server (this one has started none yet): its
        whole process group is killed first, so two drivers never work on one run.
        """
        requeue_interrupted(self.backend)
        with self.backend.uow() as uow:
            left = uow.runs.in_states(ACTIVE_STATES)
        requeued = []
        for run in left:
            assert run.id is not None
            if self.backend.runner.is_alive(run):
                log.warning("run %s: killing the driver (pid %s) of a previous server", run.id, run.pid)
                self.backend.runner.stop(run)
            with self.backend.uow() as uow:
                current = uow.runs.get(run.id, for_update=True)
                if current is None or not current.is_active or current.attempt != run.attempt:
                    continue
                current.requeue()
                uow.runs.save(current)
                uow.commit()
            requeued.append(run.id)
            log.warning("run %s re-queued as attempt %s; finished steps are kept", run.id, current.attempt)
        return requeued
