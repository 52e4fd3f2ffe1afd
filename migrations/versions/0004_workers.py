"""Workers and job placement: the workers table (who owns which GPUs, alive while it heartbeats)
and, on jobs, the GPUs a job needs, where it runs and why it waits.

Revision ID: 0004_workers
Revises: 0001_initial
Create Date: 2026-11-30

Written by hand from api/db/models.py (tests/api/test_migrations.py compares the two).
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004_workers"
down_revision: Union[str, Sequence[str], None] = "0003_run_keys"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("device_kind", sa.String(8), nullable=False),
        sa.Column("gpus", sa.JSON(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
    )
    # Existing jobs each needed one GPU: the server default fills them in. Plain ADD/DROP COLUMN,
    # never batch mode: on SQLite that copies and drops ``jobs``, and with foreign keys on the drop
    # would cascade into every job's metrics, artifacts and events.
    op.add_column("jobs", sa.Column("gpus", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("jobs", sa.Column("worker", sa.String(200), nullable=True))
    op.add_column("jobs", sa.Column("devices", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("waiting_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    for column in ("waiting_reason", "devices", "worker", "gpus"):
        op.drop_column("jobs", column)
    op.drop_table("workers")
