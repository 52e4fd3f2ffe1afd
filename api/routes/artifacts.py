"""/v1/jobs/{id}/artifacts: the files a job registered, streamed from its own folder only."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from api.db.artifacts import UnsafePath, check_artifact_name, get_artifact, list_artifacts as stored_artifacts
from api.db.clock import as_utc
from api.deps import SessionDep, SettingsDep
from api.errors import ApiError
from api.routes.jobs import JobId, job_or_404
from api.schemas import ERROR_RESPONSES, ArtifactList, ArtifactOut
from api.security import require_token, resolve_artifact

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], dependencies=[Depends(require_token)],
                   responses=ERROR_RESPONSES)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="Files registered by a job")
def list_artifacts(job_id: JobId, session: SessionDep) -> ArtifactList:
    job_or_404(session, job_id)
    items = [
        ArtifactOut(name=a.name, kind=a.kind, size=a.size, created_at=as_utc(a.created_at),
                    updated_at=as_utc(a.updated_at), url=f"/v1/jobs/{job_id}/artifacts/{quote(a.name)}")
        for a in stored_artifacts(session, job_id)
    ]
    return ArtifactList(job_id=job_id, items=items)


@router.get("/{job_id}/artifacts/{name:path}", summary="Download one artifact (streamed)",
            response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"}})
def download_artifact(job_id: JobId, name: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    try:
        name = check_artifact_name(name)
    except UnsafePath as exc:
        raise ApiError(400, "unsafe_artifact_name", str(exc), {"name": name[:300]}) from None
    job = job_or_404(session, job_id)
    if get_artifact(session, job_id, name) is None:
        raise ApiError(404, "not_found", f"job {job_id} has no artifact named {name!r}",
                       {"job_id": job_id, "name": name})
    try:
        path = resolve_artifact(settings.job_dir(job_id, job.run_key), name)
    except UnsafePath as exc:
        raise ApiError(400, "unsafe_artifact_name", str(exc), {"name": name}) from None
    if not path.is_file():
        raise ApiError(404, "not_found", f"artifact {name!r} of job {job_id} is registered but its file is missing",
                       {"job_id": job_id, "name": name})
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)
