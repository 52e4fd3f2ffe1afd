"""DELETE /v1/jobs/{id}: remove a finished job -- its rows (job, events, runs, metrics, artifacts)
and its artifact folder. Active jobs answer 409; so does a pretraining whose evaluations are
still queued or running (they need its backbone). Finished evaluations of it keep their results
and lose the link (``source_job_id`` becomes null). A folder this process cannot remove is left to
the retention sweep (``api.db.retention``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from api.db.retention import active_dependents, delete_job, forget_tombstone, remove_job_folder
from api.deps import SessionDep, SettingsDep
from api.errors import ApiError
from api.routes.jobs import JobId, job_or_404
from api.schemas import ERROR_RESPONSES
from api.security import PrincipalDep, require_token

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job, its metrics and its files",
               responses={204: {"description": "deleted"}, 409: {"description": "active, or has active evaluations"}})
def delete_finished_job(job_id: JobId, session: SessionDep, settings: SettingsDep, who: PrincipalDep) -> Response:
    job = job_or_404(session, job_id, who)
    if job.status in ("queued", "running", "cancelling"):
        raise ApiError(409, "invalid_state", f"job {job_id} is {job.status}: cancel it and delete it once finished",
                       {"job_id": job_id, "status": job.status})
    waiting = active_dependents(session, job_id)
    if waiting:
        raise ApiError(409, "invalid_state", f"job {job_id} has evaluations still queued or running: {waiting}",
                       {"job_id": job_id, "dependents": waiting})
    if not delete_job(session, job_id):  # it moved or went meanwhile
        session.rollback()
        raise ApiError(409, "conflict", f"job {job_id} changed while deleting; retry", {"job_id": job_id})
    session.commit()
    # Rows first, with a tombstone naming the folder: where this process may not write the
    # artifact root (the compose API mounts it read-only) the retention sweep removes it later.
    if remove_job_folder(settings.job_dir(job_id).parent, job_id):
        forget_tombstone(session, job_id)
        session.commit()
    return Response(status_code=204)
