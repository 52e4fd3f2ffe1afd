"""Request and response bodies of the HTTP API (the job spec itself lives in ssl_core.specs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from api.db.clock import as_utc
from api.db.models import STATUSES, Job

Status = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
assert set(Status.__args__) == set(STATUSES)  # type: ignore[attr-defined]
Kind = Literal["pretrain", "evaluate"]
# Printable text only: PostgreSQL refuses NUL in text, and control characters are never meant.
SafeText = r"^[^\x00-\x1f\x7f]*$"
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=SafeText)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=SafeText)]
MAX_ID = 2**63 - 1  # BIGINT: larger ids cannot exist, refuse them before the database does


def as_json(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise a response model once. Returning a Response skips FastAPI's second validation
    of the return value against ``response_model`` (kept on the route for the OpenAPI document),
    which cost more than building the model for large pages."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _bad_string(value: Any, path: str = "body") -> str | None:
    """The location of the first string holding NUL or a lone surrogate (JSON allows both as
    escapes; neither can be stored as text nor used as a path), or None."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
            return path
    elif isinstance(value, dict):
        for k, v in value.items():
            bad = _bad_string(k, path) or _bad_string(v, f"{path}.{k}")
            if bad:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = _bad_string(v, f"{path}.{i}")
            if bad:
                return bad
    return None


class JobCreate(Forbid):
    """POST /v1/jobs. ``spec`` is a PretrainSpec or EvaluateSpec (see GET /v1/methods)."""

    @model_validator(mode="before")
    @classmethod
    def _plain_text_only(cls, data: Any) -> Any:
        bad = _bad_string(data)
        if bad:
            raise ValueError(f"{bad}: strings may not contain NUL or unpaired surrogates")
        return data

    kind: Kind | None = Field(None, description="pretrain (default) or evaluate; may also be given as spec.kind")
    spec: dict[str, Any] = Field(default_factory=dict, description="the job spec; omitted fields take their defaults")
    name: Annotated[str, StringConstraints(max_length=200, pattern=SafeText)] | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first (embedded worker)")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{
                "kind": "pretrain", "name": "simclr-fmnist", "tags": ["demo"],
                "spec": {"method": {"name": "simclr"}, "backbone": {"name": "resnet18"},
                         "data": {"dataset": "fashion_mnist", "subset": 10000}, "epochs": 5, "batch_size": 256},
            }]
        },
    )


class Progress(BaseModel):
    model_config = ConfigDict(extra="allow")
    epoch: int | None = None
    step: int | None = None
    total_steps: int | None = None
    images_per_sec: float | None = None
    eta_s: float | None = None


class SpecSummary(BaseModel):
    """What a list shows of a spec (the full spec: GET /v1/jobs/{id}, or GET /v1/jobs?view=full)."""

    method: str | None = None
    backbone: str | None = None
    dataset: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    protocol: str | None = None
    source_job_id: int | None = None

    @classmethod
    def of(cls, spec: dict[str, Any]) -> "SpecSummary":
        def name(v: Any) -> Any:
            return v.get("name") if isinstance(v, dict) else v

        data, protocol = spec.get("data") or {}, spec.get("protocol")
        return cls(method=name(spec.get("method")), backbone=name(spec.get("backbone")),
                   dataset=data.get("dataset"), image_size=data.get("image_size"), epochs=spec.get("epochs"),
                   batch_size=spec.get("batch_size"),
                   protocol=protocol.get("protocol") if isinstance(protocol, dict) else protocol,
                   source_job_id=spec.get("source_job_id"))


class JobOut(BaseModel):
    id: int
    kind: Kind
    status: Status
    name: str | None
    tags: list[str]
    priority: int
    spec: dict[str, Any] | None = Field(description="the full spec; null in list pages unless ?view=full")
    summary: SpecSummary
    method: str | None
    dataset: str | None
    protocol: str | None
    queue: str
    source_job_id: int | None
    parent_job_id: int | None
    attempt: int
    max_attempts: int
    owner: str | None
    created_by: str | None = Field(None, description="the name of the token that submitted it")
    cancel_requested: bool
    progress: Progress | None
    result: dict[str, Any] | None
    error: str | None
    top1: float | None
    top5: float | None
    artifacts: int | None = Field(None, description="number of registered artifacts")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    heartbeat_at: datetime | None
    lease_expires_at: datetime | None
    gpus: int = Field(1, description="GPUs (or CPU slots) the job needs at once")
    worker: str | None = Field(None, description="the worker of its current (or last) attempt")
    devices: list[int] | None = Field(None, description="the device ids that attempt was given")
    waiting_reason: str | None = Field(None, description="why a queued job cannot start on the live fleet")
    suite_id: int | None = Field(None, description="the suite it belongs to (GET /v1/suites/{id})")
    variant: str | None = Field(None, description="its variant in that suite ('trial N' in a sweep)")

    @classmethod
    def from_row(cls, job: Job, artifacts: int | None = None, full: bool = True) -> "JobOut":
        return cls(
            id=job.id, kind=job.kind, status=job.status, name=job.name, tags=list(job.tags or []),
            priority=job.priority, spec=job.spec if full else None, summary=SpecSummary.of(job.spec or {}),
            method=job.method, dataset=job.dataset, protocol=job.protocol,
            queue=job.queue, source_job_id=job.source_job_id, parent_job_id=job.parent_job_id,
            attempt=job.attempt, max_attempts=job.max_attempts, owner=job.owner, created_by=job.created_by,
            cancel_requested=bool(job.cancel_requested),
            progress=Progress(**job.progress) if isinstance(job.progress, dict) else None,
            result=job.result, error=job.error, top1=job.top1, top5=job.top5, artifacts=artifacts,
            created_at=as_utc(job.created_at), started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at), updated_at=as_utc(job.updated_at),
            heartbeat_at=as_utc(job.heartbeat_at), lease_expires_at=as_utc(job.lease_expires_at),
            gpus=job.gpus or 1, worker=job.worker, devices=job.devices, waiting_reason=job.waiting_reason,
            suite_id=job.suite_id, variant=job.variant,
        )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next (older) page; null at the end")


