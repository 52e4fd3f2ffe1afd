"""Leases: which worker runs which attempt of a job, fenced in SQL.

* **Claim** (:func:`claim`) is one conditional UPDATE ``queued -> running`` (owner, ``attempt + 1``,
  a lease) plus a ``JobRun(job_id, attempt)`` row in the same transaction; the unique
  (job_id, attempt) makes a second run of the same attempt impossible even if two claims raced.
* **Fencing** (:class:`JobLease`): every later write for the job -- metrics, progress, artifacts,
  the heartbeat, the final status -- runs inside :meth:`JobLease.guarded`, a transaction that
  *starts* with a conditional UPDATE of the job row (``WHERE id AND owner AND attempt AND status
  IN (running, cancelling)``), which also renews the lease. If it matches no row, the lease is gone
  (the reconciler requeued the job, or it was finished elsewhere) and the transaction is rolled
  back: a worker that lost its job writes nothing for it. The UPDATE also takes the row's write
  lock (PostgreSQL) or the database's write lock (SQLite), so the reconciler cannot requeue the job
  between the check and the writes.
* **End of a run** (:func:`end_run`): the attempt's ``JobRun`` gets its outcome, whether the worker
  finished it (:meth:`JobLease.finish`) or the reconciler found its lease expired
  (:func:`expire`, outcome ``lost``).
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.clock import as_utc, utcnow
from api.db.jobs import source_settled, transition
from api.db.models import OWNED_STATUSES, Job, JobRun


class LeaseLost(RuntimeError):
    """The job is no longer ours (lease expired and was reclaimed, or the job was finished)."""


class JobLease:
    """One claimed attempt of one job; every write for the job goes through :meth:`guarded`."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, owner: str, attempt: int,
                 lease_seconds: float):
        self.sessions = sessions
        self.job_id = int(job_id)
        self.owner = owner
        self.attempt = int(attempt)
        self.lease_seconds = float(lease_seconds)
        self.lost = False
        self.cancel_requested = False
        self.status = "running"

    def _guard(self, session: Session, **fields: Any) -> None:
        now = utcnow()
        res = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.owner == self.owner, Job.attempt == self.attempt,
                   Job.status.in_(OWNED_STATUSES))
            .values(lease_expires_at=now + timedelta(seconds=self.lease_seconds), heartbeat_at=now, **fields)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            self.lost = True
            raise LeaseLost(f"job {self.job_id}: lease of {self.owner} attempt {self.attempt} is lost")
        # Read the cancel flag in the same transaction: the API sets it (and `cancelling`).
        status, cancel = session.execute(
            select(Job.status, Job.cancel_requested).where(Job.id == self.job_id)
        ).one()
        self.status = status
        self.cancel_requested = bool(cancel) or status == "cancelling"

    @contextmanager
    def guarded(self, **fields: Any) -> Iterator[Session]:
        """A transaction that holds the job (raises LeaseLost, writing nothing, if it is not ours).
        ``fields`` are more job columns to set with the lease renewal (e.g. ``progress``)."""
        if self.lost:
            raise LeaseLost(f"job {self.job_id}: lease already lost")
        with self.sessions() as session, session.begin():
            self._guard(session, **fields)
            yield session

    def heartbeat(self) -> None:
        """Renew the lease and refresh the cancel flag (one conditional UPDATE + one read)."""
        with self.guarded():
            pass

    def finish(self, from_statuses: list[str], to_status: str, outcome: str, *, reason: str | None = None,
               on_commit: Callable[[Session], list[int]] | None = None, **fields: Any) -> list[int]:
        """End this attempt in one guarded transaction: the status change, the JobRun outcome and
        whatever ``on_commit`` adds (the follow-up jobs of a success, whose ids it returns)."""
        created: list[int] = []
        with self.guarded() as s:
            if not transition(s, self.job_id, from_statuses, to_status, actor=self.owner, reason=reason, **fields):
                raise LeaseLost(f"job {self.job_id}: not in {from_statuses} any more")
            end_run(s, self.job_id, self.attempt, outcome)
            if on_commit is not None:
                created = on_commit(s)
        return created


