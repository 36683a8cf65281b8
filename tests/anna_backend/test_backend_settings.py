"""Settings: every path follows the data dir, and child processes rebuild the very same settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from anna_backend.settings import Settings


def test_paths_default_under_the_data_dir(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    data = tmp_path / "data"
    assert settings.data_dir == data.resolve()
    assert settings.database_url == f"sqlite:///{data.resolve() / 'anna.db'}"
    assert settings.marts_dir == data.resolve() / "marts"
    assert settings.tracking_uri == f"sqlite:///{data.resolve() / 'mlflow' / 'mlflow.db'}"
    assert settings.max_concurrent_runs == 2
    assert settings.min_sample_rows == 100 and settings.min_positives == 20


def test_environment_round_trip(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNA_DATA_DIR", str(tmp_path / "x"))
    monkeypatch.setenv("ANNA_MAX_CONCURRENT_RUNS", "3")
    monkeypatch.setenv("ANNA_DEFAULT_PARAMS", '{"default": {"max_epochs": 2}}')
    settings = Settings()
    assert settings.max_concurrent_runs == 3 and settings.default_params == {"default": {"max_epochs": 2}}
    for key in list(settings.as_env()):
        monkeypatch.delenv(key, raising=False)
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


def test_full_mode_round_trips_with_its_airflow_password(
        clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path, queue="rabbitmq", orchestrator="airflow",
                        airflow_password="s3cret")
    assert settings.full_mode
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == settings


@pytest.mark.parametrize(("queue", "orchestrator"), [("rabbitmq", "local"), ("embedded", "airflow")])
def test_a_queue_and_orchestrator_that_do_not_fit_are_refused(
        clean_env: None, tmp_path: Path, queue: str, orchestrator: str) -> None:
    refusal = f"ANNA_QUEUE={queue} does not go with ANNA_ORCHESTRATOR={orchestrator}"
    with pytest.raises(ValueError, match=refusal):
        Settings(data_dir=tmp_path, queue=queue, orchestrator=orchestrator)
