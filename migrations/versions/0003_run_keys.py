"""jobs.run_key (a random key per job: its artifact folder's name, recorded in its checkpoints) and
metric_blocks (per 64 and per 1,024 steps of a metric: first/last step, min and max with their
steps, two filler steps).

Revision ID: 0003_run_keys
Revises: 0001_initial
Create Date: 2026-11-30

Existing rows keep NULL (their folder stays jobs/<id>); every job created from now on gets
32 random hex characters from ``api.db.jobs.create_job``. metric_blocks is filled from the stored
points here (``api.db.metric_blocks.rebuild_blocks``).
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003_run_keys"
down_revision: Union[str, Sequence[str], None] = "0002_owners_tokens"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run_key", sa.String(64), nullable=True))
    op.create_table(
        "metric_blocks",
        sa.Column("job_id", Id, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("level", sa.SmallInteger(), primary_key=True),
        sa.Column("block", sa.BigInteger(), primary_key=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("first_step", sa.BigInteger(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("min_step", sa.BigInteger(), nullable=False),
        sa.Column("min_value", sa.Float(), nullable=False),
        sa.Column("max_step", sa.BigInteger(), nullable=False),
        sa.Column("max_value", sa.Float(), nullable=False),
        sa.Column("q1_step", sa.BigInteger(), nullable=False),
        sa.Column("q3_step", sa.BigInteger(), nullable=False),
    )
    # Summaries of the points already stored, by the one definition of a summary (env.py imports
    # the application's models already).
    from api.db.metric_blocks import rebuild_blocks

    bind = op.get_bind()
    for (job_id,) in bind.execute(sa.text("SELECT DISTINCT job_id FROM metrics")).all():
        rebuild_blocks(bind, job_id)


def downgrade() -> None:
    op.drop_table("metric_blocks")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_key")
