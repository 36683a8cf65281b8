"""The backend's configuration: one ``Settings`` read from ``ANNA_*`` environment variables.

Every path default hangs off ``data_dir``, so one variable (``ANNA_DATA_DIR``) moves a whole installation.
Child processes (the pipeline driver and its domain workers) get the same configuration through
``Settings.as_env()``, never through re-derivation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Passwords nobody may run a production installation with.
WEAK_PASSWORDS = frozenset({"admin", "password", "changeme", "change-me", "anna", "secret", "123456"})
MIN_PROD_PASSWORD_LENGTH = 12


class Settings(BaseSettings):
    """ANNA's backend settings; each field ``x`` is read from ``ANNA_X``."""

    model_config = SettingsConfigDict(env_prefix="ANNA_", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    data_dir: Path = Path("data")
    database_url: str = ""  # default: sqlite:///<data_dir>/anna.db
    marts_root: Path | None = None  # default: <data_dir>/marts
    tracking_uri: str = ""  # default: sqlite:///<data_dir>/mlflow/mlflow.db
    max_concurrent_runs: int = Field(default=2, ge=1)
    admin_password: SecretStr | None = None
    token_ttl_hours: float = Field(default=12.0, gt=0)
    min_sample_rows: int = Field(default=100, ge=1)
    min_positives: int = Field(default=20, ge=0)
    dispatch_interval_s: float = Field(default=1.0, gt=0)  # how often the dispatcher looks without a wake-up
    progress_interval_s: float = Field(default=1.0, ge=0)  # at most one progress write per step this often
    default_params: dict[str, Any] = Field(default_factory=dict)  # {"default": {...}, "<domain>": {...}}
    device: Literal["auto", "cpu", "cuda"] = "auto"
    pipeline_module: str = "anna_models.pipeline"  # where the driver finds PRE / PER_DOMAIN / POST
    log_level: str = "INFO"

    # Full mode: each switch picks a port's implementation (docs/architecture.md lists them all).
    queue: Literal["embedded", "rabbitmq"] = "embedded"  # who carries train/score requests
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    rabbitmq_prefix: str = "anna"  # names of the exchange and queues: <prefix>.requests, <prefix>.dead, ...
    request_retries: int = Field(default=3, ge=0)  # a request that keeps failing goes to the dead letters
    orchestrator: Literal["local", "airflow"] = "local"  # who runs the pipeline: a driver process, or Airflow
    airflow_url: str = "http://127.0.0.1:8080"
    airflow_username: str = "anna"
    airflow_password: SecretStr | None = None
    airflow_dag_id: str = "anna_training"
    airflow_pool: str = "anna_encoders"  # bounds how many encoders train at once (GPU slots)
    airflow_pool_slots: int = Field(default=3, ge=1)
    poll_interval_s: float = Field(default=2.0, gt=0)  # how often a worker follows the runs in Airflow

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'anna.db'}"
        self.marts_root = (self.marts_root or self.data_dir / "marts").expanduser().resolve()
        if not self.tracking_uri:
            self.tracking_uri = f"sqlite:///{self.data_dir / 'mlflow' / 'mlflow.db'}"
        return self

    @model_validator(mode="after")
    def _modes_that_fit(self) -> Settings:
        # The embedded dispatcher reaps local drivers; a worker follows Airflow. Nothing follows a mix.
        if (self.queue == "rabbitmq") != (self.orchestrator == "airflow"):
            raise ValueError(
                f"ANNA_QUEUE={self.queue} does not go with ANNA_ORCHESTRATOR={self.orchestrator}: use "
                "embedded + local (one process) or rabbitmq + airflow (full mode, with `anna worker`)")
        return self

    @property
    def full_mode(self) -> bool:
        return self.queue == "rabbitmq"

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.env != "prod" or self.admin_password is None:
            return self
        password = self.admin_password.get_secret_value()
        if password.lower() in WEAK_PASSWORDS or len(password) < MIN_PROD_PASSWORD_LENGTH:
            raise ValueError(
                "ANNA_ADMIN_PASSWORD is a default or too short for ANNA_ENV=prod: use at least "
                f"{MIN_PROD_PASSWORD_LENGTH} characters, or leave it unset to get a random one"
            )
        return self

    @property
    def marts_dir(self) -> Path:
        assert self.marts_root is not None  # set by _derive_paths
        return self.marts_root

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def score_jobs_dir(self) -> Path:
        return self.data_dir / "score-jobs"

    @property
    def model_config_repo(self) -> Path:
        return self.data_dir / "model-config.git"

    @property
    def admin_password_file(self) -> Path:
        return self.data_dir / "admin-password.txt"

    def as_env(self) -> dict[str, str]:
        """These settings as ``ANNA_*`` variables, so a child process builds exactly the same ``Settings``."""
        env = {
            "ANNA_ENV": self.env,
            "ANNA_DATA_DIR": str(self.data_dir),
            "ANNA_DATABASE_URL": self.database_url,
            "ANNA_MARTS_ROOT": str(self.marts_dir),
            "ANNA_TRACKING_URI": self.tracking_uri,
            "ANNA_MAX_CONCURRENT_RUNS": str(self.max_concurrent_runs),
            "ANNA_TOKEN_TTL_HOURS": str(self.token_ttl_hours),
            "ANNA_MIN_SAMPLE_ROWS": str(self.min_sample_rows),
            "ANNA_MIN_POSITIVES": str(self.min_positives),
            "ANNA_DISPATCH_INTERVAL_S": str(self.dispatch_interval_s),
            "ANNA_PROGRESS_INTERVAL_S": str(self.progress_interval_s),
            "ANNA_DEFAULT_PARAMS": json.dumps(self.default_params),
            "ANNA_DEVICE": self.device,
            "ANNA_PIPELINE_MODULE": self.pipeline_module,
            "ANNA_LOG_LEVEL": self.log_level,
            "ANNA_QUEUE": self.queue,
            "ANNA_RABBITMQ_URL": self.rabbitmq_url,
            "ANNA_RABBITMQ_PREFIX": self.rabbitmq_prefix,
            "ANNA_REQUEST_RETRIES": str(self.request_retries),
            "ANNA_ORCHESTRATOR": self.orchestrator,
            "ANNA_AIRFLOW_URL": self.airflow_url,
            "ANNA_AIRFLOW_USERNAME": self.airflow_username,
            "ANNA_AIRFLOW_DAG_ID": self.airflow_dag_id,
            "ANNA_AIRFLOW_POOL": self.airflow_pool,
            "ANNA_AIRFLOW_POOL_SLOTS": str(self.airflow_pool_slots),
            "ANNA_POLL_INTERVAL_S": str(self.poll_interval_s),
        }
        if self.airflow_password is not None:  # a worker needs it to reach Airflow
            env["ANNA_AIRFLOW_PASSWORD"] = self.airflow_password.get_secret_value()
        # The admin password is only needed where the first user is created: never hand it to children.
        return env


def get_settings() -> Settings:
    """The settings from the current environment (cheap; not cached, so tests may change the environment)."""
    return Settings()
