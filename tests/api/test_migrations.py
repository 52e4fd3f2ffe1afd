"""Alembic is the only way the schema is made: from empty to head on both stores, matching the models."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from api.db.models import Base
from api.db.session import alembic_config, current_revision, head_revision, make_engine, upgrade


def ours(name, type_, parent_names) -> bool:
    """This project's tables; Optuna's (made by 0005_suites for sweeps) are Optuna's schema."""
    return type_ != "table" or name in Base.metadata.tables or name == "alembic_version"


def test_upgrade_from_empty_matches_models(database_url):
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    upgrade(database_url)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"jobs", "metrics", "artifacts", "job_events", "job_runs", "alembic_version", "suites"} <= tables
    assert {"studies", "trials", "trial_intermediate_values"} <= tables  # Optuna's storage, same database
    indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
    assert {"ix_jobs_created", "ix_jobs_claim", "ix_jobs_lease", "ix_jobs_results"} <= indexes
    # `alembic check`: autogenerate finds nothing to change between the models and the migrated schema
    with engine.connect() as conn:
        opts = {"compare_type": True, "include_name": ours}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
    assert diff == []
    upgrade(database_url)  # idempotent
    # down and up again: the migration is reversible
    command.downgrade(alembic_config(database_url), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(database_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_sqlite_engine_settings(sqlite_url):
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()


def test_upgrade_creates_the_sqlite_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'db.sqlite'}"
    upgrade(url)
    assert (tmp_path / "a" / "b" / "db.sqlite").is_file()
