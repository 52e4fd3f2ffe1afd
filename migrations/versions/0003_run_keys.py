"""jobs.run_key (a random key per job: its artifact folder's name, recorded in its checkpoints) and
metric_blocks (per 64 steps of a metric: first/last step, min and max with their steps, two
filler steps).

Revision ID: 0003_run_keys
Revises: 0001_initial
Create Date: 2026-11-30

Existing rows keep NULL (their folder stays jobs/<id>); every job created from now on gets
32 random hex characters from ``api.db.jobs.create_job``. metric_blocks is filled from the stored
points here (the same statement as ``api.db.metric_blocks.rebuild_blocks``).
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003_run_keys"
down_revision: Union[str, Sequence[str], None] = "0001_initial"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Kept equal to api.db.metric_blocks.REBUILD_SQL (a migration does not import the application).
BACKFILL = """
INSERT INTO metric_blocks (job_id, name, block, n, first_step, last_step, min_step, min_value, max_step, max_value,
                           q1_step, q3_step)
SELECT g.job_id, g.name, g.block, g.n, g.first_step, g.last_step,
    (SELECT m.step FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
        AND m.step >= g.block * 64 AND m.step < g.block * 64 + 64 ORDER BY m.value, m.step LIMIT 1),
    g.min_value,
    (SELECT m.step FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
        AND m.step >= g.block * 64 AND m.step < g.block * 64 + 64 ORDER BY m.value DESC, m.step LIMIT 1),
    g.max_value,
    COALESCE((SELECT MIN(m.step) FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
        AND m.step >= g.block * 64 + 16 AND m.step < g.block * 64 + 64), g.last_step),
    COALESCE((SELECT MIN(m.step) FROM metrics m WHERE m.job_id = g.job_id AND m.name = g.name
        AND m.step >= g.block * 64 + 48 AND m.step < g.block * 64 + 64), g.last_step)
FROM (SELECT job_id, name, step / 64 AS block, COUNT(*) AS n, MIN(step) AS first_step, MAX(step) AS last_step,
             MIN(value) AS min_value, MAX(value) AS max_value
      FROM metrics GROUP BY job_id, name, step / 64) AS g
WHERE true
"""


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run_key", sa.String(64), nullable=True))
    op.create_table(
        "metric_blocks",
        sa.Column("job_id", Id, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(100), primary_key=True),
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
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_table("metric_blocks")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_key")
