"""What ``GET /metrics`` reports about the queue and the workers, read from SQL at scrape time.

Workers run in other processes (and on other hosts), so their counters -- claims, requeues, lease
losses, run durations -- are not kept in the API's memory: they are counted from the rows every
claim and status change already writes (``job_runs``, ``job_events``). Any API replica thus
reports the same, complete numbers, with no Prometheus multiprocess directory to share.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from api.db.models import STATUSES, Job, JobEvent, JobRun

# Run durations (seconds): from a tiny CPU job to a multi-day pretraining.
DURATION_BUCKETS: tuple[float, ...] = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600)


class RunDurations(NamedTuple):
    """One outcome's finished runs: cumulative bucket counts (as DURATION_BUCKETS), count, sum."""

    outcome: str
    buckets: list[int]
    count: int
    total_s: float


def jobs_by_status(session: Session) -> dict[str, int]:
    """Jobs per status (every status present, zeros included): the queue depth and what is done."""
    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {s: int(counts.get(s, 0)) for s in STATUSES}


def claims(session: Session) -> int:
    """Executions started (one job_runs row per claim)."""
    return int(session.scalar(select(func.count()).select_from(JobRun)) or 0)


def lease_losses(session: Session) -> int:
    """Attempts whose worker died or hung until its lease expired (outcome ``lost``)."""
    return int(session.scalar(select(func.count()).select_from(JobRun).where(JobRun.outcome == "lost")) or 0)


def requeues(session: Session) -> dict[str, int]:
    """running -> queued changes: by the reconciler (lease expired) or by the worker (handed back
    on shutdown)."""
    reason = case((JobEvent.actor == "reconciler", literal("lease_expired")), else_=literal("handed_back"))
    rows = session.execute(
        select(reason, func.count()).where(JobEvent.from_status == "running", JobEvent.to_status == "queued")
        .group_by(reason)).all()
    out = {"lease_expired": 0, "handed_back": 0}
    out.update({str(r): int(n) for r, n in rows})
    return out


def _seconds(session: Session, start: Any, end: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def run_durations(session: Session, buckets: Sequence[float] = DURATION_BUCKETS) -> list[RunDurations]:
    """Histogram of finished runs' durations per outcome, counted in SQL (one pass over job_runs)."""
    secs = _seconds(session, JobRun.started_at, JobRun.ended_at)
    cols = [func.sum(case((secs <= b, 1), else_=0)) for b in buckets]
    rows = session.execute(
        select(JobRun.outcome, func.count(), func.coalesce(func.sum(secs), 0.0), *cols)
        .where(JobRun.ended_at.is_not(None)).group_by(JobRun.outcome)).all()
    return [RunDurations(str(r[0]), [int(x or 0) for x in r[3:]], int(r[1]), float(r[2] or 0.0)) for r in rows]
