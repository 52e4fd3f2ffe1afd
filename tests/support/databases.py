"""Throwaway databases: a fresh PostgreSQL database per test or benchmark run, dropped afterwards,
created through an admin URL (any existing database on the server), and SQLite file URLs."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# The database the tests and benchmarks connect to in order to CREATE their own (.ci/run makes it).
PG_ADMIN_URL = os.environ.get("PRETEXTLAB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def sqlite_file_url(directory: Path, name: str = "pretextlab.sqlite") -> str:
    return f"sqlite:///{Path(directory) / name}"


def _admin_execute(admin_url: str, statement: str) -> None:
    import sqlalchemy as sa

    # CREATE/DROP DATABASE cannot run inside a transaction
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(statement))
    finally:
        admin.dispose()


def create_database(admin_url: str = PG_ADMIN_URL, prefix: str = "pretextlab_test") -> str:
    """Create an empty database with a unique name on the admin URL's server; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    """Drop the database of ``url``, closing the connections other processes still hold on it."""
    name = url.rsplit("/", 1)[1]
    _admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_database(admin_url: str = PG_ADMIN_URL, prefix: str = "pretextlab_test",
                       keep: bool = False) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for the ``with`` block (kept afterwards when ``keep``)."""
    url = create_database(admin_url, prefix)
    try:
        yield url
    finally:
        if not keep:
            drop_database(url, admin_url)


def postgres_reachable(admin_url: str = PG_ADMIN_URL) -> bool:
    """Whether the admin URL's server accepts TCP connections (a cheap check before CREATE DATABASE)."""
    from sqlalchemy.engine import make_url

    from tests.support.net import port_open

    url = make_url(admin_url)
    return port_open(url.port or 5432, url.host or "127.0.0.1")
