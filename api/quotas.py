"""What one submission may take: the active-job caps (all jobs, and per owner) and the run-time
ceiling. A pretraining counts once plus once per ``eval.after`` entry, because it queues those
evaluations when it succeeds (``api.db.jobs.active_load``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.db.jobs import active_load, followups_of
from api.errors import ApiError
from api.security import Principal
from api.settings import Settings
from ssl_core.specs import EvaluateSpec, PretrainSpec

RETRY_AFTER_S = "30"


def check_runtime(spec: PretrainSpec | EvaluateSpec, settings: Settings) -> None:
    """``spec.max_runtime_s`` may not exceed the deployment's ceiling (the worker enforces the lower)."""
    ceiling, asked = settings.max_runtime_s, spec.max_runtime_s
    if ceiling is not None and asked is not None and asked > ceiling:
        raise ApiError(422, "invalid_spec",
                       f"spec.max_runtime_s: {asked} s exceeds this deployment's ceiling of {ceiling} s "
                       "(PRETEXTLAB_MAX_RUNTIME_S)", [{"loc": "spec.max_runtime_s", "type": "less_than_equal",
                                                       "msg": f"must be <= {ceiling}"}])


def check_caps(session: Session, spec: PretrainSpec | EvaluateSpec, settings: Settings, who: Principal) -> None:
    """429 naming the cap when this job and its follow-ups do not fit."""
    check_load(session, 1 + followups_of(spec), settings, who)


def check_load(session: Session, needs: int, settings: Settings, who: Principal) -> None:
    """429 naming the cap when ``needs`` more active jobs do not fit (a job and its follow-ups,
    or a whole suite)."""
    caps = [(None, settings.max_active_jobs, "PRETEXTLAB_MAX_ACTIVE_JOBS", "queue_full"),
            (who.name, settings.max_active_jobs_per_owner, "PRETEXTLAB_MAX_ACTIVE_JOBS_PER_OWNER", "quota_exceeded")]
    for owner, limit, setting, code in caps:
        load = active_load(session, owner)
        if load + needs > limit:
            whose = "in total" if owner is None else f"for {owner!r}"
            raise ApiError(429, code,
                           f"{load} active jobs and pending follow-ups {whose}; this request needs {needs} more "
                           f"(limit {setting}={limit})",
                           {"active": load, "needed": needs, "limit": limit, "setting": setting},
                           headers={"Retry-After": RETRY_AFTER_S})
