"""Suites and sweeps: the ``suites`` table; on jobs, the suite a job belongs to, its variant and
its sweep trial; and the tables of Optuna's RDBStorage, which keeps a sweep's study in this same
database.

Revision ID: 0005_suites
Revises: 0004_workers
Create Date: 2026-11-30

Optuna's tables are created here, from Optuna's own models, because the service connects as a role
that may not create tables (``api.db.roles``); at run time the storage is opened with table
creation and Optuna's own version check off (``api.db.sweeps.open_storage``): that check reads the
``alembic_version`` table, which holds this project's revision, not Optuna's.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005_suites"
down_revision: Union[str, Sequence[str], None] = "0004_workers"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def _optuna_metadata() -> sa.MetaData:
    from optuna.storages._rdb import models  # Optuna's schema, exactly as RDBStorage would create it

    return models.BaseModel.metadata


def upgrade() -> None:
    op.create_table(
        "suites",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("search", sa.JSON(), nullable=True),
        sa.Column("study_name", sa.String(200), nullable=True),
        sa.Column("best", sa.JSON(), nullable=True),
        sa.Column("search_done", sa.Boolean(), nullable=False),
        sa.Column("driven_until", TS, nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_suites_created", "suites", ["created_at", "id"])
    # Plain ADD COLUMN, never batch mode (see 0004): no foreign key, SQLite cannot add one.
    op.add_column("jobs", sa.Column("suite_id", Id, nullable=True))
    op.add_column("jobs", sa.Column("variant", sa.String(200), nullable=True))
    op.add_column("jobs", sa.Column("trial", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_suite", "jobs", ["suite_id", "variant"])
    _optuna_metadata().create_all(op.get_bind())


def downgrade() -> None:
    _optuna_metadata().drop_all(op.get_bind())
    op.drop_index("ix_jobs_suite", table_name="jobs")
    for column in ("trial", "variant", "suite_id"):
        op.drop_column("jobs", column)
    op.drop_index("ix_suites_created", table_name="suites")
    op.drop_table("suites")
