"""Metric points of a job: one value per (job, name, step), written in batches, read downsampled.

A resumed run that logs a step again overwrites it, so metrics are never duplicated; reads return
at most ``max_points`` points whatever the number stored, downsampled M4-style (first, last, min
and max per bucket) from per-block summaries kept by :mod:`api.db.metric_blocks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.db.clock import utcnow
from api.db.metric_blocks import downsample, refresh_blocks
from api.db.models import Metric


def last_per_step(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One point per (name, step), the last one given winning, in first-seen order: what an upsert
    across batches does, within one batch (PostgreSQL refuses a statement touching a row twice)."""
    last: dict[tuple[str, int], Mapping[str, Any]] = {}
    for r in rows:
        last[(r["name"], r["step"])] = r
    return list(last.values())


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
    batch = last_per_step(batch)
    dialect = session.get_bind().dialect.name
    ins = (postgresql if dialect == "postgresql" else sqlite).insert(Metric)
    stmt = ins.on_conflict_do_update(
        index_elements=[Metric.job_id, Metric.name, Metric.step],
        set_={"value": ins.excluded.value, "epoch": ins.excluded.epoch, "created_at": ins.excluded.created_at},
    )
    session.execute(stmt, batch)
    refresh_blocks(session, job_id, [(r["name"], r["step"]) for r in batch])
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
    """At most ``max_points`` points of one metric in step order, always including the first and last.

    When the range holds more steps than ``max_points``, it is downsampled in SQL keeping each
    bucket's first, last, min and max point (M4, :mod:`api.db.metric_blocks`): spikes and dips
    survive every answer, and the cost stays O(points returned + range / 64), not O(points stored).
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
    return MetricSeries(name, downsample(session, job_id, name, lo, hi, max_points), None, True)


def step_ranges(session: Session, job_ids: list[int], name: str) -> dict[int, tuple[int, int, int]]:
    """(count, first step, last step) of metric ``name`` per job, for jobs that logged it."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Metric.job_id, func.count(), func.min(Metric.step), func.max(Metric.step))
        .where(Metric.job_id.in_(job_ids), Metric.name == name).group_by(Metric.job_id)
    ).all()
    return {job_id: (n, lo, hi) for job_id, n, lo, hi in rows}


def count_points(session: Session, job_id: int) -> int:
    """How many metric points a job has stored, all names together."""
    return session.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id)) or 0
