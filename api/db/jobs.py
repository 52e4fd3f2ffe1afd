"""Jobs: creation, status changes, reads, and the queue as SQL sees it.

The only code that changes a job's status is :func:`transition`. Functions here never commit:
they run inside the caller's transaction (one per API request, one per worker step), so a
request either lands whole or not at all.

The queue: a job is claimable when it is ``queued`` and, for an evaluation of a pretraining job,
when that source is no longer active (:func:`source_settled`). :func:`next_queued` is the embedded
worker's poll; :func:`waiting_on`, :func:`dependents_waiting` and :func:`queued_for_redispatch`
tell the runner and the reconciler which messages to send.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from sqlalchemy import and_, exists, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

from api.db.clock import utcnow
from api.db.models import ACTIVE_STATUSES, FINAL_STATUSES, Job, JobEvent
from ssl_core.specs import EvaluateSpec, PretrainSpec, method_label, parse_job_spec


# -- create and change ------------------------------------------------------------------------
def queue_for(kind: str) -> str:
    """The broker queue a job goes to: pretraining needs a GPU, evaluation (feature extraction
    + kNN / a small probe) runs fine on CPU workers. One function so the policy is easy to change."""
    return "gpu" if kind == "pretrain" else "cpu"


def gpus_needed(spec: Mapping[str, Any]) -> int:
    """Devices a job asks for (``jobs.gpus``): a pretraining spec's ``resources.gpus``, else 1."""
    if spec.get("kind", "pretrain") != "pretrain":
        return 1
    return int((spec.get("resources") or {}).get("gpus", 1))


def _denormalised(session: Session, spec: PretrainSpec | EvaluateSpec) -> dict[str, Any]:
    """Columns copied out of the spec for filters and the leaderboard."""
    if isinstance(spec, PretrainSpec):
        return {"method": method_label(spec), "dataset": spec.data.dataset, "protocol": None}
    method = None
    if spec.source_job_id is not None:
        method = session.scalar(select(Job.method).where(Job.id == spec.source_job_id))
    elif spec.baseline is not None:
        method = f"baseline:{spec.baseline}"
    return {"method": method, "dataset": spec.data.dataset, "protocol": spec.protocol.protocol}


def create_job(
    session: Session,
    spec: PretrainSpec | EvaluateSpec | Mapping[str, Any],
    *,
    name: str | None = None,
    tags: Sequence[str] = (),
    priority: int = 0,
    idempotency_key: str | None = None,
    parent_job_id: int | None = None,
    max_attempts: int,
    actor: str | None = "api",
    created_by: str | None = None,
    suite_id: int | None = None,
    variant: str | None = None,
    trial: int | None = None,
) -> Job:
    """Insert a queued job (and its ``None -> queued`` event); flushes, does not commit.

    ``spec`` may be a validated spec or a dict (validated here with ``parse_job_spec``).
    ``max_attempts`` is the deployment's ``Settings.max_attempts`` (the reconciler gives up on a
    job after that many worker losses).
    """
    if not isinstance(spec, (PretrainSpec, EvaluateSpec)):
        spec = parse_job_spec(dict(spec))
    now = utcnow()
    stored = spec.model_dump(mode="json")
    job = Job(
        kind=spec.kind,
        status="queued",
        name=name,
        tags=list(tags),
        priority=priority,
        spec=stored,
        gpus=gpus_needed(stored),
        queue=queue_for(spec.kind),
        source_job_id=getattr(spec, "source_job_id", None),
        parent_job_id=parent_job_id,
        idempotency_key=idempotency_key,
        attempt=0,
        max_attempts=max_attempts,
        cancel_requested=False,
        run_key=new_run_key(),
        created_at=now,
        updated_at=now,
        created_by=created_by,
        followups=followups_of(spec),
        suite_id=suite_id,
        variant=variant,
        trial=trial,
        **_denormalised(session, spec),
    )
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, from_status=None, to_status="queued", attempt=0, actor=actor, at=now))
    session.flush()
    return job


def new_run_key() -> str:
    """32 random hex characters (128 bits): a job's key, never reused even if ids are."""
    return secrets.token_hex(16)


def run_key_of(session: Session, job_id: int) -> str | None:
    """The job's run key (None for rows created before run keys existed, or no such job)."""
    return session.scalar(select(Job.run_key).where(Job.id == job_id))


