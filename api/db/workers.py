"""Workers and GPU placement: the fleet as SQL sees it.

A worker process owns a fixed set of GPUs (or CPU slots on a host without one). It registers a
row in ``workers`` when it starts, renews ``heartbeat_at`` while it lives and deletes the row on a
clean exit; a worker whose heartbeat is older than the caller's ``alive_after`` is dead and counts
for nothing (its jobs come back through their leases, :mod:`api.db.leases`).

Each job needs ``jobs.gpus`` devices (a pretraining spec's ``resources.gpus``, 1 otherwise). The
worker decides which of its own devices a job gets -- only it allocates them, so no cross-process
lock is needed -- and the claim records them (``jobs.worker``, ``jobs.devices``): a worker's busy
devices are those of its running jobs, its free ones the rest. :func:`next_fitting` is the
embedded worker's poll (jobs that fit its free devices, best first); :func:`note_waiting` tells
a queued job that no live worker could ever fit it, in ``jobs.waiting_reason``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, NamedTuple, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from api.db.clock import as_utc, utcnow
from api.db.jobs import source_settled
from api.db.models import OWNED_STATUSES, Job, Worker


# -- a worker's own row --------------------------------------------------------------------------
def register_worker(session: Session, name: str, *, host: str, device_kind: str, gpus: Sequence[int],
                    queues: Sequence[str]) -> None:
    """Insert (or replace) this worker's row, heartbeat now. Does not commit."""
    now = utcnow()
    session.execute(delete(Worker).where(Worker.name == name).execution_options(synchronize_session=False))
    session.add(Worker(name=name, host=host, device_kind=device_kind, gpus=[int(g) for g in gpus],
                       queues=list(queues), started_at=now, heartbeat_at=now))
    session.flush()


def heartbeat_worker(session: Session, name: str) -> bool:
    """Renew the worker's heartbeat; False when its row is gone (it must register again)."""
    res = session.execute(update(Worker).where(Worker.name == name).values(heartbeat_at=utcnow())
                          .execution_options(synchronize_session=False))
    return res.rowcount == 1


def deregister_worker(session: Session, name: str) -> None:
    """Remove the worker's row (a clean exit)."""
    session.execute(delete(Worker).where(Worker.name == name).execution_options(synchronize_session=False))


def forget_workers(session: Session, silent_since: datetime) -> int:
    """Delete the rows of workers silent since before ``silent_since`` (killed, never deregistered);
    returns how many. A worker that comes back registers again from its heartbeat."""
    res = session.execute(delete(Worker).where(Worker.heartbeat_at < silent_since)
                          .execution_options(synchronize_session=False))
    return int(res.rowcount or 0)


# -- the fleet -------------------------------------------------------------------------------------
class WorkerState(NamedTuple):
    name: str
    host: str
    device_kind: str
    gpus: list[int]
    free_gpus: list[int]
    queues: list[str]
    jobs: list[dict[str, Any]]  # {"id", "gpus", "devices"} of each job it runs now
    started_at: datetime
    heartbeat_at: datetime
    alive: bool


def fleet(session: Session, alive_after: datetime) -> list[WorkerState]:
    """Every registered worker, by name: its devices, which are free, its running jobs, alive or not."""
    workers = list(session.scalars(select(Worker).order_by(Worker.name)))
    running = session.execute(
        select(Job.id, Job.worker, Job.gpus, Job.devices)
        .where(Job.status.in_(OWNED_STATUSES), Job.worker.in_([w.name for w in workers]))
        .order_by(Job.id)
    ).all()
    out = []
    for w in workers:
        jobs = [{"id": r.id, "gpus": r.gpus, "devices": list(r.devices or [])} for r in running if r.worker == w.name]
        busy = {int(d) for j in jobs for d in j["devices"]}
        gpus = [int(g) for g in w.gpus]
        out.append(WorkerState(w.name, w.host, w.device_kind, gpus, [g for g in gpus if g not in busy],
                               list(w.queues), jobs, as_utc(w.started_at), as_utc(w.heartbeat_at),
                               as_utc(w.heartbeat_at) >= as_utc(alive_after)))
    return out


