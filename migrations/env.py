"""Alembic environment: the target metadata is api.db.models; the URL comes from the caller.

``api.db.session.upgrade(url)`` passes the URL as ``config.attributes["url"]``; the plain
``alembic`` command falls back to ``PRETEXTLAB_DATABASE_URL`` (api.settings).
"""

from __future__ import annotations

from alembic import context

from api.db.models import Base

config = context.config
target_metadata = Base.metadata


def service_objects_only(name, type_, parent_names) -> bool:
    """Autogenerate compares this project's tables only: Optuna's (migration 0005) share the
    database but are Optuna's schema, not ours."""
    return type_ != "table" or name in target_metadata.tables or name == "alembic_version"


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from api.settings import Settings

    return Settings().database_url


def _configure(**kw):
    url = kw.pop("url", None) or _url()
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later migrations use batch mode there.
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
        include_name=service_objects_only,
        **kw,
    )


def run_migrations_offline() -> None:
    url = _url()
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _configure(url=str(conn.engine.url), connection=conn)
        with context.begin_transaction():
            context.run_migrations()
        return
    from api.db.session import make_engine

    url = _url()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _configure(url=url, connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
