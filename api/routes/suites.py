"""/v1/suites: submit, list, read, cancel and delete suites (grids, variants, presets, Optuna
sweeps), and the comparison table. Children are ordinary jobs (``suite_id``, ``variant``); a
non-admin token sees and acts on its own suites only."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.db import jobs as job_store
from api.db import suites as suite_store
from api.db.models import Suite
from api.db.retention import forget_tombstone, remove_job_folder
from api.deps import SessionDep, SettingsDep
from api.dispatch import dispatch
from api.errors import ApiError
from api.quotas import check_load, check_runtime
from api.routes.jobs import IdempotencyKey, check_data_paths, check_idempotency_key
from api.schemas import ERROR_RESPONSES, MAX_ID, SuiteJob, SuiteList, SuiteOut, as_json
from api.security import Principal, PrincipalDep, require_token
from api.suite_plan import SuiteCreate, expand, job_count
from api.suite_table import build_table, to_csv, to_markdown
from ssl_core.specs import parse_job_spec

log = logging.getLogger("pretextlab.api")
router = APIRouter(prefix="/v1/suites", tags=["suites"], dependencies=[Depends(require_token)],
                   responses=ERROR_RESPONSES)
SuiteId = Annotated[int, Path(ge=1, le=MAX_ID, description="suite id")]


def suite_or_404(session: Session, suite_id: int, who: Principal) -> Suite:
    suite = suite_store.get_suite(session, suite_id)
    if suite is None or (not who.admin and suite.created_by != who.name):
        raise ApiError(404, "not_found", f"suite {suite_id} not found", {"suite_id": suite_id})
    return suite


def suite_out(session: Session, suite: Suite, counts: dict[str, int] | None = None, full: bool = False) -> SuiteOut:
    if counts is None:
        counts = suite_store.status_counts(session, [suite.id]).get(suite.id, {})
    plan = suite.plan or {}
    jobs = None
    if full:
        jobs = [SuiteJob(id=j.id, kind=j.kind, status=j.status, variant=j.variant, seed=(j.spec or {}).get("seed"),
                         protocol=j.protocol, top1=j.top1, parent_job_id=j.parent_job_id)
                for j in suite_store.children(session, suite.id)]
    return SuiteOut(
        id=suite.id, name=suite.name, kind=suite.kind, status=suite_store.derive_status(suite, counts),
        counts=counts, total_jobs=plan.get("total_jobs", 0), cancel_requested=bool(suite.cancel_requested),
        variants=plan.get("variants"), seeds=plan.get("seeds"), protocols=plan.get("protocols"),
        search=plan.get("search"), best=suite.best, jobs=jobs, created_by=suite.created_by,
        created_at=suite.created_at, updated_at=suite.updated_at)


def _check_children(plan: dict[str, Any], settings: Any) -> None:
    """The checks POST /v1/jobs makes on one job, on every child (runtime ceiling, data paths)."""
    for child in plan["children"]:
        spec = parse_job_spec(child["spec"])
        check_runtime(spec, settings)
        check_data_paths(spec, settings)


def _replay(suite: Suite, request: dict[str, Any], key: str, session: Session, response: Response,
            who: Principal) -> SuiteOut:
    if suite.created_by != who.name or suite.request != request:
        raise ApiError(409, "idempotency_conflict",
                       f"Idempotency-Key {key!r} was already used with a different request", {"idempotency_key": key})
    response.status_code = 200
    response.headers["Location"] = f"/v1/suites/{suite.id}"
    return suite_out(session, suite)


@router.post("", status_code=201, response_model=SuiteOut,
             summary="Submit a suite: a grid, variants, a preset or an Optuna search, x seeds")
def submit_suite(body: SuiteCreate, session: SessionDep, settings: SettingsDep, response: Response,
                 who: PrincipalDep, idempotency_key: IdempotencyKey = None) -> SuiteOut:
    check_idempotency_key(idempotency_key)
    request = body.model_dump(mode="json")
    if idempotency_key is not None:
        existing = suite_store.get_suite_by_key(session, idempotency_key)
        if existing is not None:
            return _replay(existing, request, idempotency_key, session, response, who)
    plan = expand(body)
    total = job_count(plan)
    if total > settings.max_suite_jobs:
        raise ApiError(422, "suite_too_large",
                       f"this suite would create {total} jobs, over the limit of {settings.max_suite_jobs} "
                       "(PRETEXTLAB_MAX_SUITE_JOBS)",
                       [{"loc": "body", "msg": "too many jobs", "jobs": total, "limit": settings.max_suite_jobs,
                         "setting": "PRETEXTLAB_MAX_SUITE_JOBS"}])
    _check_children(plan, settings)
    check_load(session, total if body.search is None else plan["search"]["parallelism"], settings, who)
    kind = next(k for k in ("preset", "search", "grid", "variants") if getattr(body, k) is not None)
    try:
        suite = suite_store.create_suite(session, name=body.name, kind=kind, request=request,
                                         plan={**{k: v for k, v in plan.items() if k != "children"},
                                               "total_jobs": total},
                                         search=plan.get("search"), idempotency_key=idempotency_key,
                                         created_by=who.name)
        created = [job_store.create_job(session, c["spec"], name=f"{body.name or f'suite {suite.id}'} / {c['variant']}",
                                        tags=body.tags, max_attempts=settings.max_attempts,
                                        priority=body.priority + (suite_store.EVAL_FIRST
                                                                  if c["spec"]["kind"] == "evaluate" else 0),
                                        actor=who.name, created_by=who.name, suite_id=suite.id,
                                        variant=c["variant"])
                   for c in plan["children"]]
        session.commit()
    except IntegrityError:  # the same Idempotency-Key raced in: a replay of the one that committed
        session.rollback()
        existing = suite_store.get_suite_by_key(session, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replay(existing, request, idempotency_key, session, response, who)
    _dispatch(session, [j.id for j in created], settings)
    response.headers["Location"] = f"/v1/suites/{suite.id}"
    return suite_out(session, suite)


def _dispatch(session: Session, job_ids: list[int], settings: Any) -> None:
    sent = [jid for jid in job_ids if dispatch(jid, settings)]
    if not sent:
        return
    try:
        for jid in sent:
            job_store.mark_dispatched(session, jid)
        session.commit()
    except SQLAlchemyError:  # the jobs are stored; a lost timestamp only means an earlier re-dispatch
        session.rollback()
        log.warning("could not record dispatch of suite jobs %s", sent)


@router.get("", response_model=SuiteList, summary="List suites, newest first")
def list_suites(session: SessionDep, who: PrincipalDep,
                before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                limit: Annotated[int, Query(ge=1, le=200)] = 50) -> Response:
    suites = suite_store.list_suites(session, created_by=None if who.admin else who.name, before_id=before,
                                     limit=limit + 1)
    page = suites[:limit]
    counts = suite_store.status_counts(session, [s.id for s in page])
    items = [suite_out(session, s, counts.get(s.id, {})) for s in page]
    return as_json(SuiteList(items=items, next_before=page[-1].id if len(suites) > limit else None))


@router.get("/{suite_id}", response_model=SuiteOut, summary="A suite: status, variants, children, best trial")
def read_suite(suite_id: SuiteId, session: SessionDep, who: PrincipalDep) -> Response:
    return as_json(suite_out(session, suite_or_404(session, suite_id, who), full=True))


@router.get("/{suite_id}/table", summary="The comparison table: a row per variant, mean/std/count per protocol",
            responses={200: {"content": {"application/json": {}, "text/csv": {}, "text/markdown": {}}}})
def suite_table(suite_id: SuiteId, session: SessionDep, who: PrincipalDep,
                format: Literal["json", "csv", "markdown"] = "json") -> Response:
    suite = suite_or_404(session, suite_id, who)
    table = build_table(suite.plan, suite_store.children(session, suite_id), suite.best)
    if format == "csv":
        return Response(to_csv(table), media_type="text/csv")
    if format == "markdown":
        return Response(to_markdown(table), media_type="text/markdown")
    counts = suite_store.status_counts(session, [suite_id]).get(suite_id, {})
    return Response(json.dumps({"suite_id": suite_id, "status": suite_store.derive_status(suite, counts),
                                "best": suite.best, **table}), media_type="application/json")


@router.post("/{suite_id}/cancel", response_model=SuiteOut, summary="Cancel a suite and its unfinished children")
def cancel_suite(suite_id: SuiteId, session: SessionDep, who: PrincipalDep) -> SuiteOut:
    """Marks the suite cancelled (a search creates no more trials) and cancels every unfinished
    child: queued ones at once, running ones cooperatively (checkpoint, then cancelled). A
    finished suite is 409."""
    suite = suite_or_404(session, suite_id, who)
    counts = suite_store.status_counts(session, [suite_id]).get(suite_id, {})
    status = suite_store.derive_status(suite, counts)
    if status in ("succeeded", "failed", "cancelled"):
        raise ApiError(409, "invalid_state", f"suite {suite_id} is already {status}: it cannot be cancelled",
                       {"suite_id": suite_id, "status": status})
    suite_store.mark_cancel(session, suite_id)
    session.commit()
    for job_id in suite_store.active_children(session, suite_id):
        for _ in range(3):  # a worker may move the job between the read and the conditional update
            if job_store.request_cancel(session, job_id, actor=who.name, reason=f"suite {suite_id} cancelled") is not None:
                session.commit()
                break
            session.rollback()
    session.refresh(suite)
    return suite_out(session, suite)


@router.delete("/{suite_id}", status_code=204, summary="Delete a finished suite and its children",
               responses={204: {"description": "deleted"}, 409: {"description": "children still active"}})
def delete_suite(suite_id: SuiteId, session: SessionDep, settings: SettingsDep, who: PrincipalDep) -> Response:
    suite = suite_or_404(session, suite_id, who)
    study = suite.study_name
    deleted = suite_store.delete_suite(session, suite_id)
    if deleted is None:
        session.rollback()
        raise ApiError(409, "invalid_state", f"suite {suite_id} has children still active: cancel it first",
                       {"suite_id": suite_id, "active": suite_store.active_children(session, suite_id)})
    session.commit()
    for job_id in deleted:  # as DELETE /v1/jobs/{id}: a folder this process cannot remove is swept later
        if remove_job_folder(settings.job_dir(job_id).parent, job_id):
            forget_tombstone(session, job_id)
    session.commit()
    if study is not None:
        from api.db.sweeps import delete_study

        delete_study(settings.database_url, study)
    return Response(status_code=204)
