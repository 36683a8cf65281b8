"""Tasks over the API, and what creating a task and submitting a run write to the model-config repo."""

from __future__ import annotations

import json
import subprocess

import pytest
from backend_fakes import Api, MakeTask, csv_bytes, sample_frame, upload

from anna_backend.service_layer.ports import Backend
from anna_models.config import RunConfig

pytestmark = pytest.mark.all_databases


def git(backend: Backend, *args: str) -> str:
    repo = backend.settings.model_config_repo
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_health_needs_no_token(api: Api) -> None:
    answer = api.client.get("/health")
    assert answer.status_code == 200
    assert answer.json() | {"version": None} == {"status": "ok", "version": None, "mode": "embedded",
                                                 "queue": "embedded", "orchestrator": "local"}


def test_embedded_mode_has_no_dead_letters(api: Api, analyst: dict[str, str]) -> None:
    answer = api.client.get("/queue/dead-letters", headers=analyst)
    assert answer.status_code == 200 and answer.json() == []
    assert api.client.get("/queue/dead-letters").status_code == 401


def test_marts_are_listed(api: Api, analyst: dict[str, str]) -> None:
    marts = api.client.get("/marts", headers=analyst).json()
    assert [m["name"] for m in marts] == ["accounts", "cards"]
    assert {"version", "time_min", "time_max", "n_clients", "n_events", "features"} <= set(marts[0])


def test_task_defaults_metric_and_domains_and_gets_a_git_branch(
    api: Api, analyst: dict[str, str], backend: Backend
) -> None:
    answer = api.client.post("/tasks", json={"name": "default-90d", "task_type": "binary"}, headers=analyst)
    assert answer.status_code == 201, answer.text
    task = answer.json()
    assert task["metric"] == "roc_auc"
    assert task["domains"] == ["accounts", "cards"]
    assert task["created_by"] == "alice"
    assert task["git_branch"] == f"task/{task['id']}"

    stored = json.loads(git(backend, "show", f"refs/heads/task/{task['id']}:task.json"))
    assert stored["name"] == "default-90d" and stored["task_type"] == "binary"
    assert stored["metric"] == "roc_auc" and stored["domains"] == ["accounts", "cards"]
    assert git(backend, "log", "--format=%an", f"task/{task['id']}") == "alice"

    by_name = api.client.get("/tasks/default-90d", headers=analyst).json()
    by_id = api.client.get(f"/tasks/{task['id']}", headers=analyst).json()
    assert by_name == by_id == task
    assert [t["name"] for t in api.client.get("/tasks", headers=analyst).json()] == ["default-90d"]


def test_task_name_taken_is_409(make_task: MakeTask, api: Api, analyst: dict[str, str]) -> None:
    make_task("churn")
    answer = api.client.post("/tasks", json={"name": "churn", "task_type": "regression"}, headers=analyst)
    assert answer.status_code == 409
    assert "taken" in answer.json()["detail"]


def test_bad_task_fields_are_422_naming_the_field(api: Api, analyst: dict[str, str]) -> None:
    cases = [
        ({"name": "Bad Name", "task_type": "binary"}, "name"),
        ({"name": "ok-name", "task_type": "ranking"}, "task_type"),
        ({"name": "ok-name", "task_type": "binary", "metric": "rmse"}, "metric"),
        ({"name": "ok-name", "task_type": "binary", "domains": ["telecom"]}, "domains"),
    ]
    for body, field in cases:
        answer = api.client.post("/tasks", json=body, headers=analyst)
        assert answer.status_code == 422, (body, answer.text)
        assert any(field in item["loc"] for item in answer.json()["detail"]), answer.json()
    assert api.client.get("/tasks", headers=analyst).json() == []


def test_unknown_task_is_404(api: Api, analyst: dict[str, str]) -> None:
    assert api.client.get("/tasks/nope", headers=analyst).status_code == 404
    assert api.client.get("/tasks/999", headers=analyst).status_code == 404