def capacity_by_queue(session: Session, alive_after: datetime) -> dict[str, int]:
    """The most devices one live worker serving each queue owns (what the largest job there may ask)."""
    caps: dict[str, int] = {}
    for queues, gpus in session.execute(select(Worker.queues, Worker.gpus).where(Worker.heartbeat_at >= alive_after)):
        for q in queues:
            caps[q] = max(caps.get(q, 0), len(gpus))
    return caps


def waiting_reason(gpus: int, queue: str, capacity: int | None) -> str | None:
    """Why a job needing ``gpus`` devices cannot run on the live fleet (None when it can)."""
    unit = "GPU" if gpus == 1 else "GPUs"
    if not capacity:
        return f"waiting: needs {gpus} {unit}, no live worker serves queue {queue}"
    if gpus > capacity:
        return f"waiting: needs {gpus} {unit}, largest worker has {capacity}"
    return None


def note_waiting(session: Session, alive_after: datetime) -> None:
    """Set ``waiting_reason`` on queued jobs no live worker could ever fit, clear it on the others;
    one UPDATE per (queue, gpus) group among the queued jobs, touching only rows that change."""
    caps = capacity_by_queue(session, alive_after)
    groups = session.execute(select(Job.queue, Job.gpus).where(Job.status == "queued").distinct()).all()
    for queue, gpus in groups:
        reason = waiting_reason(gpus, queue, caps.get(queue))
        match = [Job.status == "queued", Job.queue == queue, Job.gpus == gpus]
        if reason is None:
            match.append(Job.waiting_reason.is_not(None))
        else:
            match.append(Job.waiting_reason.is_distinct_from(reason))
        session.execute(update(Job).where(*match).values(waiting_reason=reason)
                        .execution_options(synchronize_session=False))


def too_large(session: Session, alive_after: datetime) -> set[int]:
    """Queued jobs larger than every live worker serving their queue: a message would only be
    dropped by each. (With no live worker on a queue at all, messages wait in the broker as usual.)"""
    ids: set[int] = set()
    for queue, cap in capacity_by_queue(session, alive_after).items():
        ids.update(session.scalars(select(Job.id).where(Job.status == "queued", Job.queue == queue, Job.gpus > cap)))
    return ids


# -- claiming by fit -------------------------------------------------------------------------------
def fits(free: int) -> Any:
    """SQL condition on ``Job``: it needs at most ``free`` devices (the claim's extra condition)."""
    return Job.gpus <= int(free)


def next_fitting(session: Session, queues: Sequence[str], free: int,
                 exclude: Iterable[int] = ()) -> tuple[int, int] | None:
    """(id, gpus) of the best queued job that fits ``free`` devices: highest priority, then
    oldest; evaluations waiting for their source and the ids in ``exclude`` (jobs this worker is
    already starting) are passed over. None when nothing fits."""
    if free < 1:
        return None
    cond = [Job.status == "queued", Job.queue.in_(list(queues)), fits(free), source_settled()]
    skip = list(exclude)
    if skip:
        cond.append(Job.id.not_in(skip))
    row = session.execute(select(Job.id, Job.gpus).where(*cond)
                          .order_by(Job.priority.desc(), Job.id.asc()).limit(1)).first()
    return (int(row[0]), int(row[1])) if row else None


def gpus_of(session: Session, job_id: int) -> int | None:
    """Devices job ``job_id`` needs, or None if it does not exist."""
    return session.scalar(select(Job.gpus).where(Job.id == job_id))


def undispatch(session: Session, job_id: int) -> None:
    """A worker had no room for a queued job whose message it received: clear ``dispatched_at``
    so the reconciler sends it again on its next pass (not a status change, no event)."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(dispatched_at=None)
                    .execution_options(synchronize_session=False))
