"""The reconciler: puts lost work back in the queue. Runs as a Celery beat task and as a loop
inside ``pretextlab serve``; running it in several places at once is harmless (every change is a
conditional UPDATE, and a duplicate dispatch is dropped by the atomic claim).

Each pass:

* ``running`` / ``cancelling`` jobs whose lease expired (their worker died or hung):
  ``cancelling`` -> ``cancelled``; ``running`` -> ``queued`` and re-dispatched, unless the job has
  now been lost ``max_attempts`` times, then -> ``failed`` ("lease expired N times (worker lost);
  giving up"). The lost attempt's JobRun gets outcome ``lost``.
* open sweeps advance one step (``worker.sweeps``: intermediate values, pruning, new trials);
* ``queued`` jobs whose message may have been lost (Redis restarted empty, FLUSHALL) are dispatched
  again, with an exponential back-off per job (:func:`redispatch_due`): the wait before the next
  re-send is as long as the job had already waited when it was last sent (at least
  REDISPATCH_AFTER_SECONDS, at most MAX_REDISPATCH_INTERVAL_S), so a job queued behind long jobs
  collects O(log(wait)) duplicate messages, not one per pass. Never dispatched -> sent at once.
  Evaluations waiting for an active source job are not sent (the claim would drop them); they are
  sent as soon as the source has finished after their last dispatch. Neither are jobs larger than
  every live worker on their queue (each would drop the message). Each pass writes why a queued job
  cannot start on the live fleet (``jobs.waiting_reason``) and clears it once it can.

Counting: ``attempt`` counts claims (a graceful hand-back keeps it, the next claim increments it);
the give-up rule counts *losses* (JobRun rows with outcome ``lost``), so a job handed back by
rolling restarts is never failed for it, and only real worker losses use up ``max_attempts``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy.orm import Session, sessionmaker

import api.dispatch
from api.db.clock import as_utc, utcnow
from api.db.jobs import mark_dispatched, queued_for_redispatch, queues_of
from api.db.leases import ExpiredLease, earlier_losses, expire, expired_leases
from api.db.models import ACTIVE_STATUSES
from api.db.workers import forget_workers, note_waiting, too_large
from api.db.retention import prune
from api.settings import Settings
from worker.sweeps import drive_sweeps

log = logging.getLogger("pretextlab.reconciler")
ACTOR = "reconciler"


Dispatch = Callable[[int, str], bool]  # (job_id, queue) -> published?

# The longest wait between two re-sends of one queued job's message (the back-off's cap).
MAX_REDISPATCH_INTERVAL_S = 3600.0
# A worker silent this long (killed, never deregistered) leaves GET /v1/workers.
FORGET_DEAD_WORKERS_S = 86400.0


def redispatch_interval(dispatched_at: datetime, queued_since: datetime | None, base: float,
                        cap: float = MAX_REDISPATCH_INTERVAL_S) -> float:
    """Seconds to wait after the last dispatch before sending again: as long as the job had been
    queued when it was last sent, clamped to [base, max(base, cap)]. Sends thus land at about
    base, 2 base, 4 base, ... after the job entered the queue (the gap doubles each time)."""
    waited = 0.0
    if queued_since is not None:
        waited = max(0.0, (as_utc(dispatched_at) - as_utc(queued_since)).total_seconds())
    return min(max(base, cap), max(base, waited))


def redispatch_due(now: datetime, dispatched_at: datetime | None, queued_since: datetime | None,
                   base: float, cap: float = MAX_REDISPATCH_INTERVAL_S) -> bool:
    """Whether a queued job's message should be sent again now."""
    if dispatched_at is None:
        return True
    elapsed = (as_utc(now) - as_utc(dispatched_at)).total_seconds()
    return elapsed >= redispatch_interval(dispatched_at, queued_since, base, cap)


def send_and_mark(session_factory: sessionmaker[Session], job_ids: list[int], settings: Settings,
                  dispatch: Dispatch | None = None) -> list[int]:
    """Publish "run job N" for each job to its queue and record ``dispatched_at`` for those sent.

    With no broker (embedded mode) there is nothing to send: local workers poll SQL.
    """
    if not job_ids:
        return []
    if dispatch is None:
        if settings.broker_url is None:
            return []
        dispatch = lambda jid, queue: api.dispatch.dispatch(jid, settings, queue=queue)  # noqa: E731
    with session_factory() as s:
        queues = queues_of(s, job_ids)
    sent = []
    for jid in job_ids:
        try:
            if dispatch(jid, queues.get(jid) or "gpu"):
                sent.append(jid)
        except Exception:
            log.exception("job %s: dispatch failed (will retry next pass)", jid)
    if sent:
        with session_factory() as s, s.begin():
            for jid in sent:
                mark_dispatched(s, jid)
    return sent


