"""The reconciler: puts lost work back in the queue. Runs as a Celery beat task and as a loop
inside ``pretextlab serve``; running it in several places at once is harmless (every change is a
conditional UPDATE, and a duplicate dispatch is dropped by the atomic claim).

Each pass:

* ``running`` / ``cancelling`` jobs whose lease expired (their worker died or hung):
  ``cancelling`` -> ``cancelled``; ``running`` -> ``queued`` and re-dispatched, unless the job has
  now been lost ``max_attempts`` times, then -> ``failed`` ("lease expired N times (worker lost);
  giving up"). The lost attempt's JobRun gets outcome ``lost``.
* ``queued`` jobs whose message may have been lost (Redis restarted empty, FLUSHALL) are dispatched
  again, with an exponential back-off per job (:func:`redispatch_due`): the wait before the next
  re-send is as long as the job had already waited when it was last sent (at least
  REDISPATCH_AFTER_SECONDS, at most MAX_REDISPATCH_INTERVAL_S), so a job queued behind long jobs
  collects O(log(wait)) duplicate messages, not one per pass. Never dispatched -> sent at once.
  Evaluations waiting for an active source job are not sent (the claim would drop them); they are
  sent as soon as the source has finished after their last dispatch.

Counting: ``attempt`` counts claims (a graceful hand-back keeps it, the next claim increments it);
the give-up rule counts *losses* (JobRun rows with outcome ``lost``), so a job handed back by
rolling restarts is never failed for it, and only real worker losses use up ``max_attempts``.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any, Callable

from datetime import datetime, timezone

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from api.db.models import ACTIVE_STATUSES, Job, JobEvent, JobRun
from worker.sink import utcnow

log = logging.getLogger("pretextlab.reconciler")
ACTOR = "reconciler"


Dispatch = Callable[[int, str], bool]  # (job_id, queue) -> published?

# The longest wait between two re-sends of one queued job's message (the back-off's cap).
MAX_REDISPATCH_INTERVAL_S = 3600.0


def _utc(ts: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes back (stored as UTC); PostgreSQL aware ones.
    if ts is None:
        return None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def redispatch_interval(dispatched_at: datetime, queued_since: datetime | None, base: float,
                        cap: float = MAX_REDISPATCH_INTERVAL_S) -> float:
    """Seconds to wait after the last dispatch before sending again: as long as the job had been
    queued when it was last sent, clamped to [base, max(base, cap)]. Sends thus land at about
    base, 2 base, 4 base, ... after the job entered the queue (the gap doubles each time)."""
    waited = 0.0
    if queued_since is not None:
        waited = max(0.0, (_utc(dispatched_at) - _utc(queued_since)).total_seconds())
    return min(max(base, cap), max(base, waited))


def redispatch_due(now: datetime, dispatched_at: datetime | None, queued_since: datetime | None,
                   base: float, cap: float = MAX_REDISPATCH_INTERVAL_S) -> bool:
    """Whether a queued job's message should be sent again now."""
    if dispatched_at is None:
        return True
    elapsed = (_utc(now) - _utc(dispatched_at)).total_seconds()
    return elapsed >= redispatch_interval(dispatched_at, queued_since, base, cap)


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
    report["redispatched"] = send_and_mark(session_factory, _redispatch_candidates(session_factory, settings, now),
                                           settings, dispatch)
    return {**{f"n_{k}": len(v) for k, v in report.items()}, **report}


def _redispatch_candidates(session_factory: sessionmaker[Session], settings: Any, now: datetime) -> list[int]:
    """Queued jobs whose message is due again (see :func:`redispatch_due`), best first."""
    base = float(settings.redispatch_after_seconds)
    stale = now - timedelta(seconds=base)  # nothing sent more recently than this is due (SQL pre-filter)
    src = aliased(Job)
    # when the job last entered the queue (submitted, requeued, handed back): updated_at moves with
    # every dispatch, the event log does not
    queued_since = (select(func.max(JobEvent.at))
                    .where(JobEvent.job_id == Job.id, JobEvent.to_status == "queued").scalar_subquery())
    with session_factory() as s:
        rows = s.execute(
            select(Job.id, Job.dispatched_at, queued_since, src.status, src.finished_at)
            .outerjoin(src, src.id == Job.source_job_id)
            .where(Job.status == "queued",
                   or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale,
                       and_(src.finished_at.is_not(None), src.finished_at > Job.dispatched_at)))
            .order_by(Job.priority.desc(), Job.id)
        ).all()
    due = []
    for job_id, dispatched_at, since, src_status, src_finished in rows:
        if src_status in ACTIVE_STATUSES:
            continue  # an evaluation waiting for its source: a message would only be dropped
        if (dispatched_at is None or (src_finished is not None and _utc(src_finished) > _utc(dispatched_at))
                or redispatch_due(now, dispatched_at, since, base)):
            due.append(job_id)
    return due


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
