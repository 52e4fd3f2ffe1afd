"""Reads and writes of the job store. The only code that changes a job's status is :func:`transition`.

Functions here never commit: they run inside the caller's transaction (one per API request, one
per worker step), so a request either lands whole or not at all.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import and_, exists, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from api.db.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Artifact,
    Job,
    JobEvent,
    Metric,
    utcnow,
)
from ssl_core.specs import EvaluateSpec, PretrainSpec, method_label, parse_job_spec

DEFAULT_MAX_ATTEMPTS = 3


# -- jobs -------------------------------------------------------------------------------------
def queue_for(kind: str) -> str:
    """The broker queue a job goes to: pretraining needs a GPU, evaluation (feature extraction
    + kNN / a small probe) runs fine on CPU workers. One function so the policy is easy to change."""
    return "gpu" if kind == "pretrain" else "cpu"


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
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    actor: str | None = "api",
) -> Job:
    """Insert a queued job (and its ``None -> queued`` event); flushes, does not commit.

    ``spec`` may be a validated spec or a dict (validated here with ``parse_job_spec``).
    """
    if not isinstance(spec, (PretrainSpec, EvaluateSpec)):
        spec = parse_job_spec(dict(spec))
    now = utcnow()
    job = Job(
        kind=spec.kind,
        status="queued",
        name=name,
        tags=list(tags),
        priority=priority,
        spec=spec.model_dump(mode="json"),
        queue=queue_for(spec.kind),
        source_job_id=getattr(spec, "source_job_id", None),
        parent_job_id=parent_job_id,
        idempotency_key=idempotency_key,
        attempt=0,
        max_attempts=max_attempts,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        **_denormalised(session, spec),
    )
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, from_status=None, to_status="queued", attempt=0, actor=actor, at=now))
    session.flush()
    return job


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


def mark_dispatched(session: Session, job_id: int) -> None:
    """Record when a broker message was last sent (the reconciler re-dispatches stale ones).
    Only a still-queued job is touched; not a status change, so no event."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued").values(dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def get_job_by_idempotency_key(session: Session, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def count_active(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE_STATUSES))) or 0


def job_events(session: Session, job_id: int) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def artifact_count(session: Session, job_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == job_id)) or 0


# -- listing with an opaque cursor ---------------------------------------------------------
class BadCursor(ValueError):
    """The cursor was not produced by this server."""