def _expire_one(s: Session, lease: ExpiredLease, max_attempts: int, now: datetime) -> str | None:
    """Handle one expired lease; returns what happened (or None if the job moved meanwhile)."""
    if lease.status == "cancelling":
        ok = expire(s, lease, "cancelled", now, actor=ACTOR, reason="lease expired while cancelling (worker lost)")
        return "cancelled" if ok else None
    losses = 1 + earlier_losses(s, lease.job_id, lease.attempt)
    if losses >= max_attempts:
        reason = f"lease expired {losses} times (worker lost); giving up"
        ok = expire(s, lease, "failed", now, actor=ACTOR, reason=reason, error=reason)
        return "failed" if ok else None
    ok = expire(s, lease, "queued", now, actor=ACTOR, dispatched_at=None,
                reason=f"lease expired (worker lost, attempt {lease.attempt}); requeued")
    return "requeued" if ok else None


def reconcile_once(session_factory: sessionmaker[Session], settings: Settings,
                   dispatch: Dispatch | None = None) -> dict[str, Any]:
    """One pass; returns counts and job ids: requeued, failed, cancelled, redispatched."""
    now = utcnow()
    report: dict[str, Any] = {"requeued": [], "failed": [], "cancelled": [], "redispatched": [], "trials_created": []}
    with session_factory() as s:
        expired = expired_leases(s, now)
    for lease in expired:
        try:
            with session_factory() as s, s.begin():
                what = _expire_one(s, lease, lease.max_attempts or settings.max_attempts, now)
        except Exception:
            log.exception("job %s: reconciling an expired lease failed", lease.job_id)
            continue
        if what is not None:
            log.warning("job %s: lease expired (attempt %s): %s", lease.job_id, lease.attempt, what)
            report[what].append(lease.job_id)

    try:  # queued jobs no live worker could fit say so (jobs.waiting_reason); long-dead workers go
        with session_factory() as s, s.begin():
            note_waiting(s, now - timedelta(seconds=settings.lease_seconds))
            forget_workers(s, now - timedelta(seconds=FORGET_DEAD_WORKERS_S))
    except Exception:
        log.exception("noting the jobs that wait for a large enough worker failed")
    try:  # open Optuna searches: report, prune, tell, ask (their new trial jobs are sent below)
        report["trials_created"] = drive_sweeps(session_factory, settings)
    except Exception:
        log.exception("driving the sweeps failed")
    # queued jobs the broker may have lost (and the ones just requeued); embedded mode: nothing to send
    if dispatch is None and settings.broker_url is None:
        return {**{f"n_{k}": len(v) for k, v in report.items()}, **report}
    report["redispatched"] = send_and_mark(session_factory, _redispatch_candidates(session_factory, settings, now),
                                           settings, dispatch)
    return {**{f"n_{k}": len(v) for k, v in report.items()}, **report}


def _redispatch_candidates(session_factory: sessionmaker[Session], settings: Settings, now: datetime) -> list[int]:
    """Queued jobs whose message is due again (see :func:`redispatch_due`), best first."""
    base = float(settings.redispatch_after_seconds)
    stale = now - timedelta(seconds=base)  # nothing sent more recently than this is due (SQL pre-filter)
    with session_factory() as s:
        rows = queued_for_redispatch(s, stale)
        oversized = too_large(s, now - timedelta(seconds=settings.lease_seconds))
    due = []
    for q in rows:
        if q.source_status in ACTIVE_STATUSES or q.id in oversized:
            continue  # waiting for its source, or for a worker large enough: a message would only be dropped
        if (q.dispatched_at is None
                or (q.source_finished_at is not None and as_utc(q.source_finished_at) > as_utc(q.dispatched_at))
                or redispatch_due(now, q.dispatched_at, q.queued_since, base)):
            due.append(q.id)
    return due


def reconcile_loop(session_factory: sessionmaker[Session], settings: Settings, stop_event: threading.Event,
                   dispatch: Dispatch | None = None) -> None:
    """Reconcile every RECONCILE_SECONDS until ``stop_event`` is set (the embedded serve's loop);
    every PRUNE_SECONDS also the retention sweep (``api.db.retention.prune``)."""
    next_prune = 0.0
    while True:
        try:
            reconcile_once(session_factory, settings, dispatch)
        except Exception:  # database down: try again next period
            log.exception("reconcile pass failed")
        if time.monotonic() >= next_prune:
            next_prune = time.monotonic() + settings.prune_seconds
            try:
                prune(session_factory, settings.artifact_root, settings.retention_days,
                      store=settings.artifact_store())
            except Exception:
                log.exception("retention sweep failed")
        if stop_event.wait(settings.reconcile_seconds):
            return
