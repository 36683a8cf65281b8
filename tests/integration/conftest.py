"""The integration fixtures (real PostgreSQL, RabbitMQ, Airflow and MLflow server), one module per service."""

from airflow_fixtures import airflow  # noqa: F401
from full_fixtures import anna_database, api, full_anna, rabbitmq_prefix  # noqa: F401
from mlflow_fixtures import mlflow_server  # noqa: F401
