"""Engines and migrations, for SQLite (embedded mode) and PostgreSQL (``postgresql+psycopg://``).

SQLite is set up for several processes writing at once (server, pipeline driver, domain workers): WAL
journal, a generous busy timeout, and every transaction opened with ``BEGIN IMMEDIATE`` so a transaction
that reads and then writes never fails half-way on a lock another writer took in between.

PostgreSQL runs at its default READ COMMITTED isolation; the few read-then-write steps that must not
interleave across processes (claiming a queued run, migrating) take a transaction-scoped advisory lock
(``pg_advisory_xact_lock``), released at commit or rollback. The same Alembic migrations serve both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# Keys of the PostgreSQL advisory locks ANNA takes (any 64-bit integers; they only need to be distinct).
MIGRATE_LOCK_KEY = 0x414E4E41_00000001  # "ANNA", 1
CLAIM_LOCK_KEY = 0x414E4E41_00000002  # "ANNA", 2


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean the psycopg 3 driver (the one ANNA installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_postgresql(bind: Engine | sa.Connection) -> bool:
    return bind.dialect.name == "postgresql"


def advisory_xact_lock(connection: sa.Connection, key: int) -> None:
    """On PostgreSQL, wait for the advisory lock ``key`` until this transaction ends; elsewhere nothing."""
    if is_postgresql(connection):
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate(engine: Engine) -> None:
    """Bring the database schema to the newest migration (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        advisory_xact_lock(connection, MIGRATE_LOCK_KEY)  # two processes starting at once migrate in turn
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
