"""The full-mode worker on fakes of the broker and the orchestrator, over the real database (both kinds).

The real RabbitMQ and Airflow are exercised in tests/anna_backend/test_rabbitmq.py and tests/integration.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from backend_fakes import scorer_of, seed_runs, states, succeed_run

from anna_backend.domain.errors import NotFound, ServiceUnavailable
from anna_backend.domain.model import ACTIVE_STATES, Run, RunState, utcnow
from anna_backend.domain.score_job import ScoreJob, ScoreJobState
from anna_backend.service_layer import scoring
from anna_backend.service_layer.ports import Backend, Orchestrator, PipelineStatus, StepStatus
from anna_backend.service_layer.worker import Worker
from anna_models.progress import FileProgress

pytestmark = pytest.mark.all_databases


@dataclass(frozen=True)
class Request:
    kind: str
    run_id: int
    job_id: int | None = None


@dataclass
class Message:
    request: Request | None
    problem: str | None = None
    redelivered: bool = False
    retries: int = 0


@dataclass
class Broker:
    """A queue shared by the fake consumers: what RabbitMQ does for ANNA, minus the network."""

    queue: deque[Message] = field(default_factory=deque)
    dead: list[tuple[Message, str]] = field(default_factory=list)
    acked: list[Message] = field(default_factory=list)
    retry_limit: int = 2

    def publish(self, request: Request | None, problem: str | None = None) -> None:
        self.queue.append(Message(request, problem))


@dataclass
class Consumer:
    broker: Broker

    def get(self, timeout_s: float) -> Message | None:
        return self.broker.queue.popleft() if self.broker.queue else None

    def ack(self, delivery: Message) -> None:
        self.broker.acked.append(delivery)

    def requeue(self, delivery: Message) -> None:
        delivery.redelivered = True
        self.broker.queue.appendleft(delivery)

    def retry(self, delivery: Message, reason: str) -> bool:
        if delivery.retries >= self.broker.retry_limit:
            self.dead_letter(delivery, reason)
            return False
        self.broker.queue.append(Message(delivery.request, retries=delivery.retries + 1))
        return True

    def dead_letter(self, delivery: Message, reason: str) -> None:
        self.broker.dead.append((delivery, reason))


class FakeOrchestrator(Orchestrator):
    """Pipelines keyed like Airflow's DAG runs: one per (run, attempt); a second start changes nothing."""

    def __init__(self) -> None:
        self.pipelines: dict[tuple[int, int], str] = {}
        self.starts = 0
        self.down = False
        self.stopped: list[int] = []
        self.steps: list[StepStatus] = []
        self.error: str | None = None

    def ensure_ready(self) -> None:
        return None

    def start(self, run: Run) -> int | None:
        self.starts += 1
        if self.down:
            raise ConnectionError("Airflow at http://127.0.0.1:1 is unreachable")
        assert run.id is not None
        self.pipelines.setdefault((run.id, run.attempt), "running")
        return None

    def status(self, run: Run) -> PipelineStatus:
        assert run.id is not None
        state = self.pipelines.get((run.id, run.attempt), "missing")
        return PipelineStatus(state=state, steps=self.steps, error=self.error if state == "failed" else None)

    def is_alive(self, run: Run) -> bool:
        return self.status(run).state in ("queued", "running")

    def stop(self, run: Run) -> None:
        assert run.id is not None
        self.stopped.append(run.id)

    def finish(self, run_id: int, state: str = "succeeded") -> None:
        for key in self.pipelines:
            if key[0] == run_id:
                self.pipelines[key] = state


def active(backend: Backend) -> int:
    with backend.uow() as uow:
        return len(uow.runs.in_states(ACTIVE_STATES))


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def orchestrator() -> FakeOrchestrator:
    return FakeOrchestrator()


def worker(backend: Backend, broker: Broker, orchestrator: FakeOrchestrator, hold_s: float = 60.0) -> Worker:
    backend.settings.poll_interval_s = 1e-9  # follow on every tick
    return Worker(backend=backend, deliveries=Consumer(broker), orchestrator=orchestrator, hold_s=hold_s)


