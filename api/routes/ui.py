"""The dashboard under /ui/: server-rendered pages (Jinja2) plus a little JavaScript.

Pages read the job store through ``api.db`` functions; live values (curves, progress) come from the
same /v1 endpoints any client uses, and the event stream. Where tokens are configured, every page
needs the session cookie (``api.ui.session``) and sends a visitor without one to the login form.
"""

from __future__ import annotations

import json
from statistics import mean, pstdev
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.db import jobs as job_store
from api.db.artifacts import list_artifacts
from api.db.clock import as_utc
from api.db.dashboard import evaluations_of
from api.db.leases import runs_of
from api.db.listing import BadCursor, leaderboard, list_jobs
from api.db.models import KINDS, STATUSES
from api.deps import SessionDep
from api.schemas import MAX_ID
from api.security import LOCAL, Principal, authenticate
from api.ui import STATIC, TEMPLATES
from api.ui import session as ui_session

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.filters["ts"] = lambda d: as_utc(d).strftime("%Y-%m-%d %H:%M:%S") if d else ""
templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
MAX_COMPARE = 12
Text = Annotated[str | None, Query(max_length=100)]


class LoginRequired(Exception):
    """Raised by a page when tokens are configured and the visitor has no session."""


def _session(request: Request) -> ui_session.UiSession | None:
    if not request.app.state.settings.auth_enabled:
        return None  # no tokens: the loopback default, nothing to sign in to
    session = ui_session.current(request)
    if session is None:
        raise LoginRequired
    return session


def _who(request: Request) -> Principal:
    """Who is looking: the session's token name, or the admin ``local`` with auth off."""
    session = _session(request)
    return Principal(session.identity, session.admin) if session is not None else Principal(LOCAL, admin=True)


def _mine(who: Principal) -> str | None:
    """The created_by filter for a visitor: none for admins, their own jobs for everyone else."""
    return None if who.admin else who.name


def _visible(job: Any, who: Principal) -> bool:
    return job is not None and (who.admin or job.created_by == who.name)


