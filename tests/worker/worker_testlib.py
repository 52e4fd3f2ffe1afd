"""SQL helpers shared by the worker and end-to-end tests: add a job, read it, its runs, events, metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from api.db.jobs import create_job, get_job, job_events
from api.db.leases import runs_of
from api.db.models import Metric
from api.settings import Settings
from tests.support.specs import tiny_pretrain

# The limit a job gets when a test does not choose one: the deployment default.
DEFAULT_MAX_ATTEMPTS = Settings.model_fields["max_attempts"].default


def add_job(sessions: Any, spec: dict[str, Any] | None = None, **kw: Any) -> int:
    kw.setdefault("max_attempts", DEFAULT_MAX_ATTEMPTS)
    with sessions() as s, s.begin():
        return create_job(s, spec or tiny_pretrain(), **kw).id


def job(sessions: Any, job_id: int) -> Any:
    with sessions() as s:
        return get_job(s, job_id)


def runs(sessions: Any, job_id: int) -> list[Any]:
    with sessions() as s:
        return runs_of(s, [job_id])


def events(sessions: Any, job_id: int) -> list[tuple[str | None, str, str | None]]:
    with sessions() as s:
        return [(e.from_status, e.to_status, e.actor) for e in job_events(s, job_id)]


def metric_steps(sessions: Any, job_id: int, name: str = "train/loss") -> list[int]:
    with sessions() as s:
        return list(s.scalars(select(Metric.step).where(Metric.job_id == job_id, Metric.name == name)
                              .order_by(Metric.step)))


def job_dir(sessions: Any, settings: Settings, job_id: int) -> Any:
    """The job's artifact folder."""
    return settings.job_dir(job_id)