def test_run_is_a_tagged_commit_with_exactly_the_run_config(
    make_task: MakeTask, api: Api, analyst: dict[str, str], backend: Backend
) -> None:
    task = make_task("churn")
    sample = upload(api, analyst, "churn", csv_bytes(sample_frame())).json()
    params = {"default": {"hidden": 8, "max_epochs": 1}}
    answer = api.client.post("/tasks/churn/runs", json={"params": params, "seed": 7}, headers=analyst)
    assert answer.status_code == 201, answer.text
    run = answer.json()
    assert run["state"] == "queued" and run["attempt"] == 1 and run["queue_position"] == 1
    assert run["sample_id"] == sample["id"] and run["task_name"] == "churn"
    assert run["git_tag"] == f"run/{run['id']}"

    text = git(backend, "show", f"refs/tags/run/{run['id']}:run.json")
    config = RunConfig.from_json(text)
    assert text == config.to_json()
    assert config.run_id == run["id"] and config.task_name == "churn" and config.task_type == "binary"
    assert config.metric == "roc_auc" and config.domains == ["cards"] and config.seed == 7
    assert config.params == params
    assert config.sample_fingerprint == sample["fingerprint"]
    assert config.sample_path.endswith(f"samples/{sample['fingerprint']}.parquet")
    assert config.mart_versions == {"cards": "v-cards"}
    assert config.tracking_uri == backend.settings.tracking_uri
    assert backend.model_config.read_run_config(run["id"]) == config

    assert git(backend, "rev-parse", f"run/{run['id']}^{{commit}}") == run["git_commit"]
    assert git(backend, "rev-parse", f"task/{task['id']}") == run["git_commit"]  # the branch advanced
    files = git(backend, "ls-tree", "--name-only", run["git_commit"]).split()
    assert files == ["run.json", "task.json"]
    assert git(backend, "rev-list", "--count", run["git_commit"]) == "2"  # task commit + run commit


def test_run_params_are_checked(make_task: MakeTask, api: Api, analyst: dict[str, str]) -> None:
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    for params, names in (({"default": {"hiden": 8}}, "hiden"), ({"telecom": {"hidden": 8}}, "telecom"),
                          ({"default": {"hidden": "big"}}, "hidden"), ({"fusion": {"hiden": 8}}, "hiden"),
                          ({"default": {"stopping_share": 0.95}}, "stopping_share"),
                          ({"lightgbm": {"leaves": 8}}, "leaves"),
                          ({"lightgbm": {"num_leaves": 1}}, "num_leaves"),
                          ({"lightgbm": {"learning_rate": "fast"}}, "learning_rate")):
        answer = api.client.post("/tasks/churn/runs", json={"params": params}, headers=analyst)
        assert answer.status_code == 422, (params, answer.text)
        assert names in answer.text, answer.text  # the message names what to fix
    assert api.client.get("/runs", headers=analyst).json() == []


def test_run_takes_fusion_and_lightgbm_params(make_task: MakeTask, api: Api, analyst: dict[str, str],
                                              backend: Backend) -> None:
    make_task("churn")
    upload(api, analyst, "churn", csv_bytes(sample_frame()))
    params = {"fusion": {"hidden": 16}, "lightgbm": {"num_leaves": 7, "learning_rate": 0.05,
                                                     "min_child_samples": None}}
    answer = api.client.post("/tasks/churn/runs", json={"params": params}, headers=analyst)
    assert answer.status_code == 201, answer.text
    assert backend.model_config.read_run_config(answer.json()["id"]).params == params


def test_run_without_a_sample_is_409(make_task: MakeTask, api: Api, analyst: dict[str, str]) -> None:
    make_task("churn")
    answer = api.client.post("/tasks/churn/runs", json={}, headers=analyst)
    assert answer.status_code == 409
    assert "upload" in answer.json()["detail"]
