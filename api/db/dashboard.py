"""Reads only the dashboard needs: the evaluations of a pretraining job's backbone."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Job


def evaluations_of(session: Session, job_id: int, limit: int = 200) -> list[Job]:
    """Evaluation jobs whose source is ``job_id``, newest first."""
    q = select(Job).where(Job.source_job_id == job_id, Job.kind == "evaluate").order_by(Job.id.desc()).limit(limit)
    return list(session.scalars(q))