def test_two_workers_run_six_requests_never_more_than_three_at_once(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    backend.settings.max_concurrent_runs = 3
    ids = seed_runs(backend, 6)
    for run_id in ids:
        broker.publish(Request("train", run_id))
    workers = [worker(backend, broker, orchestrator), worker(backend, broker, orchestrator)]
    most = 0
    for _ in range(40):
        for w in workers:
            w.tick()
            most = max(most, active(backend))
        running = [k for k, v in orchestrator.pipelines.items() if v == "running"]
        if running:
            orchestrator.finish(running[0][0])
        if all(s == "succeeded" for s in states(backend).values()):
            break
    assert most == 3
    assert set(states(backend).values()) == {"succeeded"}
    assert len(orchestrator.pipelines) == 6 and not broker.queue and not broker.dead


def test_a_redelivered_request_finishes_what_a_dead_worker_began_without_a_second_pipeline(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    [building, running] = seed_runs(backend, 2)
    with backend.uow() as uow:  # one worker died right after its claim, another after starting the pipeline
        for run_id in (building, running):
            uow.runs.claim_next(max_active=5, now=uow_now(), run_id=run_id)
        uow.commit()
    first = worker(backend, broker, orchestrator)
    with backend.uow() as uow:
        run = uow.runs.get(running)
        assert run is not None
    first._build_and_start(run)
    assert orchestrator.pipelines == {(running, 1): "running"}
    for run_id in (building, running):
        broker.queue.append(Message(Request("train", run_id), redelivered=True))
    second = worker(backend, broker, orchestrator)
    second.tick()
    second.tick()
    assert states(backend) == {building: "running", running: "running"}
    assert sorted(orchestrator.pipelines) == [(building, 1), (running, 1)]  # one pipeline each
    assert len(broker.acked) == 2 and not broker.dead


def test_requests_that_cannot_be_valid_go_to_the_dead_letters(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    broker.publish(None, problem="body is not JSON: b'hello'")
    broker.publish(Request("train", 999))
    broker.publish(Request("explode", 1))
    w = worker(backend, broker, orchestrator)
    for _ in range(3):
        w.tick()
    reasons = [reason for _, reason in broker.dead]
    assert reasons[0] == "body is not JSON: b'hello'"
    assert "no run 999" in reasons[1]
    assert "'explode'" in reasons[2]
    assert orchestrator.starts == 0


def test_an_unreachable_orchestrator_is_retried_then_the_run_fails_with_the_reason(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    [run_id] = seed_runs(backend, 1)
    broker.publish(Request("train", run_id))
    orchestrator.down = True
    w = worker(backend, broker, orchestrator)
    for _ in range(5):
        w.tick()
    assert [m.retries for m, _ in broker.dead] == [broker.retry_limit]
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
    assert run is not None and run.state is RunState.FAILED
    assert run.error is not None and "unreachable" in run.error and "3 tries" in run.error
    assert active(backend) == 0  # the slot is free again


def test_a_request_without_a_free_slot_is_held_then_handed_back(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    backend.settings.max_concurrent_runs = 1
    first, second = seed_runs(backend, 2)
    broker.publish(Request("train", first))
    broker.publish(Request("train", second))
    w = worker(backend, broker, orchestrator, hold_s=0.0)
    w.tick()  # starts the first
    w.tick()  # takes the second, finds no slot, hands it back at once (hold_s=0)
    assert states(backend) == {first: "running", second: "queued"}
    handed_back = broker.queue[0]
    assert handed_back.request == Request("train", second) and handed_back.redelivered
    orchestrator.finish(first)
    w.follow()
    w.tick()
    assert states(backend) == {first: "succeeded", second: "running"}


def test_a_request_for_a_run_cancelled_while_it_waited_is_dropped(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    backend.settings.max_concurrent_runs = 1
    first, second = seed_runs(backend, 2)
    broker.publish(Request("train", first))
    broker.publish(Request("train", second))
    w = worker(backend, broker, orchestrator)
    w.tick()
    w.tick()  # holds the second request
    with backend.uow() as uow:
        run = uow.runs.get(second, for_update=True)
        assert run is not None
        run.cancel()
        uow.runs.save(run)
        uow.commit()
    w.tick()
    assert broker.acked[-1].request == Request("train", second)
    assert (second, 1) not in orchestrator.pipelines


def test_following_copies_task_states_and_progress_and_fails_the_run_with_the_task_error(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    [run_id] = seed_runs(backend, 1)
    broker.publish(Request("train", run_id))
    w = worker(backend, broker, orchestrator)
    w.tick()
    progress = FileProgress(backend.artifacts.run_dir(run_id), interval_s=0)
    progress("train.cards", state="running", epoch=3, max_epochs=10, unit="epoch", metric=0.71,
             metric_name="roc_auc")
    orchestrator.steps = [StepStatus("validate_split", "succeeded"), StepStatus("extract.cards", "succeeded"),
                          StepStatus("train.cards", "running", try_number=1)]
    w.follow()
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
    assert run is not None
    step = run.step("train.cards")
    assert step is not None and step.state.value == "running" and step.epoch == 3 and step.metric == 0.71
    assert step.unit == "epoch"
    assert run.step("validate_split").state.value == "succeeded"  # type: ignore[union-attr]

    error = "FileNotFoundError: cards/part-0.parquet"
    orchestrator.steps[2] = StepStatus("train.cards", "failed", error=error)
    w.follow()  # the step failed for good, while Airflow has not yet ended the DAG run
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
    assert run is not None and run.state is RunState.FAILED
    assert run.error == "step train.cards failed: FileNotFoundError: cards/part-0.parquet"
    assert run.step("train.cards").state.value == "failed"  # type: ignore[union-attr]
    assert active(backend) == 0
    assert orchestrator.stopped == [run_id]  # what else runs of it is stopped


def test_a_running_run_whose_pipeline_is_missing_gets_it_started(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    [run_id] = seed_runs(backend, 1)
    broker.publish(Request("train", run_id))
    w = worker(backend, broker, orchestrator)
    w.tick()
    orchestrator.pipelines.clear()  # as if the worker died between recording "running" and the trigger
    w.follow()
    assert orchestrator.pipelines == {(run_id, 1): "running"}


def uow_now() -> Any:
    return utcnow()


# ------------------------------------------------------------------------------------------- score requests

SCORE_ROWS = b"client_id,report_date,target\n12,2024-06-01,1\n7,2024-07-15,0\n"


def score_job(backend: Backend) -> tuple[int, int]:
    """A succeeded run and a queued score job of it: (run id, job id)."""
    [run_id] = seed_runs(backend, 1)
    succeed_run(backend, run_id)
    with backend.uow() as uow:
        user = uow.users.get_by_username("alice")
    assert user is not None
    job = scoring.submit_score_job(backend, user=user, run_id=run_id, filename="rows.csv", content=SCORE_ROWS)
    assert job.id is not None
    return run_id, job.id


def job(backend: Backend, job_id: int) -> ScoreJob:
    return scoring.get_score_job(backend, job_id)


def test_a_score_request_runs_its_job_in_the_worker_then_is_acked(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    run_id, job_id = score_job(backend)
    broker.publish(Request("score", run_id, job_id))
    worker(backend, broker, orchestrator).tick()
    done = job(backend, job_id)
    assert done.state is ScoreJobState.SUCCEEDED and done.attempt == 1 and done.metrics == {"roc_auc": 0.5}
    assert [m.request for m in broker.acked] == [Request("score", run_id, job_id)] and not broker.dead
    result = scoring.score_job_result(backend, job_id)
    assert result.scores["score"].tolist() == [0.2, 0.7] and orchestrator.starts == 0


def test_a_score_request_redelivered_after_its_worker_died_runs_the_job_again_as_the_next_attempt(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    run_id, job_id = score_job(backend)
    with backend.uow() as uow:  # a worker claimed the job and was killed mid-way: its request is unacked
        uow.score_jobs.claim(job_id, now=utcnow())
        uow.commit()
    broker.publish(Request("score", run_id, job_id))  # a duplicate publish: its holder may still be alive
    w = worker(backend, broker, orchestrator)
    w.tick()
    assert job(backend, job_id).state is ScoreJobState.RUNNING and scorer_of(backend).calls == 0
    broker.queue.append(Message(Request("score", run_id, job_id), redelivered=True))  # the broker redelivers
    w.tick()
    done = job(backend, job_id)
    assert done.state is ScoreJobState.SUCCEEDED and done.attempt == 2 and scorer_of(backend).calls == 1
    assert len(broker.acked) == 2 and not broker.dead
    assert not scoring.fail_score_job(backend, job_id, "late news from the dead worker", attempt=1)
    broker.queue.append(Message(Request("score", run_id, job_id), redelivered=True))
    w.tick()  # once more after success: nothing runs twice
    assert scorer_of(backend).calls == 1 and job(backend, job_id) == done and len(broker.acked) == 3


def test_score_requests_that_cannot_be_valid_are_dead_lettered_and_scoring_errors_fail_the_job(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    run_id, job_id = score_job(backend)
    broker.publish(Request("score", run_id, 999))
    broker.publish(Request("score", run_id))
    broker.publish(Request("score", run_id + 1, job_id))
    scorer_of(backend).errors = [NotFound(f"run {run_id} has no packaged model to score with")]
    broker.publish(Request("score", run_id, job_id))
    w = worker(backend, broker, orchestrator)
    for _ in range(4):
        w.tick()
    reasons = [reason for _, reason in broker.dead]
    assert reasons == ["no score job 999", f"a score request names its job; job_id is missing (run {run_id})",
                       f"score job {job_id} belongs to run {run_id}, not to run {run_id + 1}"]
    failed = job(backend, job_id)
    assert failed.state is ScoreJobState.FAILED
    assert failed.error == f"NotFound: run {run_id} has no packaged model to score with"
    assert [m.request for m in broker.acked] == [Request("score", run_id, job_id)]


def test_a_passing_error_requeues_the_job_and_retries_the_request(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    run_id, job_id = score_job(backend)
    scorer_of(backend).errors = [ServiceUnavailable("MLflow at http://127.0.0.1:1 is unreachable")]
    broker.publish(Request("score", run_id, job_id))
    w = worker(backend, broker, orchestrator)
    w.tick()
    waiting = job(backend, job_id)
    assert waiting.state is ScoreJobState.QUEUED and waiting.attempt == 2
    assert [m.retries for m in broker.queue] == [1] and not broker.acked
    w.tick()
    done = job(backend, job_id)
    assert done.state is ScoreJobState.SUCCEEDED and done.attempt == 2 and not broker.dead


def test_an_error_that_keeps_coming_fails_the_job_with_the_reason_after_the_retries(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    run_id, job_id = score_job(backend)
    scorer_of(backend).errors = [OSError(28, "No space left on device")] * 10
    broker.publish(Request("score", run_id, job_id))
    w = worker(backend, broker, orchestrator)
    for _ in range(5):
        w.tick()
    assert [m.retries for m, _ in broker.dead] == [broker.retry_limit]
    failed = job(backend, job_id)
    assert failed.state is ScoreJobState.FAILED and failed.error is not None
    assert failed.error.startswith("could not score after 3 tries: OSError: [Errno 28] No space left")
    assert scorer_of(backend).calls == 3


def test_a_job_whose_workers_keep_dying_is_given_up_after_the_retries(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator) -> None:
    backend.settings.request_retries = 1
    run_id, job_id = score_job(backend)
    with backend.uow() as uow:  # two attempts, each ended by a dead worker (killed, or over consumer_timeout)
        uow.score_jobs.claim(job_id, now=utcnow())
        uow.score_jobs.claim(job_id, now=utcnow(), takeover_attempt=1)
        uow.commit()
    broker.queue.append(Message(Request("score", run_id, job_id), redelivered=True))
    worker(backend, broker, orchestrator).tick()
    failed = job(backend, job_id)
    assert failed.state is ScoreJobState.FAILED and failed.error is not None
    assert failed.error.startswith("gave up after 2 attempts") and scorer_of(backend).calls == 0
    assert [reason for _, reason in broker.dead] == [failed.error]


# Airflow can stamp the stopped task's end before the failed one's (seen once in CI, 2026-12-07): -1.
@pytest.mark.parametrize("stopped_after_s", [2, -1])
def test_the_step_that_failed_first_names_the_failure_not_those_stopped_after_it(
        backend: Backend, broker: Broker, orchestrator: FakeOrchestrator, stopped_after_s: int) -> None:
    from datetime import UTC, datetime, timedelta

    [run_id] = seed_runs(backend, 1, domains=("cards", "accounts"))
    broker.publish(Request("train", run_id))
    w = worker(backend, broker, orchestrator)
    w.tick()
    failed_at = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    # Pipeline order lists train.accounts before extract.cards, but extract.cards failed first and the
    # fail-fast DAG then stopped the training that was running.
    orchestrator.steps = [
        StepStatus("train.accounts", "failed", try_number=1,
                   finished_at=failed_at + timedelta(seconds=stopped_after_s), error="::group::Pre Execute"),
        StepStatus("extract.cards", "failed", try_number=1, finished_at=failed_at,
                   error="FileNotFoundError: cards/manifest.json", raised=True),
    ]
    w.follow()
    with backend.uow() as uow:
        run = uow.runs.get(run_id)
    assert run is not None and run.state is RunState.FAILED
    assert run.error == "step extract.cards failed: FileNotFoundError: cards/manifest.json"
    stopped = run.step("train.accounts")
    assert stopped is not None and stopped.message == "stopped: step extract.cards failed first"
