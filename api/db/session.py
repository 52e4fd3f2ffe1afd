"""Engines, sessions and the schema version: the one place that knows how to reach the store.

No engine exists at import time: the API builds one in its lifespan, a worker process one per
database URL on first use (:func:`sessions_for`).
SQLite (the embedded default) gets WAL, a busy timeout and foreign keys; PostgreSQL (psycopg 3)
gets ``pool_pre_ping`` so a restarted server is noticed on the next checkout, and a connect timeout
so an unreachable server answers 503 quickly instead of hanging a request.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 5


class SchemaOutOfDate(RuntimeError):
    """The database is not at the migration head the code needs."""


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_file(url: str) -> Path | None:
    db = make_url(url).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings each store needs (extra kwargs go to create_engine)."""
    if is_sqlite(url):
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL: readers (API) never block the writer (worker) and vice versa.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # Enough kept connections for the API's thread pool under a burst: overflow connections are
    # closed on return, and reconnecting (a PostgreSQL backend fork) costs milliseconds each time.
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_timeout", 10)
    connect_args = {"connect_timeout": PG_CONNECT_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (responses are built after it)."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


_sessions_by_url: dict[str, sessionmaker[Session]] = {}
_sessions_lock = threading.Lock()


def sessions_for(database_url: str) -> sessionmaker[Session]:
    """One engine per database URL per process (a Celery worker runs many tasks in one process)."""
    with _sessions_lock:
        if database_url not in _sessions_by_url:
            _sessions_by_url[database_url] = session_factory(make_engine(database_url))
        return _sessions_by_url[database_url]


def is_connection_error(exc: BaseException) -> bool:
    """The database could not be reached (or dropped the connection) -- as opposed to a statement
    it refused (an IntegrityError, a DataError, ...) or an error of our own. Only the former is
    worth waiting out: a worker keeps its lease and the reconciler requeues the job if it expires."""
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
    return False


# -- migrations -------------------------------------------------------------------------------
# Alembic is imported inside these functions: a worker process, which reaches the store through
# make_engine/sessions_for only, never loads it.
def alembic_config(url: str) -> Any:
    """An Alembic Config pointing at ``migrations/`` and ``url`` (passed as an attribute, so a
    password with '%' in it survives ConfigParser interpolation)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (``pretextlab db upgrade``)."""
    from alembic import command

    if is_sqlite(url):
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    heads = script.get_heads()
    return ",".join(sorted(heads))


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None


def check_schema_current(engine: Engine) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at the code's migration head."""
    have, need = current_revision(engine), head_revision()
    if have != need:
        raise SchemaOutOfDate(
            f"database schema is at {have or 'nothing (empty database)'}, code needs {need}: "
            "run `pretextlab db upgrade`"
        )
