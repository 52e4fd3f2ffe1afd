"""What changed: the jobs whose row was updated since a moment, for the event stream.

One indexed-range query per tick for every subscriber together (``api.routes.events``), reading only
the columns a job summary needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.clock import as_utc
from api.db.models import Job

SUMMARY_COLUMNS = (Job.id, Job.kind, Job.status, Job.name, Job.method, Job.dataset, Job.tags, Job.attempt,
                   Job.max_attempts, Job.progress, Job.error, Job.created_at, Job.started_at, Job.finished_at,
                   Job.updated_at, Job.created_by)


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def summary(row: Any) -> dict[str, Any]:
    """The job summary the event stream sends (a plain JSON-able dict)."""
    progress = row.progress if isinstance(row.progress, dict) else {}
    return {
        "id": row.id, "kind": row.kind, "status": row.status, "name": row.name, "method": row.method,
        "dataset": row.dataset, "tags": list(row.tags or []), "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "progress": {k: progress.get(k) for k in ("epoch", "step", "total_steps", "images_per_sec", "eta_s")},
        "error": row.error, "created_at": _iso(row.created_at), "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at), "updated_at": _iso(row.updated_at), "created_by": row.created_by,
    }


def changed_since(session: Session, since: datetime, limit: int = 2000) -> list[dict[str, Any]]:
    """Summaries of the jobs updated at or after ``since``, oldest change first."""
    q = (select(*SUMMARY_COLUMNS).where(Job.updated_at >= since)
         .order_by(Job.updated_at, Job.id).limit(limit))
    return [summary(r) for r in session.execute(q)]


def job_summary(session: Session, job_id: int) -> dict[str, Any] | None:
    row = session.execute(select(*SUMMARY_COLUMNS).where(Job.id == job_id)).first()
    return summary(row) if row is not None else None
