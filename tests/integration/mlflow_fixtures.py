"""The MLflow tracking server the integration tests log to: one per test session, on a free loopback port.

tests/integration/conftest.py imports it for every module there; a module that imported it again would
get a second session fixture, and so a second server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from service_support import unavailable

from anna_backend.devservices.mlflow_server import start_mlflow_server
from anna_backend.devservices.process import Service, ServiceFailed, free_port


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A running ``mlflow server``: SQLite store and artifact root under a temporary home.

    ``.url`` is the tracking URI; ``.extra["artifact_root"]`` is where the server writes artifacts.
    """
    home = tmp_path_factory.mktemp("mlflow-server")
    service = None
    for _ in range(2):  # another process may take the free port before the server binds it
        try:
            service = start_mlflow_server(home, port=free_port())
            break
        except ServiceFailed as error:
            if "address already in use" not in str(error).lower():
                unavailable(f"the MLflow server did not start: {error}")
        except OSError as error:
            unavailable(f"the MLflow server could not be launched: {error}")
    if service is None:
        unavailable("the MLflow server found no free port")
    try:
        yield service
    finally:
        service.stop()
