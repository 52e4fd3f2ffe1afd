"""Removing what a deployment no longer wants to keep: a finished job whole (``DELETE``), or the
metrics, artifact rows and folders of jobs finished long ago (the retention period).

Only finished jobs (succeeded, failed, cancelled) are ever touched: a running job's rows are
guarded by its lease and a queued job has nothing to prune. A folder is removed only when SQL
names it -- a deleted job's tombstone, or a job past retention -- never because no row mentions
it: a fresh database pointed at a kept artifact root must not wipe that root. :func:`prune` is the
sweep (the reconciler loop, the ``pretextlab.prune`` beat, ``pretextlab db prune``).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.clock import utcnow
from api.db.models import (ACTIVE_STATUSES, FINAL_STATUSES, Artifact, Job, JobEvent, JobRun, JobTombstone, Metric,
                           MetricBlock)
from ssl_core.storage import ArtifactStore, StoreError

log = logging.getLogger("pretextlab.retention")


def active_dependents(session: Session, job_id: int) -> list[int]:
    """Evaluations of ``job_id`` still queued/running/cancelling: they need its backbone file."""
    return list(session.scalars(select(Job.id).where(Job.source_job_id == job_id,
                                                     Job.status.in_(ACTIVE_STATUSES)).order_by(Job.id)))


def delete_job(session: Session, job_id: int) -> bool:
    """Delete a finished job and every row that belongs to it (metrics, artifacts, events, runs),
    leaving a tombstone until its folder is gone (:func:`forget_tombstone`).

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
    session.add(JobTombstone(job_id=job_id, deleted_at=utcnow()))
    session.flush()
    return True


def forget_tombstone(session: Session, job_id: int) -> None:
    """The deleted job's folder is gone: nothing left to sweep for it."""
    session.execute(delete(JobTombstone).where(JobTombstone.job_id == job_id)
                    .execution_options(synchronize_session=False))


def tombstones(session: Session, limit: int = 1000) -> list[int]:
    return list(session.scalars(select(JobTombstone.job_id).order_by(JobTombstone.job_id).limit(limit)))


def expired_jobs(session: Session, cutoff: datetime, batch: int = 500) -> list[int]:
    """Finished before ``cutoff`` and still holding metric or artifact rows (not yet pruned)."""
    has_rows = or_(exists().where(Metric.job_id == Job.id), exists().where(Artifact.job_id == Job.id))
    return list(session.scalars(select(Job.id).where(Job.status.in_(FINAL_STATUSES), Job.finished_at < cutoff,
                                                     has_rows).order_by(Job.id).limit(batch)))


def drop_job_data(session: Session, job_ids: list[int]) -> tuple[int, int]:
    """Delete the metric and artifact rows of finished ``job_ids`` (the job row, events, runs and
    result stay: the record that it ran); returns (metrics, artifacts) deleted. Does not commit."""
    if not job_ids:
        return 0, 0
    finished = select(Job.id).where(Job.id.in_(job_ids), Job.status.in_(FINAL_STATUSES))
    m = session.execute(delete(Metric).where(Metric.job_id.in_(finished)).execution_options(synchronize_session=False))
    session.execute(delete(MetricBlock).where(MetricBlock.job_id.in_(finished))  # their summaries go too
                    .execution_options(synchronize_session=False))
    a = session.execute(delete(Artifact).where(Artifact.job_id.in_(finished))
                        .execution_options(synchronize_session=False))
    return m.rowcount or 0, a.rowcount or 0


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


def _remove_job_files(jobs_root: Path, job_id: int, store: ArtifactStore | None) -> bool:
    """The job's local folder, and its objects when the artifact store is remote; False: retry later."""
    if not remove_job_folder(jobs_root, job_id):
        return False
    if store is not None and store.remote:
        try:
            store.delete_job(job_id)
        except StoreError as exc:
            log.warning("retention: the objects of job %s stay until the next sweep (%s)", job_id, exc)
            return False
    return True


def prune(sessions: sessionmaker[Session], artifact_root: Path, retention_days: float | None,
          now: datetime | None = None, store: ArtifactStore | None = None) -> dict[str, Any]:
    """One sweep: the folders of deleted jobs (tombstones), then, with a retention period, the
    folders and metric/artifact rows of jobs finished more than ``retention_days`` ago (folder and,
    with a remote ``store``, its objects first: rows are dropped only for jobs whose folder is gone, so a failure is retried). Returns
    what was done."""
    jobs_root = Path(artifact_root).resolve() / "jobs"
    with sessions() as s:
        dead = tombstones(s)
    removed = [i for i in dead if _remove_job_files(jobs_root, i, store)]
    with sessions() as s, s.begin():
        for i in removed:
            forget_tombstone(s, i)
    pruned: list[int] = []
    metrics = artifacts = 0
    cutoff = (now or utcnow()) - timedelta(days=retention_days) if retention_days is not None else None
    while cutoff is not None:
        with sessions() as s:
            batch = [i for i in expired_jobs(s, cutoff) if i not in pruned]
        gone = [i for i in batch if _remove_job_files(jobs_root, i, store)]
        with sessions() as s, s.begin():
            m, a = drop_job_data(s, gone)
        pruned, metrics, artifacts = pruned + gone, metrics + m, artifacts + a
        if len(gone) < len(batch) or not batch:  # some folder could not go: next sweep
            break
    for leftover in jobs_root.glob(".deleting-*") if jobs_root.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)  # our own renamed-aside folders, interrupted
    if pruned or removed:
        log.info("retention: removed %d deleted job folder(s); pruned %d job(s) (%d metrics, %d artifacts)",
                 len(removed), len(pruned), metrics, artifacts)
    return {"jobs_pruned": pruned, "metrics_deleted": metrics, "artifacts_deleted": artifacts,
            "folders_removed": removed + pruned}
