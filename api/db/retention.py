"""Removing what a deployment no longer wants to keep: a finished job whole, or the metrics and
artifact rows of jobs finished long ago (the retention period).

Only finished jobs (succeeded, failed, cancelled) are ever touched: a running job's rows are
guarded by its lease and a queued job has nothing to prune. Rows go first, folders after
(:func:`remove_job_folder`), so a folder without a row is an orphan any sweep may remove:
:func:`prune` is that sweep (the reconciler, the ``pretextlab.prune`` beat, ``pretextlab db prune``).
One artifact root belongs to one database: a folder whose id has no row there is removed.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.clock import utcnow
from api.db.models import ACTIVE_STATUSES, FINAL_STATUSES, Artifact, Job, JobEvent, JobRun, Metric

log = logging.getLogger("pretextlab.retention")


def active_dependents(session: Session, job_id: int) -> list[int]:
    """Evaluations of ``job_id`` still queued/running/cancelling: they need its backbone file."""
    return list(session.scalars(select(Job.id).where(Job.source_job_id == job_id,
                                                     Job.status.in_(ACTIVE_STATUSES)).order_by(Job.id)))


def delete_job(session: Session, job_id: int) -> bool:
    """Delete a finished job and every row that belongs to it (metrics, artifacts, events, runs).

    Evaluations that measured it keep their rows and results; their ``source_job_id`` and
    ``parent_job_id`` become NULL (the foreign keys say SET NULL, done here for SQLite too).
    Returns False (deleting nothing) unless the job exists and is finished. Does not commit."""
    gone = session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(FINAL_STATUSES))
                           .execution_options(synchronize_session=False).returning(Job.id)).first()
    if gone is None:
        return False
    for model in (Metric, Artifact, JobEvent, JobRun):  # CASCADE would do it; explicit works without FKs on
        session.execute(delete(model).where(model.job_id == job_id).execution_options(synchronize_session=False))
    for column in (Job.source_job_id, Job.parent_job_id):
        session.execute(update(Job).where(column == job_id).values({column.key: None})
                        .execution_options(synchronize_session=False))
    return True


class Pruned(NamedTuple):
    jobs: list[int]
    metrics: int
    artifacts: int


def prune_finished_before(session: Session, cutoff: datetime, batch: int = 500) -> Pruned:
    """Delete the metric and artifact rows of up to ``batch`` jobs that finished before ``cutoff``
    (the job row, its events, runs and result stay: the record that it ran). Does not commit."""
    has_rows = or_(exists().where(Metric.job_id == Job.id), exists().where(Artifact.job_id == Job.id))
    ids = list(session.scalars(select(Job.id).where(Job.status.in_(FINAL_STATUSES), Job.finished_at < cutoff,
                                                    has_rows).order_by(Job.id).limit(batch)))
    if not ids:
        return Pruned([], 0, 0)
    m = session.execute(delete(Metric).where(Metric.job_id.in_(ids)).execution_options(synchronize_session=False))
    a = session.execute(delete(Artifact).where(Artifact.job_id.in_(ids)).execution_options(synchronize_session=False))
    return Pruned(ids, m.rowcount or 0, a.rowcount or 0)


def folders_to_remove(session: Session, folder_ids: Iterable[int], cutoff: datetime | None) -> list[int]:
    """Of the job ids that have a folder, those whose folder may go: no job row (a deleted job, or
    a database reset under kept storage), or finished before ``cutoff`` (None: no retention)."""
    ids = sorted(set(folder_ids))
    remove: list[int] = []
    for k in range(0, len(ids), 1000):
        chunk = ids[k:k + 1000]
        rows = dict(session.execute(select(Job.id, Job.finished_at).where(
            Job.id.in_(chunk), or_(Job.status.in_(ACTIVE_STATUSES), Job.finished_at.is_(None),
                                   Job.finished_at >= cutoff) if cutoff is not None else Job.id.in_(chunk))).all())
        remove += [i for i in chunk if i not in rows]
    return remove


# -- files -------------------------------------------------------------------------------------
def remove_job_folder(jobs_root: Path, job_id: int) -> bool:
    """Remove ``jobs_root/<id>``: renamed aside first (atomic), so a half-deleted folder is never
    mistaken for the job's; True when it is gone (or was never there), False when this process may
    not write there (the API's read-only mount): the next sweep removes it."""
    folder = Path(jobs_root) / str(int(job_id))
    if not folder.exists():
        return True
    trash = Path(jobs_root) / f".deleting-{int(job_id)}-{secrets.token_hex(4)}"
    try:
        os.rename(folder, trash)
    except OSError as exc:
        log.info("job %s: folder not removed here (%s); the retention sweep will", job_id, type(exc).__name__)
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _folder_ids(jobs_root: Path) -> list[int]:
    try:
        names = os.listdir(jobs_root)
    except FileNotFoundError:
        return []
    return [int(n) for n in names if n.isdigit()]


def prune(sessions: sessionmaker[Session], artifact_root: Path, retention_days: float | None,
          now: datetime | None = None) -> dict[str, Any]:
    """One retention pass: metric/artifact rows of jobs finished more than ``retention_days`` ago
    (none when it is None), then every job folder without a row or past retention, and leftovers
    of interrupted removals. Returns counts."""
    now = now or utcnow()
    cutoff = now - timedelta(days=retention_days) if retention_days is not None else None
    jobs_root = Path(artifact_root).resolve() / "jobs"
    pruned: list[int] = []
    metrics = artifacts = 0
    while cutoff is not None:
        with sessions() as s, s.begin():
            batch = prune_finished_before(s, cutoff)
        pruned += batch.jobs
        metrics, artifacts = metrics + batch.metrics, artifacts + batch.artifacts
        if not batch.jobs:
            break
    with sessions() as s:
        doomed = folders_to_remove(s, _folder_ids(jobs_root), cutoff)
    removed = [i for i in doomed if remove_job_folder(jobs_root, i)]
    for leftover in jobs_root.glob(".deleting-*") if jobs_root.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    if pruned or removed:
        log.info("retention: pruned rows of %d job(s) (%d metrics, %d artifacts), removed %d folder(s)",
                 len(pruned), metrics, artifacts, len(removed))
    return {"jobs_pruned": pruned, "metrics_deleted": metrics, "artifacts_deleted": artifacts,
            "folders_removed": removed}
