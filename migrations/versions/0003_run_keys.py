"""jobs.run_key: a random key per job, naming its artifact folder and recorded in its checkpoints.

Revision ID: 0003_run_keys
Revises: 0001_initial
Create Date: 2026-11-30

Existing rows keep NULL (their folder stays jobs/<id>); every job created from now on gets
32 random hex characters from ``api.db.jobs.create_job``.
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003_run_keys"
down_revision: Union[str, Sequence[str], None] = "0001_initial"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("run_key", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run_key")
