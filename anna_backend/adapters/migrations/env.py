"""Alembic environment: runs on the connection ``database.migrate`` hands in, or on the configured URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from anna_backend.adapters.tables import metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        from anna_backend.adapters.database import make_engine
        from anna_backend.settings import get_settings

        url = context.config.get_main_option("sqlalchemy.url") or get_settings().database_url
        with make_engine(url).begin() as own:
            _run(own)
    else:
        _run(connection)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
