"""SQL helpers shared by the worker and end-to-end tests: add a job, read it, its runs, events, metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tests.support.specs import tiny_pretrain


def add_job(sessions: Any, spec: dict[str, Any] | None = None, **kw: Any) -> int:
    from api import crud

    with sessions() as s, s.begin():
        return crud.create_job(s, spec or tiny_pretrain(), **kw).id


def job(sessions: Any, job_id: int) -> Any:
    from api.db.models import Job

    with sessions() as s:
        return s.get(Job, job_id)


def runs(sessions: Any, job_id: int) -> list[Any]:
    from api.db.models import JobRun

    with sessions() as s:
        return list(s.scalars(select(JobRun).where(JobRun.job_id == job_id).order_by(JobRun.attempt)))


def events(sessions: Any, job_id: int) -> list[tuple[str | None, str, str | None]]:
    from api.db.models import JobEvent

    with sessions() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [(e.from_status, e.to_status, e.actor) for e in rows]


def metric_steps(sessions: Any, job_id: int, name: str = "train/loss") -> list[int]:
    from api.db.models import Metric

    with sessions() as s:
        return list(s.scalars(select(Metric.step).where(Metric.job_id == job_id, Metric.name == name)
                              .order_by(Metric.step)))
