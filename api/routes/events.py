"""/v1/events/stream: job changes pushed as Server-Sent Events.

One :class:`ChangeFeed` per app polls SQL once a tick (``TICK_S``) for the jobs updated since the
last tick -- one query for all subscribers together, not one per client or per row -- and fans the
summaries out to each subscriber's queue. A summary is sent only when what a watcher sees changed
(status, attempt, progress, error, finish): a lease renewal alone bumps ``updated_at`` and is not news.

Wire format (text/event-stream)::

    event: job
    data: {"id": 7, "status": "running", "progress": {"epoch": 1, "step": 40, "total_steps": 200,
           "images_per_sec": 812.5, "eta_s": 19.7}, "attempt": 1, "updated_at": "...", ...}

plus ``: ping`` comment lines every ``PING_S`` seconds. With ``?job_id=N`` only that job's changes
are sent, and its current summary first (so a client that subscribes after a change misses nothing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Annotated, Any, AsyncIterator

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse

from api.db.changes import changed_since, job_summary
from api.db.clock import utcnow
from api.errors import ApiError
from api.schemas import ERROR_RESPONSES, MAX_ID
from api.security import Principal, PrincipalDep, require_token

log = logging.getLogger("pretextlab.api")
router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[Depends(require_token)],
                   responses=ERROR_RESPONSES)

TICK_S = 1.0
PING_S = 15.0
# Rows written by another host's clock may land slightly in the past: look back this far each tick
# (what was already sent is recognised by its signature and not sent again).
OVERLAP = timedelta(seconds=10)
QUEUE_MAX = 1000


def _signature(s: dict[str, Any]) -> str:
    return json.dumps([s["status"], s["attempt"], s["progress"], s["error"], s["finished_at"]], sort_keys=True)


class ChangeFeed:
    """The app's one poller; runs only while someone listens."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.subscribers: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None
        self.closing = False
        self.since: datetime = utcnow()
        self.seen: dict[int, tuple[str, datetime]] = {}  # id -> (signature, when sent)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(q)
        if self.task is None or self.task.done():
            self.since = utcnow() - OVERLAP
            self.task = asyncio.get_running_loop().create_task(self._run())
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    def _poll(self) -> list[dict[str, Any]]:
        with self.app.state.sessionmaker() as session:
            rows = changed_since(session, self.since - OVERLAP)
        now = utcnow()
        fresh = []
        for s in rows:
            sig = _signature(s)
            if self.seen.get(s["id"], ("",))[0] != sig:
                fresh.append(s)
            self.seen[s["id"]] = (sig, now)
        self.since = now
        cutoff = now - 2 * OVERLAP
        self.seen = {k: v for k, v in self.seen.items() if v[1] >= cutoff}
        return fresh

    async def _run(self) -> None:
        while self.subscribers and not self.closing:
            await asyncio.sleep(TICK_S)
            try:
                fresh = await anyio.to_thread.run_sync(self._poll)
            except Exception:  # noqa: BLE001 - a database blip: the next tick looks back further
                log.warning("event stream: polling the job store failed", exc_info=True)
                continue
            for q in list(self.subscribers):
                for s in fresh:
                    try:
                        q.put_nowait(s)
                    except asyncio.QueueFull:  # a stalled client: drop it, its EventSource reconnects
                        self.subscribers.discard(q)
                        break


def feed_of(app: FastAPI) -> ChangeFeed:
    feed = getattr(app.state, "change_feed", None)
    if feed is None:
        feed = app.state.change_feed = ChangeFeed(app)
    return feed


def close_streams(app: FastAPI) -> None:
    """End every open stream within a tick (server shutdown: uvicorn waits for open responses)."""
    feed_of(app).closing = True


def _event(summary: dict[str, Any]) -> str:
    return f"event: job\ndata: {json.dumps(summary, separators=(',', ':'))}\n\n"


def _may_see(who: Principal, summary: dict[str, Any]) -> bool:
    """Admins see every job's changes; everyone else only the jobs they submitted."""
    return who.admin or summary.get("created_by") == who.name


async def _stream(feed: ChangeFeed, q: asyncio.Queue, first: dict | None,
                  job_id: int | None, who: Principal) -> AsyncIterator[str]:
    try:
        yield "retry: 2000\n\n"
        if first is not None:
            yield _event(first)
        last_ping = time.monotonic()
        while not feed.closing:
            try:
                s = await asyncio.wait_for(q.get(), timeout=TICK_S)
            except asyncio.TimeoutError:
                s = None
            if q not in feed.subscribers:  # dropped by the feed (it fell behind): the client reconnects
                return
            if s and (job_id is None or s["id"] == job_id) and _may_see(who, s):
                yield _event(s)
            if time.monotonic() - last_ping >= PING_S:
                last_ping = time.monotonic()
                yield ": ping\n\n"
    finally:
        feed.unsubscribe(q)


@router.get("/stream", summary="Job changes as Server-Sent Events (text/event-stream)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`event: job` + `data: <job summary JSON>` per change; `: ping` every 15 s"}})
async def event_stream(request: Request, who: PrincipalDep,
                       job_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="only this job")] = None
                       ) -> StreamingResponse:
    first = None
    if job_id is not None:
        def read() -> dict[str, Any] | None:
            with request.app.state.sessionmaker() as session:
                return job_summary(session, job_id)
        first = await anyio.to_thread.run_sync(read)
    # (a client that goes away is noticed by StreamingResponse, which cancels the generator)
        if first is None or not _may_see(who, first):
            raise ApiError(404, "not_found", f"job {job_id} not found", {"job_id": job_id})
    feed = feed_of(request.app)
    q = feed.subscribe()
    return StreamingResponse(_stream(feed, q, first, job_id, who), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