def claim(sessions: sessionmaker[Session], job_id: int, worker_id: str, lease_seconds: float,
          job_dir: Path | None = None, *, fits: Any = None, **placement: Any) -> JobLease | None:
    """Atomically take a queued job, in a transaction of its own; None if it is not claimable
    (running, finished, cancelled, gone, or an evaluation waiting for its source). ``fits``: an
    extra SQL condition (the job fits the worker's free devices); ``placement``: more job columns
    to set (``worker``, ``devices``)."""
    now = utcnow()
    with sessions() as s, s.begin():
        fields: dict[str, Any] = dict(
            owner=worker_id, attempt=Job.attempt + 1, lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now, started_at=func.coalesce(Job.started_at, now), cancel_requested=False,
            progress=None,  # the last attempt's step is not this one's: it reports its own
        )
        if job_dir is not None:
            fields["artifact_dir"] = str(job_dir)
        where = [source_settled()] if fits is None else [source_settled(), fits]
        if not transition(s, job_id, ["queued"], "running", actor=worker_id, reason="claimed",
                          where=where, **fields, **placement):
            return None
        attempt = s.execute(select(Job.attempt).where(Job.id == job_id)).scalar_one()
        # Unique (job_id, attempt): if this ever collided, the whole claim rolls back.
        s.add(JobRun(job_id=job_id, attempt=attempt, worker=worker_id, started_at=now))
    return JobLease(sessions, job_id, worker_id, attempt, lease_seconds)


def end_run(session: Session, job_id: int, attempt: int, outcome: str, at: datetime | None = None) -> None:
    """Close the JobRun of ``attempt`` with ``outcome`` (succeeded, failed, cancelled, released,
    lost); a run already closed keeps its first outcome."""
    session.execute(
        update(JobRun)
        .where(JobRun.job_id == job_id, JobRun.attempt == attempt, JobRun.ended_at.is_(None))
        .values(ended_at=at or utcnow(), outcome=outcome)
        .execution_options(synchronize_session=False)
    )


def runs_of(session: Session, job_ids: Iterable[int]) -> list[JobRun]:
    """Every execution start of these jobs, by job then attempt."""
    return list(session.scalars(select(JobRun).where(JobRun.job_id.in_(list(job_ids)))
                                .order_by(JobRun.job_id, JobRun.attempt)))


def time_used(session: Session, job_id: int, attempt: int) -> float:
    """Seconds the job's earlier attempts ran (claim to end; a lost one to when it was found lost):
    what ``max_runtime_s`` has already consumed when ``attempt`` starts."""
    rows = session.execute(select(JobRun.started_at, JobRun.ended_at)
                           .where(JobRun.job_id == job_id, JobRun.attempt < attempt,
                                  JobRun.ended_at.is_not(None))).all()
    return sum(max(0.0, (as_utc(end) - as_utc(start)).total_seconds()) for start, end in rows)


# -- expired leases (the reconciler) --------------------------------------------------------------
class ExpiredLease(NamedTuple):
    job_id: int
    status: str
    attempt: int
    max_attempts: int | None


def expired_leases(session: Session, now: datetime) -> list[ExpiredLease]:
    """Running or cancelling jobs whose lease ran out before ``now``: their worker died or hung."""
    rows = session.execute(
        select(Job.id, Job.status, Job.attempt, Job.max_attempts)
        .where(Job.status.in_(OWNED_STATUSES), Job.lease_expires_at < now)
        .order_by(Job.id)
    ).all()
    return [ExpiredLease(*r) for r in rows]


def earlier_losses(session: Session, job_id: int, attempt: int) -> int:
    """How many earlier attempts of the job ended ``lost`` (hand-backs and failures do not count)."""
    return session.scalar(
        select(func.count()).select_from(JobRun)
        .where(JobRun.job_id == job_id, JobRun.outcome == "lost", JobRun.attempt != attempt)) or 0


def expire(session: Session, lease: ExpiredLease, to_status: str, now: datetime, *, actor: str, reason: str,
           **fields: Any) -> bool:
    """Move a job whose lease expired to ``to_status`` (owner and lease cleared) and mark the lost
    attempt's run ``lost``. Only if it is still the same attempt and still expired: a heartbeat that
    landed since :func:`expired_leases` wins (on PostgreSQL the UPDATE waits on the row lock, then
    re-checks). Returns False when the job moved meanwhile."""
    still_expired = [Job.attempt == lease.attempt, Job.lease_expires_at < now]
    if not transition(session, lease.job_id, [lease.status], to_status, actor=actor, reason=reason,
                      where=still_expired, owner=None, lease_expires_at=None, **fields):
        return False
    end_run(session, lease.job_id, lease.attempt, "lost", at=now)
    return True