class EventOut(BaseModel):
    id: int
    from_status: str | None
    to_status: str
    attempt: int
    actor: str | None
    reason: str | None
    at: datetime


class EventList(BaseModel):
    job_id: int
    items: list[EventOut]


class MetricPoint(BaseModel):
    step: int
    value: float | None  # NaN / inf are sent as null (JSON has no NaN)
    epoch: int | None = None


class MetricSeriesOut(BaseModel):
    job_id: int
    name: str
    points: list[MetricPoint]
    downsampled: bool
    max_points: int


class MetricNames(BaseModel):
    job_id: int
    names: list[str]


class ArtifactOut(BaseModel):
    name: str
    kind: str
    size: int
    created_at: datetime
    updated_at: datetime
    url: str


class ArtifactList(BaseModel):
    job_id: int
    items: list[ArtifactOut]


class MethodOut(BaseModel):
    name: str
    description: str
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    defaults: dict[str, Any]

    model_config = ConfigDict(populate_by_name=True)


class DatasetOut(BaseModel):
    name: str
    description: str
    image_size: int | None
    channels: int
    num_classes: int | None
    splits: list[str]
    available: bool | None = Field(description="files found under the data root (null: needs data.path)")


class ResultRow(BaseModel):
    evaluation_job_id: int
    pretrain_job_id: int | None
    method: str | None
    backbone: str | None
    epochs: int | None
    dataset: str | None
    protocol: str | None
    layer: str = Field("pool", description="the probed layer: pool (final pooled features), a conv block, "
                       "a+b (a concatenation), or pixels (the raw-pixels baseline)")
    top1: float | None
    top5: float | None
    finished_at: datetime | None
    batch_size: int | None = Field(None, description="the pretraining's global batch")
    seed: int | None = None
    suite_id: int | None = None
    variant: str | None = None


class ResultGroup(BaseModel):
    """One group of ``?group_by=``: mean +- standard deviation of top-1 over its evaluations."""

    method: str | None
    dataset: str | None
    protocol: str | None
    layer: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    suite_id: int | None = None
    variant: str | None = None
    top1_mean: float
    top1_std: float | None = Field(description="sample standard deviation; null for a single value")
    count: int


class ResultList(BaseModel):
    items: list[ResultRow]
    groups: list[ResultGroup] | None = Field(None, description="with ?group_by=: the groups, best mean first")


class SuiteJob(BaseModel):
    id: int
    kind: Kind
    status: Status
    variant: str | None
    seed: int | None
    protocol: str | None
    top1: float | None
    parent_job_id: int | None


class SuiteOut(BaseModel):
    id: int
    name: str | None
    kind: str = Field(description="grid | variants | preset | search")
    status: Status = Field(description="derived from the children (see docs/api.md)")
    counts: dict[str, int] = Field(description="children by status")
    total_jobs: int = Field(description="jobs the suite will have created in all (a search: every trial's)")
    cancel_requested: bool
    variants: list[dict[str, Any]] | None = Field(None, description="label, overrides, notes, method, epochs, batch")
    seeds: list[int] | None = None
    protocols: list[str] | None = None
    search: dict[str, Any] | None = Field(None, description="a sweep: the checked search request")
    best: dict[str, Any] | None = Field(None, description="a sweep: the best trial so far, its value, params, spec")
    jobs: list[SuiteJob] | None = Field(None, description="the children (GET /v1/suites/{id} only)")
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class SuiteList(BaseModel):
    items: list[SuiteOut]
    next_before: int | None = Field(None, description="pass as ?before= for the next (older) page")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in {
        400: "malformed request (bad JSON, bad cursor, unsafe name)",
        401: "missing or malformed bearer token",
        403: "unknown bearer token",
        404: "no such job or artifact",
        409: "invalid state change or idempotency-key reuse",
        413: "body larger than PRETEXTLAB_MAX_BODY_BYTES",
        422: "invalid spec or parameters",
        503: "database unreachable (Retry-After) or queue full",
    }.items()
}
