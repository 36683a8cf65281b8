"""The run state machine and step progress, without any database."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from anna_backend.domain.errors import Conflict
from anna_backend.domain.model import Run, RunState, RunStep, StepState

ALLOWED = {
    (RunState.QUEUED, RunState.BUILDING),
    (RunState.QUEUED, RunState.CANCELLED),
    (RunState.BUILDING, RunState.RUNNING),
    (RunState.BUILDING, RunState.FAILED),
    (RunState.BUILDING, RunState.CANCELLED),
    (RunState.RUNNING, RunState.SUCCEEDED),
    (RunState.RUNNING, RunState.FAILED),
    (RunState.RUNNING, RunState.CANCELLED),
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def run_in(state: RunState) -> Run:
    return Run(id=1, task_id=1, sample_id=1, params={}, seed=0, created_by="alice", state=state)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(RunState, RunState)))
def test_only_the_allowed_transitions_happen(source: RunState, target: RunState) -> None:
    run = run_in(source)
    if (source, target) in ALLOWED:
        run.transition(target, NOW)
        assert run.state is target
    else:
        with pytest.raises(Conflict):
            run.transition(target, NOW)
        assert run.state is source


def test_a_run_records_when_it_started_and_finished() -> None:
    run = run_in(RunState.QUEUED)
    run.transition(RunState.BUILDING, NOW)
    run.start(pid=42)
    run.succeed(metrics={"test": {"roc_auc": 0.8}}, model_uri="models:/x/1")
    assert run.started_at == NOW and run.finished_at is not None and run.pid == 42
    assert run.is_finished and not run.is_active


@pytest.mark.parametrize("state", [RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED])
def test_a_finished_run_cannot_be_cancelled(state: RunState) -> None:
    with pytest.raises(Conflict, match="nothing to cancel"):
        run_in(state).cancel()


@pytest.mark.parametrize("state", [RunState.BUILDING, RunState.RUNNING])
def test_requeue_is_the_only_way_back_and_keeps_finished_steps(state: RunState) -> None:
    run = run_in(state)
    run.pid = 99
    run.steps = [
        RunStep("validate_split", state=StepState.SUCCEEDED),
        RunStep("train.cards", state=StepState.RUNNING, epoch=3),
    ]
    run.requeue()
    assert run.state is RunState.QUEUED and run.attempt == 2 and run.pid is None
    assert [s.state for s in run.steps] == [StepState.SUCCEEDED, StepState.PENDING]


@pytest.mark.parametrize("state", [RunState.QUEUED, RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED])
def test_only_active_runs_are_requeued(state: RunState) -> None:
    with pytest.raises(Conflict):
        run_in(state).requeue()


def test_step_progress_sets_times_and_maps_done_to_succeeded() -> None:
    step = RunStep("train.cards")
    step.apply({"state": "running"}, NOW)
    step.apply({"epoch": 2, "max_epochs": 5, "metric": 0.7, "metric_name": "roc_auc", "fraction": 0.4}, NOW)
    assert step.state is StepState.RUNNING and step.started_at == NOW and step.epoch == 2
    step.apply({"state": "done", "message": "3.0 s"}, NOW)
    assert step.state is StepState.SUCCEEDED and step.finished_at == NOW and step.metric == 0.7
    step.apply({"state": "skipped"}, NOW)  # a later attempt finding the marker
    assert step.state is StepState.SUCCEEDED