def transition(
    session: Session,
    job_id: int,
    from_statuses: str | Iterable[str],
    to_status: str,
    *,
    actor: str | None = None,
    reason: str | None = None,
    where: Any = None,
    **values: Any,
) -> bool:
    """Move a job from one of ``from_statuses`` to ``to_status``: one conditional UPDATE.

    ``UPDATE jobs SET status=:to, ... WHERE id=:id AND status=:from [AND where]`` and, when it
    matched, one ``JobEvent``. ``values`` are more columns to set (plain values or SQL
    expressions such as ``Job.attempt + 1``); ``where`` is an extra condition or a list of them
    (e.g. ``Job.owner == me``). ``finished_at`` is set on final statuses unless given.
    Returns False when nothing matched (someone else moved the job first). Does not commit.
    """
    froms = (from_statuses,) if isinstance(from_statuses, str) else tuple(from_statuses)
    if not froms:
        return False
    if len(froms) == 1:
        current = froms[0]
    else:
        # Read which of the allowed statuses the job is in, so the event records the real
        # origin; the UPDATE below is still conditional on exactly that status.
        current = session.scalar(select(Job.status).where(Job.id == job_id))
        if current not in froms:
            return False
    now = utcnow()
    values.setdefault("updated_at", now)
    if to_status in FINAL_STATUSES:
        values.setdefault("finished_at", now)
    conds = [Job.id == job_id, Job.status == current]
    if where is not None:
        conds.extend(where if isinstance(where, (list, tuple)) else [where])
    stmt = (
        update(Job)
        .where(*conds)
        .values(status=to_status, **values)
        .returning(Job.attempt)
        .execution_options(synchronize_session=False)
    )
    attempt = session.execute(stmt).scalar_one_or_none()
    if attempt is None:
        return False
    session.add(
        JobEvent(job_id=job_id, from_status=current, to_status=to_status, attempt=attempt,
                 actor=actor, reason=reason, at=now)
    )
    session.flush()
    # Objects already loaded in this session must not show the old status.
    job = session.identity_map.get(session.identity_key(Job, job_id))
    if job is not None:
        session.refresh(job)
    return True


def request_cancel(session: Session, job_id: int, *, actor: str | None, reason: str) -> str | None:
    """Ask a job to stop: ``queued -> cancelled`` at once, ``running -> cancelling`` (the worker
    checkpoints at the next step boundary, then ``cancelled``). Returns the job's status afterwards
    (unchanged when it was already cancelling or finished; None when there is no such job or it
    moved between the read and the conditional update: the caller may retry). Does not commit."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status not in ("queued", "running"):
        return status
    to = "cancelled" if status == "queued" else "cancelling"
    ok = transition(session, job_id, status, to, actor=actor, reason=reason, cancel_requested=True)
    return to if ok else None


def mark_dispatched(session: Session, job_id: int) -> None:
    """Record when a broker message was last sent (the reconciler re-dispatches stale ones).
    Only a still-queued job is touched; not a status change, so no event."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued").values(dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def get_jobs(session: Session, job_ids: Iterable[int]) -> list[Job]:
    """The jobs with these ids that exist, by id."""
    return list(session.scalars(select(Job).where(Job.id.in_(list(job_ids))).order_by(Job.id)))


def get_job_by_idempotency_key(session: Session, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def spec_of(session: Session, job_id: int) -> dict[str, Any]:
    """The stored spec of a job (as JSON); NoResultFound if the job does not exist."""
    return dict(session.execute(select(Job.spec).where(Job.id == job_id)).scalar_one())


def queues_of(session: Session, job_ids: Iterable[int]) -> dict[int, str]:
    """The broker queue of each job (jobs that do not exist are absent)."""
    return {jid: q for jid, q in session.execute(select(Job.id, Job.queue).where(Job.id.in_(list(job_ids))))}


def count_active(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE_STATUSES))) or 0


def followups_of(spec: PretrainSpec | EvaluateSpec) -> int:
    """The evaluations a job queues when it succeeds (``eval.after``)."""
    return len(spec.eval.after) if isinstance(spec, PretrainSpec) else 0


