"""Suites: every SQL statement on the ``suites`` table and on a suite's children.

A suite's children are ordinary jobs carrying ``suite_id`` and a ``variant`` label (sweep trials
also their Optuna trial id in ``trial``); the runner copies both onto the evaluations a child
queues when it succeeds. A suite's status is never stored: :func:`derive_status` computes it from
its children's statuses, the cancel flag and, for a search, whether every trial has been created.
Functions here never commit.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterable

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from api.db.clock import utcnow
from api.db.models import ACTIVE_STATUSES, Job, Metric, Suite
from api.db.retention import delete_job

# A suite's evaluations (baselines, and each child's follow-ups) are queued this much ahead of its
# remaining pretrainings (the queue serves higher priority, then the oldest, first): they are short,
# and the table then fills in row by row instead of only at the end.
EVAL_FIRST = 1


def create_suite(session: Session, *, name: str | None, kind: str, request: dict[str, Any], plan: dict[str, Any],
                 search: dict[str, Any] | None, idempotency_key: str | None, created_by: str | None) -> Suite:
    """Insert a suite (its children are created by the caller, in the same transaction); flushes."""
    now = utcnow()
    suite = Suite(name=name, kind=kind, request=request, plan=plan, search=search, best=None, search_done=False,
                  cancel_requested=False, idempotency_key=idempotency_key, created_by=created_by,
                  created_at=now, updated_at=now)
    session.add(suite)
    session.flush()
    if search is not None:
        suite.study_name = f"pretextlab-suite-{suite.id}"
        session.flush()
    return suite


def get_suite(session: Session, suite_id: int) -> Suite | None:
    return session.get(Suite, suite_id)


def get_suite_by_key(session: Session, key: str) -> Suite | None:
    return session.scalar(select(Suite).where(Suite.idempotency_key == key))


def list_suites(session: Session, *, created_by: str | None = None, before_id: int | None = None,
                limit: int = 50) -> list[Suite]:
    """Newest first (ids grow with creation), ``before_id`` for the next page."""
    q = select(Suite)
    if created_by is not None:
        q = q.where(Suite.created_by == created_by)
    if before_id is not None:
        q = q.where(Suite.id < before_id)
    return list(session.scalars(q.order_by(Suite.id.desc()).limit(limit)))


def children(session: Session, suite_id: int) -> list[Job]:
    """Every job of a suite (pretrainings, their evaluations, baselines), oldest first."""
    return list(session.scalars(select(Job).where(Job.suite_id == suite_id).order_by(Job.id)))


def status_counts(session: Session, suite_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """{suite id: {job status: count}} over all children."""
    out: dict[int, dict[str, int]] = {}
    rows = session.execute(select(Job.suite_id, Job.status, func.count()).where(Job.suite_id.in_(list(suite_ids)))
                           .group_by(Job.suite_id, Job.status))
    for sid, status, n in rows:
        out.setdefault(sid, {})[status] = n
    return out


def derive_status(suite: Suite, counts: dict[str, int]) -> str:
    """queued | running | cancelling | cancelled | succeeded | failed, from the children.

    Active children: ``cancelling`` once a cancel was asked, ``running`` when any child runs (or a
    search still has trials to create), else ``queued``. All finished: ``cancelled`` after a cancel,
    ``failed`` when any child failed, else ``succeeded`` -- a sweep's pruned trials are cancelled
    by design and do not make it fail (``cancelled`` only when none succeeded)."""
    active = sum(counts.get(s, 0) for s in ACTIVE_STATUSES)
    search_open = suite.search is not None and not suite.search_done
    if suite.cancel_requested:
        return "cancelling" if active else "cancelled"
    if active or search_open:
        started = any(counts.get(s) for s in ("running", "cancelling", "succeeded", "failed", "cancelled"))
        return "running" if started else "queued"
    if counts.get("failed"):
        return "failed"
    if counts.get("succeeded"):
        return "succeeded"
    return "cancelled" if counts.get("cancelled") else "queued"


def active_children(session: Session, suite_id: int) -> list[int]:
    """Children still queued, running or cancelling; pretrainings first (cancelling one
    fails the evaluations queued behind it anyway)."""
    return list(session.scalars(select(Job.id).where(Job.suite_id == suite_id, Job.status.in_(ACTIVE_STATUSES))
                                .order_by(Job.kind.desc(), Job.id)))


def mark_cancel(session: Session, suite_id: int) -> None:
    session.execute(update(Suite).where(Suite.id == suite_id).values(cancel_requested=True, updated_at=utcnow())
                    .execution_options(synchronize_session=False))


def suite_cancelled(session: Session, suite_id: int) -> bool:
    """Whether the suite was cancelled (a child that succeeds meanwhile queues no evaluations)."""
    return bool(session.scalar(select(Suite.cancel_requested).where(Suite.id == suite_id)))


def open_searches(session: Session) -> list[Suite]:
    """Searches whose driver still has work: trials to create, report, prune or tell."""
    return list(session.scalars(select(Suite).where(Suite.search.is_not(None), Suite.search_done.is_(False))
                                .order_by(Suite.id)))


def save_search_state(session: Session, suite_id: int, *, best: dict[str, Any] | None, done: bool) -> None:
    """The driver's result of one pass: the best trial so far and whether the search is over."""
    values: dict[str, Any] = {"search_done": done, "updated_at": utcnow(), "driven_until": None}
    if best is not None:
        values["best"] = best
    session.execute(update(Suite).where(Suite.id == suite_id).values(**values)
                    .execution_options(synchronize_session=False))


def claim_drive(session: Session, suite_id: int, hold_s: float) -> bool:
    """Take the right to drive a search for ``hold_s`` seconds (one conditional UPDATE): two
    reconcilers never ask trials for one search at once. Released by :func:`save_search_state`."""
    now = utcnow()
    res = session.execute(update(Suite).where(Suite.id == suite_id, or_(Suite.driven_until.is_(None),
                                                                       Suite.driven_until < now))
                          .values(driven_until=now + timedelta(seconds=hold_s))
                          .execution_options(synchronize_session=False))
    return bool(res.rowcount)


def metric_points(session: Session, job_id: int, name: str) -> list[tuple[int, float]]:
    """Every (step, value) of one metric of one job, by step: a sweep trial's intermediate values
    (a monitor reports once per epoch or so, a few hundred points at most)."""
    rows = session.execute(select(Metric.step, Metric.value).where(Metric.job_id == job_id, Metric.name == name)
                           .order_by(Metric.step))
    return [(int(s), float(v)) for s, v in rows]


def delete_suite(session: Session, suite_id: int) -> list[int] | None:
    """Delete a finished suite and its children (evaluations first); returns the deleted job ids,
    or None (deleting nothing) when a child is still active. Does not commit."""
    if active_children(session, suite_id):
        return None
    jobs = children(session, suite_id)
    ids = [j.id for j in sorted(jobs, key=lambda j: (j.kind != "evaluate", j.id))]
    for job_id in ids:
        delete_job(session, job_id)
    suite = get_suite(session, suite_id)
    if suite is not None:
        session.delete(suite)
    session.flush()
    return ids
