"""A job's run-time limit: the smaller of its ``max_runtime_s`` and the deployment's ceiling
(``PRETEXTLAB_MAX_RUNTIME_S``), counted over all its attempts. Past it the sink's ``should_stop``
says stop (the trainer writes its checkpoint), and the runner fails the job saying why."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from sqlalchemy.orm import Session, sessionmaker

from api.db.leases import JobLease, time_used
from api.settings import Settings
from worker.sink import SqlSink

log = logging.getLogger("pretextlab.worker")
FAILED = "failed"


def runtime_limit(spec: dict[str, Any], settings: Settings) -> int | None:
    """Seconds this job may run in all, or None for no limit."""
    limits = [v for v in (spec.get("max_runtime_s"), settings.max_runtime_s) if v is not None]
    return int(min(limits)) if limits else None


def set_runtime_deadline(sink: SqlSink, sessions: sessionmaker[Session], lease: JobLease, spec: dict[str, Any],
                         settings: Settings) -> None:
    """Arm the sink's deadline: the limit less what earlier attempts already used."""
    limit = runtime_limit(spec, settings)
    if limit is None:
        return
    with sessions() as s:
        used = time_used(s, lease.job_id, lease.attempt)
    sink.runtime_limit_s = limit
    sink.deadline = time.monotonic() + max(0.0, limit - used)


def runtime_exceeded(lease: JobLease, sink: SqlSink, done: dict[str, Any], dispatch_dependents: Callable[[], None]) -> str:
    """Fail a job stopped by its run-time limit (its checkpoint is written), saying which limit."""
    msg = f"max_runtime {sink.runtime_limit_s} s exceeded"
    log.warning("job %s: %s; failed after its checkpoint", lease.job_id, msg)
    lease.finish(["running", "cancelling"], "failed", FAILED, reason=msg, error=msg, **done)
    dispatch_dependents()  # evaluations waiting on it now fail, clearly
    return FAILED
