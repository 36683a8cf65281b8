"""`anna run-full` says what is missing before it starts anything."""

from __future__ import annotations

import socket
from pathlib import Path

from anna_backend.entrypoints.full import FullOptions, check_prerequisites


def test_missing_services_and_taken_ports_are_named_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = FullOptions(data_dir=tmp_path, postgres_url="postgresql+psycopg://postgres@127.0.0.1:1/postgres",
                              rabbitmq_url="amqp://guest:secret@127.0.0.1:1/%2F", port=port)
        problems = check_prerequisites(options)
    assert len(problems) == 3, problems
    postgres, rabbitmq, busy = problems
    assert "PostgreSQL does not answer at postgresql+psycopg://postgres@127.0.0.1:1/postgres" in postgres
    assert "ANNA_FULL_POSTGRES_URL" in postgres
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:1/" in rabbitmq and "secret" not in rabbitmq
    assert "rabbitmq-server" in rabbitmq
    assert f"port {port}, meant for ANNA, is taken" in busy
