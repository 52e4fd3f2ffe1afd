"""Owners and named tokens: jobs.created_by, jobs.followups, the api_tokens and job_tombstones tables.

Revision ID: 0002_owners_tokens
Revises: 0001_initial
Create Date: 2026-11-30

``created_by`` is the name of the token that submitted a job (``owner`` stays the worker holding
its lease); ``followups`` is how many evaluations the job queues when it succeeds (``eval.after``),
so the active-job caps can count them before they exist. Tokens are stored as SHA-256 hashes.
A tombstone names a deleted job whose folder the retention sweep still has to remove.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002_owners_tokens"
down_revision: Union[str, Sequence[str], None] = "0001_initial"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("created_by", sa.String(100), nullable=True))
        batch.add_column(sa.Column("followups", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_jobs_created_by_status", ["created_by", "status"])
    op.create_table(
        "api_tokens",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
    )
    op.create_table(
        "job_tombstones",
        sa.Column("job_id", Id, primary_key=True, autoincrement=False),
        sa.Column("deleted_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_tombstones")
    op.drop_table("api_tokens")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_created_by_status")
        batch.drop_column("followups")
        batch.drop_column("created_by")
