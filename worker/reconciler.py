"""The reconciler: puts lost work back in the queue. Runs as a Celery beat task and as a loop
inside ``pretextlab serve``; running it in several places at once is harmless (every change is a
conditional UPDATE, and a duplicate dispatch is dropped by the atomic claim).

Each pass:

* ``running`` / ``cancelling`` jobs whose lease expired (their worker died or hung):
  ``cancelling`` -> ``cancelled``; ``running`` -> ``queued`` and re-dispatched, unless the job has
  now been lost ``max_attempts`` times, then -> ``failed`` ("lease expired N times (worker lost);
  giving up"). The lost attempt's JobRun gets outcome ``lost``.
* ``queued`` jobs whose last dispatch is older than REDISPATCH_AFTER_SECONDS (or never happened) are
  dispatched again: the broker lost the message (Redis restarted empty, FLUSHALL).

Counting: ``attempt`` counts claims (a graceful hand-back keeps it, the next claim increments it);
the give-up rule counts *losses* (JobRun rows with outcome ``lost``), so a job handed back by
rolling restarts is never failed for it, and only real worker losses use up ``max_attempts``.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.models import Job, JobRun
from worker.sink import utcnow

log = logging.getLogger("pretextlab.reconciler")
ACTOR = "reconciler"


Dispatch = Callable[[int, str], bool]  # (job_id, queue) -> published?


def send_and_mark(session_factory: sessionmaker[Session], job_ids: list[int], settings: Any,
                  dispatch: Dispatch | None = None) -> list[int]:
    """Publish "run job N" for each job to its queue and record ``dispatched_at`` for those sent.

    With no broker (embedded mode) there is nothing to send: local workers poll SQL.
    """
    if not job_ids:
        return []
    if dispatch is None:
        if settings.broker_url is None:
            return []
        from api.dispatch import dispatch as publish

        dispatch = lambda jid, queue: publish(jid, settings, queue=queue)  # noqa: E731
    with session_factory() as s:
        queues = dict(s.execute(select(Job.id, Job.queue).where(Job.id.in_(job_ids))).all())
    sent = []
    for jid in job_ids:
        try:
            if dispatch(jid, queues.get(jid) or "gpu"):
                sent.append(jid)
        except Exception:
            log.exception("job %s: dispatch failed (will retry next pass)", jid)
    if sent:
        from api import crud

        with session_factory() as s, s.begin():
            for jid in sent:
                crud.mark_dispatched(s, jid)
    return sent


def _mark_lost(s: Session, job_id: int, attempt: int, now: Any) -> None:
    s.execute(
        update(JobRun)
        .where(JobRun.job_id == job_id, JobRun.attempt == attempt, JobRun.ended_at.is_(None))
        .values(ended_at=now, outcome="lost")
        .execution_options(synchronize_session=False)
    )


def _expire_one(s: Session, job_id: int, status: str, attempt: int, max_attempts: int, now: Any) -> str | None:
    """Handle one expired lease; returns what happened (or None if the job moved meanwhile)."""
    from api import crud

    # Only if it is still the same attempt and still expired: a heartbeat that landed between our
    # SELECT and this UPDATE wins (on PostgreSQL the UPDATE waits on its row lock, then re-checks).
    still_expired = [Job.attempt == attempt, Job.lease_expires_at < now]
    cleared = dict(owner=None, lease_expires_at=None)
    if status == "cancelling":
        ok = crud.transition(s, job_id, ["cancelling"], "cancelled", actor=ACTOR, where=still_expired,
                             reason="lease expired while cancelling (worker lost)", **cleared)
        outcome = "cancelled"
    else:
        losses = 1 + (s.scalar(
            select(func.count()).select_from(JobRun)
            .where(JobRun.job_id == job_id, JobRun.outcome == "lost", JobRun.attempt != attempt)) or 0)
        if losses >= max_attempts:
            reason = f"lease expired {losses} times (worker lost); giving up"
            ok = crud.transition(s, job_id, ["running"], "failed", actor=ACTOR, where=still_expired,
                                 reason=reason, error=reason, **cleared)
            outcome = "failed"
        else:
            ok = crud.transition(s, job_id, ["running"], "queued", actor=ACTOR, where=still_expired,
                                 reason=f"lease expired (worker lost, attempt {attempt}); requeued",
                                 dispatched_at=None, **cleared)
            outcome = "requeued"
    if not ok:
        return None
    _mark_lost(s, job_id, attempt, now)
    return outcome


def reconcile_once(session_factory: sessionmaker[Session], settings: Any,
                   dispatch: Dispatch | None = None) -> dict[str, Any]:
    """One pass; returns counts and job ids: requeued, failed, cancelled, redispatched."""
    now = utcnow()
    report: dict[str, Any] = {"requeued": [], "failed": [], "cancelled": [], "redispatched": []}
    with session_factory() as s:
        expired = s.execute(
            select(Job.id, Job.status, Job.attempt, Job.max_attempts)
            .where(Job.status.in_(("running", "cancelling")), Job.lease_expires_at < now)
            .order_by(Job.id)
        ).all()
    for job_id, status, attempt, max_attempts in expired:
        try:
            with session_factory() as s, s.begin():
                what = _expire_one(s, job_id, status, attempt, max_attempts or settings.max_attempts, now)
        except Exception:
            log.exception("job %s: reconciling an expired lease failed", job_id)
            continue
        if what is not None:
            log.warning("job %s: lease expired (attempt %s): %s", job_id, attempt, what)
            report[what].append(job_id)

    # queued jobs the broker may have lost (and the ones just requeued); embedded mode: nothing to send
    if dispatch is None and settings.broker_url is None:
        return {**{f"n_{k}": len(v) for k, v in report.items()}, **report}
    stale = now - timedelta(seconds=settings.redispatch_after_seconds)
    with session_factory() as s:
        lost_msgs = list(s.scalars(
            select(Job.id).where(Job.status == "queued", or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale))
            .order_by(Job.priority.desc(), Job.id)
        ))
    report["redispatched"] = send_and_mark(session_factory, lost_msgs, settings, dispatch)
    return {**{f"n_{k}": len(v) for k, v in report.items()}, **report}


def reconcile_loop(session_factory: sessionmaker[Session], settings: Any, stop_event: threading.Event,
                   dispatch: Dispatch | None = None) -> None:
    """Reconcile every RECONCILE_SECONDS until ``stop_event`` is set (the embedded serve's loop)."""
    while True:
        try:
            reconcile_once(session_factory, settings, dispatch)
        except Exception:  # database down: try again next period
            log.exception("reconcile pass failed")
        if stop_event.wait(settings.reconcile_seconds):
            return
