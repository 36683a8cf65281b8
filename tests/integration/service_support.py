"""What every integration fixture needs: fail-or-skip when a service is missing, and fresh PostgreSQL
databases of a test's own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest

# The server's ``postgres`` database: fixtures connect there only to create and drop their own databases.
POSTGRES_ADMIN_URL = os.environ.get(
    "ANNA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI (where every service must run), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the integration tests must run)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database named ``<prefix>_<random>``; its URL; dropped (connections and all) after."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # no driver, no server, refused login: all mean "no PostgreSQL here"
        admin.dispose()
        first_line = (str(error).splitlines() or [""])[0]
        unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {type(error).__name__}: "
                    f"{first_line}")
    try:
        yield sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
