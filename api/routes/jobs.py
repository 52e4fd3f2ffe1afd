"""/v1/jobs: submit, list, read, history, cancel. A non-admin token sees and acts on its own jobs only."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.db import jobs as job_store
from api.db.artifacts import artifact_count, artifact_counts
from api.db.clock import as_utc
from api.db.listing import BadCursor, list_jobs as page_of_jobs
from api.db.models import FINAL_STATUSES, Job
from api.deps import SessionDep, SettingsDep
from api.dispatch import dispatch
from api.errors import ApiError, validation_details
from api.schemas import (
    ERROR_RESPONSES,
    MAX_ID,
    EventList,
    EventOut,
    JobCreate,
    JobList,
    JobOut,
    Kind,
    Label,
    SafeText,
    Status,
    Tag,
    as_json,
)
from api.quotas import check_caps, check_runtime
from api.security import Principal, PrincipalDep, UnsafePath, require_token, resolve_data_path, resolve_weights
from api.settings import Settings
from ssl_core.specs import BackboneSpec, EvaluateSpec, PretrainSpec, parse_job_spec, spec_error_path
from ssl_core.specs.evaluation import resolve_layers
from ssl_core.storage.urls import allowed_data_urls, check_data_url, is_s3_url
from ssl_core.weights_header import read_metadata

log = logging.getLogger("pretextlab.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=SafeText,
           description="the same key returns the same job (200); a different body with it is 409; "
                       "keys starting with 'pretextlab:' are reserved (422)"),
]
# Keys the service itself uses (the runner's ``pretextlab:eval-after:{id}:{i}`` follow-ups): a client
# taking one would make that job's success transaction collide with it.
RESERVED_KEY_PREFIX = "pretextlab:"
CANCEL_STATES = ("cancelling", "cancelled")


def check_idempotency_key(key: str | None) -> None:
    if key is not None and key.lower().startswith(RESERVED_KEY_PREFIX):
        raise ApiError(422, "validation_error",
                       f"Idempotency-Key: the {RESERVED_KEY_PREFIX!r} prefix is reserved for the service",
                       {"idempotency_key": key})


def job_or_404(session: Session, job_id: int, who: Principal | None = None) -> Job:
    """The job, or 404 -- also when ``who`` is not an admin and did not submit it (not 403: another
    owner's job ids are not theirs to probe)."""
    job = job_store.get_job(session, job_id)
    if job is None or (who is not None and not who.admin and job.created_by != who.name):
        raise ApiError(404, "not_found", f"job {job_id} not found", {"job_id": job_id})
    return job


def _parse_spec(body: JobCreate) -> PretrainSpec | EvaluateSpec:
    spec_kind = body.spec.get("kind")
    if body.kind is not None and spec_kind is not None and spec_kind != body.kind:
        raise ApiError(422, "validation_error", f"kind is {body.kind!r} but spec.kind is {spec_kind!r}",
                       {"kind": body.kind, "spec.kind": spec_kind})
    kind = body.kind or spec_kind or "pretrain"
    try:
        return parse_job_spec({**body.spec, "kind": kind})
    except ValidationError as exc:
        details = validation_details(exc.errors())
        for d in details:  # 'pretrain.method.temperature' -> 'spec.method.temperature'
            d["loc"] = ".".join(["spec", *spec_error_path(d["loc"].split("."))])
        shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
        raise ApiError(422, "invalid_spec", shown or "invalid spec", details) from None


def _check_source(session: Session, spec: EvaluateSpec, who: Principal) -> None:
    """An evaluation of a pretraining job needs that job to exist (for this token) and to be able to succeed."""
    if spec.source_job_id is None:
        return
    sid = spec.source_job_id
    src = job_store.get_job(session, sid) if sid <= MAX_ID else None
    if src is None or (not who.admin and src.created_by != who.name):
        raise ApiError(422, "invalid_spec", f"spec.source_job_id: job {sid} does not exist", {"source_job_id": sid})
    if src.kind != "pretrain":
        raise ApiError(422, "invalid_spec", f"spec.source_job_id: job {sid} is an {src.kind} job, not a pretraining",
                       {"source_job_id": sid})
    if src.status in ("failed", "cancelled"):
        # The request is valid; the source's state is what makes it impossible: a conflict.
        raise ApiError(409, "invalid_state",
                       f"spec.source_job_id: job {sid} is {src.status}: it has no backbone to evaluate",
                       {"source_job_id": sid, "status": src.status})
    _check_layers(spec, (src.spec or {}).get("backbone") or {})


def _check_layers(spec: EvaluateSpec, backbone: dict[str, Any] | None) -> None:
    """``layers`` must name layers of the backbone being evaluated, once it is known (the source job's
    spec, the weights file's metadata): 422 naming ``layers`` and the valid names otherwise."""
    if spec.layers is None or backbone is None:
        return
    try:
        resolve_layers(spec.layers, BackboneSpec.model_validate(backbone))
    except ValueError as exc:
        raise ApiError(422, "invalid_spec", f"spec.{exc}", {"loc": "spec.layers", "layers": spec.layers}) from None


def _weights_backbone(path: str) -> dict[str, Any] | None:
    """The backbone spec a weights file records, or None when it cannot be read here (the worker
    reports an unreadable file when it opens it)."""
    try:
        return json.loads(read_metadata(path)["backbone"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _resolve_weights(spec: EvaluateSpec, settings: Settings) -> EvaluateSpec:
    """A ``weights`` path must lie inside the artifact root or an allowed data root. It is stored
    resolved (absolute, symlinks followed), so the worker opens exactly the file checked here,
    whatever its working directory."""
    if spec.weights is None:
        return spec
    roots = [settings.artifact_root, *settings.allowed_roots()]
    try:
        resolved = resolve_weights(spec.weights, [r.expanduser().resolve() for r in roots])
    except UnsafePath as exc:
        raise ApiError(422, "invalid_spec", f"spec.{exc}", {"weights": spec.weights}) from None
    spec = spec.model_copy(update={"weights": str(resolved)})
    if spec.layers is not None:
        _check_layers(spec, _weights_backbone(spec.weights))
    return spec


def check_data_paths(spec: PretrainSpec | EvaluateSpec, settings: Settings) -> None:
    """Dataset folders must lie inside the allowed data roots (checked again by the worker, but a
    job that can only fail is refused here, naming the field)."""
    fields: list[tuple[str, str | None]] = [("spec.data.path", spec.data.path)]
    if isinstance(spec, PretrainSpec) and spec.eval.data is not None:
        fields.append(("spec.eval.data.path", spec.eval.data.path))
    roots = settings.allowed_roots()
    for field, path in fields:
        if path is None:
            continue
        if is_s3_url(path):  # object storage: well formed and under an allowed prefix (no network here)
            try:
                check_data_url(path, allowed_data_urls(settings.allowed_data_urls), field)
            except ValueError as exc:
                raise ApiError(422, "invalid_spec", str(exc), {"loc": field, "path": path}) from None
            continue
        try:
            resolve_data_path(path, roots, field)
        except UnsafePath as exc:
            raise ApiError(422, "invalid_spec", str(exc), {"loc": field, "path": path}) from None


def _same_request(job: Job, spec: PretrainSpec | EvaluateSpec, body: JobCreate) -> bool:
    return (job.spec == spec.model_dump(mode="json") and job.name == body.name
            and list(job.tags or []) == list(body.tags) and job.priority == body.priority)


def _replay(job: Job, spec: PretrainSpec | EvaluateSpec, body: JobCreate, key: str, response: Response,
            who: Principal) -> JobOut:
    if job.created_by != who.name:  # another owner's key: say nothing about their job
        raise ApiError(409, "idempotency_conflict", f"Idempotency-Key {key!r} is already in use",
                       {"idempotency_key": key})
    if not _same_request(job, spec, body):
        raise ApiError(409, "idempotency_conflict",
                       f"Idempotency-Key {key!r} was already used for job {job.id} with a different request body",
                       {"idempotency_key": key, "job_id": job.id})
    response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_row(job)


@router.post("", status_code=201, response_model=JobOut, summary="Submit a pretraining or evaluation job")
def submit_job(
    body: JobCreate, session: SessionDep, settings: SettingsDep, response: Response, who: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    check_idempotency_key(idempotency_key)
    spec = _parse_spec(body)
    check_runtime(spec, settings)
    check_data_paths(spec, settings)
    if isinstance(spec, EvaluateSpec):
        spec = _resolve_weights(spec, settings)  # before the replay check: the stored spec is resolved
    if idempotency_key is not None:
        existing = job_store.get_job_by_idempotency_key(session, idempotency_key)
        if existing is not None:
            return _replay(existing, spec, body, idempotency_key, response, who)
    if isinstance(spec, EvaluateSpec):
        _check_source(session, spec, who)
    check_caps(session, spec, settings, who)
    try:
        job = job_store.create_job(session, spec, name=body.name, tags=body.tags, priority=body.priority,
                                   idempotency_key=idempotency_key, max_attempts=settings.max_attempts,
                                   actor=who.name, created_by=who.name)
        session.commit()
    except IntegrityError:
        # Two requests with one Idempotency-Key raced (the INSERT fails at flush or commit): the
        # other one committed first, so this is a replay of it.
        session.rollback()
        existing = job_store.get_job_by_idempotency_key(session, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, spec, body, idempotency_key, response, who)
    if dispatch(job, settings):
        try:
            job_store.mark_dispatched(session, job.id)
            session.commit()
        except SQLAlchemyError:  # the job is stored; a lost timestamp only means an earlier re-dispatch
            session.rollback()
            log.warning("could not record dispatch of job %s", job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_row(job, artifacts=0)


@router.get("", response_model=JobList, summary="List jobs, newest first (specs summarised unless ?view=full)")
def list_jobs(
    session: SessionDep,
    who: PrincipalDep,
    settings: SettingsDep,
    status: Status | None = None,
    kind: Kind | None = None,
    method: Label | None = None,
    dataset: Label | None = None,
    tag: Tag | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    view: Annotated[Literal["summary", "full"], Query(description="full: each item with its whole spec")] = "summary",
) -> Response:
    try:
        page, next_cursor = page_of_jobs(session, status=status, kind=kind, method=method, dataset=dataset,
                                         tag=tag, cursor=cursor, limit=limit, cursor_key=settings.cursor_key(),
                                         created_by=None if who.admin else who.name)
    except BadCursor as exc:
        raise ApiError(400, "bad_cursor", str(exc), {"cursor": cursor}) from None
    counts = artifact_counts(session, [j.id for j in page])
    items = [JobOut.from_row(j, counts.get(j.id, 0), full=view == "full") for j in page]
    return as_json(JobList(items=items, next_cursor=next_cursor))


@router.get("/{job_id}", response_model=JobOut, summary="A job: status, spec, progress, result")
def read_job(job_id: JobId, session: SessionDep, who: PrincipalDep) -> Response:
    job = job_or_404(session, job_id, who)
    return as_json(JobOut.from_row(job, artifact_count(session, job_id)))


@router.get("/{job_id}/events", response_model=EventList, summary="The job's status history")
def job_events(job_id: JobId, session: SessionDep, who: PrincipalDep) -> EventList:
    job_or_404(session, job_id, who)
    items = [EventOut(id=e.id, from_status=e.from_status, to_status=e.to_status, attempt=e.attempt,
                      actor=e.actor, reason=e.reason, at=as_utc(e.at))
             for e in job_store.job_events(session, job_id)]
    return EventList(job_id=job_id, items=items)


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job",
             responses={202: {"model": JobOut, "description": "running: cancelling, the worker stops it"}})
def cancel_job(job_id: JobId, session: SessionDep, response: Response, who: PrincipalDep) -> JobOut:
    """queued -> cancelled at once; running -> cancelling (the worker checkpoints and stops at the
    next step boundary, then cancelled); cancelling -> unchanged; finished -> 409."""
    for _ in range(3):  # a worker may move the job between our read and our conditional update
        job = job_or_404(session, job_id, who)
        if job.status in FINAL_STATUSES:
            raise ApiError(409, "invalid_state", f"job {job_id} is already {job.status}: it cannot be cancelled",
                           {"job_id": job_id, "status": job.status})
        if job.status == "cancelling":
            response.status_code = 202
            return JobOut.from_row(job)
        if job_store.request_cancel(session, job_id, actor=who.name, reason="cancelled by user") in CANCEL_STATES:
            session.commit()
            job = job_or_404(session, job_id)
            session.refresh(job)
            response.status_code = 200 if job.status == "cancelled" else 202
            return JobOut.from_row(job)
        session.rollback()
    raise ApiError(409, "conflict", f"job {job_id} changed state while cancelling; retry", {"job_id": job_id})