def _as_utc(ts: datetime) -> datetime:
    # SQLite gives naive datetimes back (stored as UTC); PostgreSQL aware ones.
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def encode_cursor(job: Job) -> str:
    raw = json.dumps([_as_utc(job.created_at).isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, job_id = json.loads(raw)
        when = _as_utc(datetime.fromisoformat(ts))
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise ValueError
        return when, job_id
    except Exception as exc:  # noqa: BLE001 - any garbage is the same client error
        raise BadCursor("cursor: not a cursor returned by GET /v1/jobs") from exc


def _tag_filter(session: Session, tag: str) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import cast

        return cast(Job.tags, postgresql.JSONB).contains([tag])
    je = func.json_each(Job.tags).table_valued("value")
    return exists(select(literal(1)).select_from(je).where(je.c.value == tag))


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    tag: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Job], str | None]:
    """Newest first; returns (page, next cursor or None). Keyset pagination on (created_at, id)."""
    q = select(Job)
    if status:
        q = q.where(Job.status == status)
    if kind:
        q = q.where(Job.kind == kind)
    if method:
        q = q.where(Job.method == method)
    if dataset:
        q = q.where(Job.dataset == dataset)
    if tag:
        q = q.where(_tag_filter(session, tag))
    if cursor:
        ts, last_id = decode_cursor(cursor)
        q = q.where(or_(Job.created_at < ts, and_(Job.created_at == ts, Job.id < last_id)))
    rows = list(session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    return page, (encode_cursor(page[-1]) if len(rows) > limit else None)


# -- metrics ----------------------------------------------------------------------------------
def write_metrics(session: Session, job_id: int, rows: Iterable[Mapping[str, Any]]) -> int:
    """Upsert metric points ``{name, step, value, epoch?}`` in one batched statement.

    One value per (job, name, step): a resumed run that logs a step again overwrites it, so
    metrics are never duplicated. Returns the number of rows sent.
    """
    now = utcnow()
    batch = [
        {"job_id": job_id, "name": str(r["name"]), "step": int(r["step"]), "value": float(r["value"]),
         "epoch": None if r.get("epoch") is None else int(r["epoch"]), "created_at": now}
        for r in rows
    ]
    # NaN cannot be stored portably (SQLite turns it into NULL); a diverged run is reported by
    # the job's error ("non-finite loss at step N"), so NaN points are dropped here.
    batch = [r for r in batch if not math.isnan(r["value"])]
    if not batch:
        return 0
    # Within one batch the last value for a (name, step) wins, like the upsert across batches;
    # PostgreSQL refuses a statement that touches the same row twice.
    batch = list({(r["name"], r["step"]): r for r in batch}.values())
    dialect = session.get_bind().dialect.name
    ins = (postgresql if dialect == "postgresql" else sqlite).insert(Metric)
    stmt = ins.on_conflict_do_update(
        index_elements=[Metric.job_id, Metric.name, Metric.step],
        set_={"value": ins.excluded.value, "epoch": ins.excluded.epoch, "created_at": ins.excluded.created_at},
    )
    session.execute(stmt, batch)
    return len(batch)


def metric_names(session: Session, job_id: int) -> list[str]:
    """Distinct metric names of a job, by a loose index scan on the (job_id, name, step) key:
    one index probe per name, not a pass over millions of points."""
    sql = text(
        """
        WITH RECURSIVE n(name) AS (
            SELECT MIN(name) FROM metrics WHERE job_id = :job
            UNION ALL
            SELECT (SELECT MIN(m.name) FROM metrics m WHERE m.job_id = :job AND m.name > n.name)
            FROM n WHERE n.name IS NOT NULL
        )
        SELECT name FROM n WHERE name IS NOT NULL
        """
    )
    return [r[0] for r in session.execute(sql, {"job": job_id})]


# Bucket starts lo, lo+stride, ... < hi; per bucket the first stored point (one index probe);
# plus the point at hi. PostgreSQL: a LATERAL probe returns the whole row at once.
_DOWNSAMPLE_PG = text(
    """
    SELECT p.step, p.value, p.epoch
    FROM generate_series(CAST(:lo AS BIGINT), CAST(:hi AS BIGINT) - 1, CAST(:stride AS BIGINT)) AS t(x)
    CROSS JOIN LATERAL (
        SELECT m.step, m.value, m.epoch FROM metrics m
        WHERE m.job_id = :job AND m.name = :name AND m.step >= t.x AND m.step < t.x + CAST(:stride AS BIGINT)
        ORDER BY m.step LIMIT 1
    ) AS p
    UNION
    SELECT m.step, m.value, m.epoch FROM metrics m WHERE m.job_id = :job AND m.name = :name AND m.step = :hi
    ORDER BY 1
    """
)
# SQLite has no LATERAL: the probe picks the step (index only), then one lookup per picked step.
# Empty buckets give NULL, which IN never matches (no IS NOT NULL filter: it would run the probe twice).
_DOWNSAMPLE_PORTABLE = text(
    """
    WITH RECURSIVE t(x) AS (
        SELECT CAST(:lo AS BIGINT)
        UNION ALL
        SELECT x + CAST(:stride AS BIGINT) FROM t WHERE x + CAST(:stride AS BIGINT) < CAST(:hi AS BIGINT)
    ),
    picked(step) AS (
        SELECT (SELECT m2.step FROM metrics m2
                WHERE m2.job_id = :job AND m2.name = :name
                  AND m2.step >= t.x AND m2.step < t.x + CAST(:stride AS BIGINT)
                ORDER BY m2.step LIMIT 1)
        FROM t
        UNION
        SELECT CAST(:hi AS BIGINT)
    )
    SELECT m.step, m.value, m.epoch FROM metrics m
    WHERE m.job_id = :job AND m.name = :name AND m.step IN (SELECT step FROM picked)
    ORDER BY m.step
    """
)


@dataclass
class MetricSeries:
    name: str
    points: list[tuple[int, float, int | None]]  # (step, value, epoch)
    total_in_range: int | None  # None when not counted (downsampled without a full scan)
    downsampled: bool


def query_metrics(
    session: Session,
    job_id: int,
    name: str,
    *,
    start_step: int | None = None,
    end_step: int | None = None,
    max_points: int = 1000,
) -> MetricSeries:
    """At most ``max_points`` points of one metric, always including the first and last.

    Downsampling happens in SQL by step ranges: the step span [lo, hi] is cut into
    ``max_points - 1`` equal buckets and the first stored point of each bucket is taken with one
    index probe (``ORDER BY step LIMIT 1`` on the primary key), plus the last point. The cost is O(max_points log n), whatever the number of stored points.
    """
    max_points = max(2, int(max_points))
    base = [Metric.job_id == job_id, Metric.name == name]
    if start_step is not None:
        base.append(Metric.step >= start_step)
    if end_step is not None:
        base.append(Metric.step <= end_step)
    lo, hi = session.execute(select(func.min(Metric.step), func.max(Metric.step)).where(*base)).one()
    if lo is None:
        return MetricSeries(name, [], 0, False)
    cols = (Metric.step, Metric.value, Metric.epoch)
    if hi - lo + 1 <= max_points:
        # steps are unique per (job, name): the range cannot hold more than max_points rows
        rows = session.execute(select(*cols).where(*base).order_by(Metric.step)).all()
        return MetricSeries(name, [tuple(r) for r in rows], len(rows), False)
    stride = math.ceil((hi - lo) / (max_points - 1))
    sql = _DOWNSAMPLE_PG if session.get_bind().dialect.name == "postgresql" else _DOWNSAMPLE_PORTABLE
    rows = session.execute(sql, {"lo": lo, "hi": hi, "stride": stride, "job": job_id, "name": name}).all()
    return MetricSeries(name, [tuple(r) for r in rows], None, True)


# -- artifacts --------------------------------------------------------------------------------
def register_artifact(session: Session, job_id: int, name: str, kind: str, size: int) -> None:
    """Record (or update) a file under the job's artifact folder; ``name`` is relative to it."""
    from api.security import check_artifact_name

    name = check_artifact_name(name)
    now = utcnow()
    dialect = session.get_bind().dialect.name
    ins = (postgresql if dialect == "postgresql" else sqlite).insert(Artifact).values(
        job_id=job_id, name=name, kind=kind, size=int(size), created_at=now, updated_at=now
    )
    session.execute(
        ins.on_conflict_do_update(
            index_elements=[Artifact.job_id, Artifact.name],
            set_={"kind": ins.excluded.kind, "size": ins.excluded.size, "updated_at": ins.excluded.updated_at},
        )
    )


def list_artifacts(session: Session, job_id: int) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def get_artifact(session: Session, job_id: int, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


# -- leaderboard ------------------------------------------------------------------------------
def leaderboard(
    session: Session, *, dataset: str | None = None, protocol: str | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """Succeeded evaluations, best top-1 first, each with the pretraining it measured."""
    src = aliased(Job)
    q = (
        select(Job, src)
        .outerjoin(src, src.id == Job.source_job_id)
        .where(Job.kind == "evaluate", Job.status == "succeeded")
    )
    if dataset:
        q = q.where(Job.dataset == dataset)
    if protocol:
        q = q.where(Job.protocol == protocol)
    q = q.order_by(Job.top1.desc().nulls_last(), Job.id.desc()).limit(limit)
    out = []
    for ev, pre in session.execute(q).all():
        result = ev.result or {}
        pre_spec = (pre.spec if pre is not None else None) or {}
        out.append(
            {
                "evaluation_job_id": ev.id,
                "pretrain_job_id": pre.id if pre is not None else None,
                "method": (pre.method if pre is not None else None) or ev.method or result.get("method"),
                "backbone": (pre_spec.get("backbone") or {}).get("name") or result.get("backbone"),
                "epochs": pre_spec.get("epochs", result.get("epochs")),
                "dataset": ev.dataset,
                "protocol": ev.protocol,
                "top1": ev.top1 if ev.top1 is not None else result.get("top1"),
                "top5": ev.top5 if ev.top5 is not None else result.get("top5"),
                "finished_at": ev.finished_at,
            }
        )
    return out
