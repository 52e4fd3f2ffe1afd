"""Artifacts of a job: the files under its folder that the API lists and serves.

Names are relative POSIX paths inside the job's folder, checked by :func:`check_artifact_name`
before they are stored (the worker registers them) and before they are looked up (the API
serves them): a name that could leave the folder never reaches the table.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.db.clock import utcnow
from api.db.models import Artifact
from ssl_core.storage import UnsafeKey, check_key

MAX_ARTIFACT_NAME = 255


class UnsafePath(ValueError):
    """A name or path that would leave its allowed folder."""


def check_artifact_name(name: str) -> str:
    """A relative POSIX path of plain components (the rule for object keys: a name is a key under the
    job's prefix), or :class:`UnsafePath` saying what is wrong."""
    try:
        check_key(name, what="artifact name", max_chars=MAX_ARTIFACT_NAME)
    except UnsafeKey as exc:
        raise UnsafePath(str(exc)) from None
    return str(PurePosixPath(name))


def register_artifact(session: Session, job_id: int, name: str, kind: str, size: int) -> None:
    """Record (or update) a file under the job's artifact folder; ``name`` is relative to it."""
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


def latest_artifact(session: Session, job_id: int, kind: str) -> Artifact | None:
    """The most recently registered artifact of ``kind`` (e.g. a pretraining's ``backbone``)."""
    return session.scalars(
        select(Artifact).where(Artifact.job_id == job_id, Artifact.kind == kind).order_by(Artifact.id.desc())
    ).first()


def artifact_count(session: Session, job_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == job_id)) or 0


def artifact_counts(session: Session, job_ids: list[int]) -> dict[int, int]:
    """Registered artifacts per job, for a page of jobs (jobs without any are absent)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Artifact.job_id, func.count()).where(Artifact.job_id.in_(job_ids)).group_by(Artifact.job_id)
    ).all()
    return {job_id: n for job_id, n in rows}