def active_load(session: Session, created_by: str | None = None) -> int:
    """Active jobs plus the follow-ups they will queue, of everyone or of one owner: what the
    active-job caps count, so a pretraining with N ``eval.after`` entries takes N + 1 slots."""
    q = select(func.count(), func.coalesce(func.sum(Job.followups), 0)).where(Job.status.in_(ACTIVE_STATUSES))
    if created_by is not None:
        q = q.where(Job.created_by == created_by)
    jobs, followups = session.execute(q).one()
    return int(jobs or 0) + int(followups or 0)


def job_events(session: Session, job_id: int) -> list[JobEvent]:
    """The status history of one job, oldest first."""
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def events_of(session: Session, job_ids: Iterable[int]) -> list[JobEvent]:
    """The status history of several jobs, in the order the changes were made."""
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id.in_(list(job_ids))).order_by(JobEvent.id)))


# -- the queue --------------------------------------------------------------------------------
def source_settled() -> Any:
    """SQL condition on ``Job``: not an evaluation whose source pretraining is still active
    (queued/running/cancelling). Such a job waits in the queue: claiming it would only fail it for
    want of weights the source has not written yet."""
    src = aliased(Job)
    return ~exists(select(literal(1)).select_from(src)
                   .where(src.id == Job.source_job_id, src.status.in_(ACTIVE_STATUSES)))


def next_queued(session: Session, queues: Sequence[str]) -> int | None:
    """The job the queue serves next: highest priority, then oldest (uses ix_jobs_claim). An
    evaluation whose source pretraining is still active is passed over (the claim would refuse it),
    so it neither blocks the jobs behind it nor makes a worker spin."""
    return session.scalar(
        select(Job.id).where(Job.status == "queued", Job.queue.in_(list(queues)), source_settled())
        .order_by(Job.priority.desc(), Job.id.asc()).limit(1)
    )


def waiting_on(session: Session, job_id: int) -> tuple[int, str] | None:
    """(source id, source status) when job ``job_id`` is queued behind an active source, else None."""
    src = aliased(Job)
    row = session.execute(select(src.id, src.status).join(Job, Job.source_job_id == src.id)
                          .where(Job.id == job_id, Job.status == "queued", src.status.in_(ACTIVE_STATUSES))).first()
    return (row[0], row[1]) if row else None


def dependents_waiting(session: Session, source_job_id: int) -> list[int]:
    """Queued evaluations of ``source_job_id`` (to dispatch once it has finished), best first."""
    return list(session.scalars(select(Job.id).where(Job.source_job_id == source_job_id, Job.status == "queued")
                                .order_by(Job.priority.desc(), Job.id)))


class QueuedJob(NamedTuple):
    """A queued job as the reconciler's re-dispatch decision needs it."""

    id: int
    dispatched_at: datetime | None
    queued_since: datetime | None  # when it last entered the queue (submitted, requeued, handed back)
    source_status: str | None
    source_finished_at: datetime | None


def queued_for_redispatch(session: Session, stale_before: datetime) -> list[QueuedJob]:
    """Queued jobs whose message may need sending again, best first: never dispatched, dispatched
    before ``stale_before``, or dispatched before their source job finished."""
    src = aliased(Job)
    # updated_at moves with every dispatch; the event log says when the job last entered the queue
    queued_since = (select(func.max(JobEvent.at))
                    .where(JobEvent.job_id == Job.id, JobEvent.to_status == "queued").scalar_subquery())
    rows = session.execute(
        select(Job.id, Job.dispatched_at, queued_since, src.status, src.finished_at)
        .outerjoin(src, src.id == Job.source_job_id)
        .where(Job.status == "queued",
               or_(Job.dispatched_at.is_(None), Job.dispatched_at < stale_before,
                   and_(src.finished_at.is_not(None), src.finished_at > Job.dispatched_at)))
        .order_by(Job.priority.desc(), Job.id)
    ).all()
    return [QueuedJob(*r) for r in rows]


# -- bulk seeding -----------------------------------------------------------------------------
def insert_job_rows(session: Session, rows: Sequence[Mapping[str, Any]], batch: int = 2000) -> int:
    """Insert finished job rows as given, without events or validation (a benchmark's seed data,
    e.g. ten thousand jobs spread over a month); returns the highest job id afterwards."""
    for k in range(0, len(rows), batch):
        session.execute(insert(Job), list(rows[k:k + batch]))
    return session.scalar(select(func.max(Job.id))) or 0