def render(request: Request, name: str, status_code: int = 200, **ctx: Any) -> Response:
    session = _session(request)
    ctx |= {"csrf": session.csrf if session else "", "identity": session.identity if session else None,
            "has_workers": any(getattr(r, "path", "") == "/v1/workers" for r in request.app.routes)}
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): value}


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, status: Text = None, kind: Text = None,
              method: Text = None, dataset: Text = None, tag: Text = None,
              cursor: Annotated[str | None, Query(max_length=200)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    who = _who(request)
    filters = {"status": status or None, "kind": kind or None, "method": method or None,
               "dataset": dataset or None, "tag": tag or None}
    error = None
    if filters["status"] and filters["status"] not in STATUSES:
        error, filters["status"] = f"status: unknown status {status!r}", None
    if filters["kind"] and filters["kind"] not in KINDS:
        error, filters["kind"] = f"kind: unknown kind {kind!r}", None
    try:
        page, next_cursor = list_jobs(session, cursor=cursor, limit=limit, created_by=_mine(who),
                                       cursor_key=request.app.state.settings.cursor_key(), **filters)
    except BadCursor as exc:
        page, next_cursor, error = [], None, str(exc)
    query = "&".join(f"{k}={quote(v)}" for k, v in filters.items() if v)
    return render(request, "jobs.html", jobs=page, filters=filters, next_cursor=next_cursor, query=query,
                  first_page=cursor is None, statuses=STATUSES, kinds=KINDS, error=error, limit=limit)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, session: SessionDep, job_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> Response:
    job = job_store.get_job(session, job_id)
    if not _visible(job, _who(request)):
        return render(request, "error.html", 404, message=f"job {job_id} not found")
    return render(request, "job.html", job=job, events=job_store.job_events(session, job_id),
                  runs=runs_of(session, [job_id]), artifacts=list_artifacts(session, job_id),
                  evaluations=evaluations_of(session, job_id) if job.kind == "pretrain" else [],
                  source=job.source_job_id)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep,
                 ids: Annotated[str, Query(max_length=500)] = "", tag: Text = None) -> Response:
    who = _who(request)
    try:
        wanted = [int(x) for x in ids.replace(" ", ",").split(",") if x.strip()]
    except ValueError:
        return render(request, "compare.html", 400, jobs=[], ids=ids, tag=tag, rows=[], finals={},
                      error="ids: comma-separated job ids, e.g. 3,7,12")
    jobs = job_store.get_jobs(session, [i for i in wanted[:MAX_COMPARE] if 1 <= i <= MAX_ID]) if wanted else []
    if tag and not wanted:
        jobs, _ = list_jobs(session, tag=tag, limit=MAX_COMPARE, created_by=_mine(who),
                            cursor_key=request.app.state.settings.cursor_key())
    jobs = [j for j in jobs if _visible(j, who)]
    jobs.sort(key=lambda j: j.id)
    flat = [_flatten(j.spec) for j in jobs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = [(k, [f.get(k) for f in flat], len({json.dumps(f.get(k)) for f in flat}) > 1) for k in keys]
    finals = {}
    for j in jobs:
        done = [e for e in evaluations_of(session, j.id) if e.status == "succeeded"]
        finals[j.id] = done[0] if done else (j if j.kind == "evaluate" else None)
    return render(request, "compare.html", jobs=jobs, ids=ids, tag=tag, rows=rows, finals=finals, error=None)


_GROUP_KEY = ("method", "backbone", "epochs", "dataset", "protocol", "layer")


def _groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one (method, backbone, epochs, dataset, protocol, layer): top-1 as mean +- std over them."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in _GROUP_KEY), []).append(r)
    out = []
    for key, members in groups.items():
        top1 = [m["top1"] for m in members if m["top1"] is not None]
        out.append(dict(zip(_GROUP_KEY, key), runs=len(members),
                        mean=mean(top1) if top1 else None, std=pstdev(top1) if len(top1) > 1 else None))
    return sorted(out, key=lambda g: -(g["mean"] or -1))


@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(request: Request, session: SessionDep, dataset: Text = None, protocol: Text = None,
                     layer: Text = None) -> Response:
    who = _who(request)
    rows = leaderboard(session, dataset=dataset or None, protocol=protocol or None, limit=1000,
                       created_by=_mine(who), layer=layer or None)
    return render(request, "leaderboard.html", rows=rows, groups=_groups(rows), dataset=dataset or "",
                  protocol=protocol or "", layer=layer or "")


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request) -> Response:
    return render(request, "workers.html")


# -- signing in ---------------------------------------------------------------------------------
def _next(target: str | None) -> str:
    """Only a dashboard path: never an open redirect to another site."""
    return target if target and target.startswith("/ui/") and not target.startswith("/ui//") else "/ui/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: Text = None) -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": _next(next), "error": None,
                                                              "auth": request.app.state.settings.auth_enabled})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _next((form.get("next") or [None])[0])
    settings = request.app.state.settings
    principal = None
    if token and settings.auth_enabled:
        with request.app.state.sessionmaker() as db:
            principal = authenticate(token, settings, db)
    if principal is None:
        return templates.TemplateResponse(request, "login.html", {"next": target, "auth": True,
                                          "error": "unknown token" if token else "token: required"}, status_code=403)
    response = RedirectResponse(target, status_code=303)
    ui_session.start(response, settings, principal.name, principal.admin, secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    session = ui_session.current(request)
    if session is not None and (form.get("csrf") or [""])[0] != session.csrf:
        return Response("csrf: missing or wrong token", status_code=403)
    response = RedirectResponse("/ui/login", status_code=303)
    ui_session.end(response)
    return response


def install(app: FastAPI) -> None:
    """Mount the dashboard: its pages, its static files, the redirect to the login form."""

    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)

    app.add_exception_handler(LoginRequired, login_required)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC)), name="ui-static")
    app.include_router(router)
