"""``Client``: the pretextlab HTTP API from Python (httpx, synchronous).

    from pretextlab.client import Client, NotFound

    with Client("http://gpu-box:8000", token="...") as client:
        job = client.submit("examples/simclr_quickstart.json", name="try", tags=["demo"])
        done = client.wait(job["id"])                  # a progress bar on stderr
        loss = client.metrics(job["id"], "train/loss", as_frame=True)
        client.download(job["id"], "backbone.safetensors", "weights/")

Jobs, events, artifacts and results come back as the API's JSON (plain dicts and lists, see
docs/api.md); errors as the typed exceptions of :mod:`pretextlab.errors`, re-exported here.
``wait`` and ``watch`` follow the server's event stream (``GET /v1/events/stream``) and fall back
to polling ``GET /v1/jobs/{id}`` with back-off on a server without one.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, AsyncIterator, Iterator, Mapping
from urllib.parse import quote

import httpx

from pretextlab import __version__
from pretextlab.errors import (
    ApiError,
    AuthError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    NotFound,
    PretextlabError,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ValidationError,
    WaitTimeout,
    error_from_response,
)
from pretextlab.sse import parse_events

__all__ = [
    "Client", "AsyncClient", "ApiError", "AuthError", "BadRequest", "Conflict", "ConnectionFailed", "NotFound",
    "PretextlabError", "RateLimited", "ServerError", "ServiceUnavailable", "ValidationError", "WaitTimeout",
    "FINAL_STATUSES",
]

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_URL = "http://127.0.0.1:8000"
STREAM_PATH = "/v1/events/stream"
# A stream silent this long is checked with one GET and reopened: a proxy may have dropped it
# without closing it, and a deadline must still be honoured.
STREAM_IDLE_S = 30.0
PAGE_LIMIT = 500  # the API's largest page of jobs


class Client:
    """A connection to one pretextlab server.

    ``url`` and ``token`` default to ``PRETEXTLAB_URL`` (else http://127.0.0.1:8000) and
    ``PRETEXTLAB_TOKEN``; ``timeout`` bounds each request (seconds). Use it as a context manager
    or call :meth:`close`.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0, *,
                 poll_interval: float = 0.5, max_poll_interval: float = 5.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = (url or os.environ.get("PRETEXTLAB_URL") or DEFAULT_URL).rstrip("/")
        token = os.environ.get("PRETEXTLAB_TOKEN") if token is None else token
        headers = {"User-Agent": f"pretextlab-client/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        self.stream_supported: bool | None = None  # learnt on the first watch: None = not tried yet

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 json_body: Any = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            r = self._http.request(method, path, params=params, json=json_body, headers=headers)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {exc or type(exc).__name__}") from exc
        if r.status_code >= 400:
            raise error_from_response(r)
        return r

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params).json()

    # -- the catalogue ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /readyz``: whether the database (and broker) answer."""
        return self._get("/readyz")

    def methods(self) -> list[dict[str, Any]]:
        """The pretraining methods with their spec schema and defaults."""
        return self._get("/v1/methods")

    def datasets(self) -> list[dict[str, Any]]:
        return self._get("/v1/datasets")

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, spec: Mapping[str, Any] | str | Path | Any, kind: str | None = None, name: str | None = None,
               tags: list[str] | None = None, idempotency_key: str | None = None,
               priority: int | None = None) -> dict[str, Any]:
        """Submit a job; returns it (status ``queued``).

        ``spec`` is a dict, a path to a JSON file, or a pydantic spec (``ssl_core.specs``). With an
        ``idempotency_key`` a retried submission returns the first job instead of a second one."""
        body: dict[str, Any] = {"spec": spec_dict(spec)}
        for key, value in (("kind", kind), ("name", name), ("tags", tags), ("priority", priority)):
            if value is not None:
                body[key] = list(value) if key == "tags" else value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/v1/jobs", json_body=body, headers=headers).json()

    def evaluate(self, source_job_id: int, protocol: str | Mapping[str, Any] = "knn",
                 data: str | Mapping[str, Any] | None = None, *, name: str | None = None,
                 tags: list[str] | None = None, idempotency_key: str | None = None,
                 **spec_fields: Any) -> dict[str, Any]:
        """Submit an evaluation of pretraining job ``source_job_id``'s backbone.

        ``protocol``: "knn" | "linear" | "finetune" or a protocol dict (``{"protocol": "linear",
        "epochs": 10}``); ``data``: a dataset name or an eval data dict; other spec fields
        (``batch_size``, ``device`` ...) as keywords."""
        spec: dict[str, Any] = {"kind": "evaluate", "source_job_id": source_job_id,
                                "protocol": {"protocol": protocol} if isinstance(protocol, str) else dict(protocol),
                                **spec_fields}
        if data is not None:
            spec["data"] = {"dataset": data} if isinstance(data, str) else dict(data)
        return self.submit(spec, kind="evaluate", name=name, tags=tags, idempotency_key=idempotency_key)

    def job(self, job_id: int) -> dict[str, Any]:
        return self._get(f"/v1/jobs/{_id(job_id)}")

    def jobs(self, status: str | None = None, kind: str | None = None, method: str | None = None,
             dataset: str | None = None, tag: str | None = None, limit: int | None = 50) -> list[dict[str, Any]]:
        """Jobs, newest first, following the API's pages up to ``limit`` (None: all of them)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while limit is None or len(out) < limit:
            size = PAGE_LIMIT if limit is None else min(PAGE_LIMIT, limit - len(out))
            page = self._get("/v1/jobs", status=status, kind=kind, method=method, dataset=dataset, tag=tag,
                             cursor=cursor, limit=size)
            out += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return out

    def events(self, job_id: int) -> list[dict[str, Any]]:
        """The job's status history: ``{from_status, to_status, attempt, actor, reason, at}``, oldest first."""
        return self._get(f"/v1/jobs/{_id(job_id)}/events")["items"]

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel: a queued job is ``cancelled`` at once, a running one ``cancelling`` until its worker
        stops at the next step. A finished job raises :class:`Conflict` (code ``invalid_state``)."""
        return self._request("POST", f"/v1/jobs/{_id(job_id)}/cancel").json()

    # -- what a job produced ----------------------------------------------------------------
    def metrics(self, job_id: int, name: str | None = None, max_points: int | None = None, as_frame: bool = False,
                start_step: int | None = None, end_step: int | None = None) -> Any:
        """Without ``name``: the job's metric names. With it: the series as ``[{step, value, epoch}]``
        (downsampled by the server to at most ``max_points``, default 1000, first and last points
        always kept), or a pandas DataFrame with those columns when ``as_frame`` (``df.attrs["downsampled"]``)."""
        if name is None:
            return self._get(f"/v1/jobs/{_id(job_id)}/metrics")["names"]
        series = self._get(f"/v1/jobs/{_id(job_id)}/metrics", name=name, max_points=max_points,
                           start_step=start_step, end_step=end_step)
        if not as_frame:
            return series["points"]
        frame = _frame(series["points"], ["step", "value", "epoch"])
        frame.attrs.update(job_id=job_id, name=name, downsampled=series["downsampled"])
        return frame

    def artifacts(self, job_id: int) -> list[dict[str, Any]]:
        """The files the job registered: ``{name, kind, size, created_at, updated_at, url}``."""
        return self._get(f"/v1/jobs/{_id(job_id)}/artifacts")["items"]

    def download(self, job_id: int, name: str, path: str | Path | None = None) -> Path:
        """Save artifact ``name`` to ``path`` (a file, or a folder to put it in; default: the current
        folder) and return where it went. The bytes are streamed to a temporary file beside the
        target and renamed into place only when complete, so a failed download leaves nothing."""
        dest = Path(path) if path is not None else Path.cwd()
        if dest.is_dir():
            dest = dest / PurePosixPath(name).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        url = f"/v1/jobs/{_id(job_id)}/artifacts/{quote(name, safe='/')}"
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, self._http.stream("GET", url, headers={"Accept": "*/*"}) as r:
                if r.status_code >= 400:
                    r.read()
                    raise error_from_response(r)
                received = 0
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
                    received += len(chunk)
                expected = r.headers.get("content-length")
                if expected is not None and "content-encoding" not in r.headers and received != int(expected):
                    raise ConnectionFailed(f"download of {name!r} stopped after {received} of {expected} bytes")
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            os.unlink(tmp)
            raise ConnectionFailed(f"download of {name!r} from {self.url} failed: {exc or type(exc).__name__}") from exc
        except BaseException:
            os.unlink(tmp)
            raise
        return dest

    def results(self, dataset: str | None = None, protocol: str | None = None, limit: int = 100,
                as_frame: bool = False, group_by: str | None = None, suite_id: int | None = None) -> Any:
        """The leaderboard: succeeded evaluations, best top-1 first (a DataFrame when ``as_frame``).
        ``group_by`` "method" or "variant": the groups instead, each with top-1 mean, std and count."""
        page = self._get("/v1/results", dataset=dataset, protocol=protocol, limit=limit, group_by=group_by,
                         suite_id=suite_id)
        rows = page["groups"] if group_by else page["items"]
        return _frame(rows, None) if as_frame else rows

    # -- suites and sweeps ------------------------------------------------------------------
    def submit_suite(self, body: Mapping[str, Any] | str | Path, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a suite: ``{"preset": "moco_vs_simclr", "scale": "cpu", "seeds": 3}``, a grid
        (``{"base": SPEC, "grid": {"optim.lr": [0.1, 0.3]}, "seeds": 2}``), explicit ``variants`` or
        an Optuna ``search`` (see docs/api.md); a path reads the body from a JSON file."""
        if isinstance(body, (str, Path)):
            body = json.loads(Path(body).read_text())
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/v1/suites", json_body=dict(body), headers=headers).json()

    def suite(self, suite_id: int) -> dict[str, Any]:
        """A suite with its status (derived from its children), children, and a sweep's best trial."""
        return self._get(f"/v1/suites/{_id(suite_id)}")

    def suites(self, limit: int = 50) -> list[dict[str, Any]]:
        return self._get("/v1/suites", limit=limit)["items"]

    def cancel_suite(self, suite_id: int) -> dict[str, Any]:
        """Cancel a suite: no new trials, unfinished children cancelled (running ones checkpoint first)."""
        return self._request("POST", f"/v1/suites/{_id(suite_id)}/cancel").json()

    def suite_table(self, suite_id: int, format: str = "json") -> Any:
        """The comparison table: a dict (``json``), or the ``csv`` / ``markdown`` text."""
        r = self._request("GET", f"/v1/suites/{_id(suite_id)}/table", params={"format": format})
        return r.json() if format == "json" else r.text

    def wait_suite(self, suite_id: int, timeout: float | None = None, progress: bool = True,
                   interval: float = 2.0) -> dict[str, Any]:
        """Poll until the suite is succeeded, failed or cancelled and return it; ``progress`` draws
        a bar of finished children on stderr. Raises :class:`WaitTimeout` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from pretextlab.progress import SuiteProgress

            bar = SuiteProgress(_id(suite_id))
        try:
            while True:
                suite = self.suite(suite_id)
                if bar is not None:
                    bar.update(suite)
                if suite["status"] in FINAL_STATUSES:
                    return suite
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"suite {suite_id} is still {suite['status']} after {timeout:g}s", suite)
                time.sleep(interval)
        finally:
            if bar is not None:
                bar.close()

    # -- following a job --------------------------------------------------------------------
    def wait(self, job_id: int, timeout: float | None = None, progress: bool = True) -> dict[str, Any]:
        """Block until the job is succeeded, failed or cancelled and return it (check its
        ``status``: a failed job is returned, not raised). ``progress`` draws a bar on stderr.
        Raises :class:`WaitTimeout` after ``timeout`` seconds (the job goes on)."""
        bar = None
        if progress:
            from pretextlab.progress import JobProgress

            bar = JobProgress(_id(job_id))
        job: dict[str, Any] = {}
        try:
            for job in self.watch(job_id, timeout=timeout):
                if bar is not None:
                    bar.update(job)
        finally:
            if bar is not None:
                bar.close()
        return job

    def watch(self, job_id: int, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the job each time its status or progress changes, first as it is now, last in full
        once finished. Fed by the event stream when the server has one, else by polling with back-off;
        a database outage (503) or a dropped connection is waited out until ``timeout``."""
        job_id = _id(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = self.job(job_id)
        yield last
        if last["status"] in FINAL_STATUSES:
            return
        interval, fresh = self.poll_interval, True  # fresh: ``last`` is a whole job read by GET
        while last["status"] not in FINAL_STATUSES:
            if self.stream_supported is not False:
                states = self._stream_states(job_id, deadline)
                try:
                    for state in states:
                        if _changed(last, state):
                            last, fresh = {**last, **state}, False
                            if last["status"] in FINAL_STATUSES:
                                break
                            yield last
                            interval = self.poll_interval
                finally:
                    states.close()
            # The stream ended, is absent, or stayed silent: read the job itself (the source of truth).
            state, moved = self._job_or_none(job_id), False
            if state is not None:
                moved = _changed(last, state)
                last, fresh = state, True
                if last["status"] in FINAL_STATUSES:
                    break
                if moved:
                    yield last
            # back off while nothing moves; a change brings the interval back to the shortest
            interval = self.poll_interval if moved else min(interval * 1.5, self.max_poll_interval)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"job {job_id} is still {last['status']} after {timeout:g}s", last)
            time.sleep(interval if remaining is None else min(interval, remaining))
        yield last if fresh else self.job(job_id)

    def _job_or_none(self, job_id: int) -> dict[str, Any] | None:
        try:
            return self.job(job_id)
        except (ServiceUnavailable, ConnectionFailed):
            return None

    def _stream_states(self, job_id: int, deadline: float | None) -> Iterator[dict[str, Any]]:
        """Job states from ``GET /v1/events/stream?job_id=``: ``event: job`` with JSON ``{id, status,
        progress}``. Returns when the stream closes or is idle, and at once (remembering it) on a
        server without the endpoint."""
        idle = STREAM_IDLE_S if deadline is None else max(0.1, min(STREAM_IDLE_S, deadline - time.monotonic()))
        timeout = httpx.Timeout(self.timeout, read=idle)
        try:
            with self._http.stream("GET", STREAM_PATH, params={"job_id": job_id}, timeout=timeout,
                                   headers={"Accept": "text/event-stream"}) as r:
                if r.status_code >= 400:
                    r.read()
                    err = error_from_response(r)
                    job_gone = isinstance(err, NotFound) and isinstance(err.details, dict) and "job_id" in err.details
                    if r.status_code in (404, 405, 501) and not job_gone:  # a server without the stream
                        self.stream_supported = False
                        return
                    if isinstance(err, ServiceUnavailable):
                        return
                    raise err
                self.stream_supported = True
                caught_up = self._job_or_none(job_id)  # what changed between our last read and the subscription
                if caught_up is not None:
                    yield caught_up
                for event in parse_events(r.iter_lines()):
                    state = _job_event(event.event, event.data, job_id)
                    if state is not None:
                        yield state
                    if deadline is not None and time.monotonic() > deadline:
                        return
        except httpx.TransportError:  # idle past the read timeout, or dropped: the caller polls and reopens
            return


class AsyncClient:
    """:class:`Client`'s twin for asyncio code: the same methods, awaited (``watch`` is an async
    iterator). Each call runs the synchronous client in a worker thread (``asyncio.to_thread``), so
    the event loop never blocks and both share one tested implementation.

        async with AsyncClient(url) as client:
            job = await client.submit(spec)
            async for state in client.watch(job["id"]):
                ...
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0, **options: Any):
        self.sync = Client(url, token, timeout, **options)

    def __repr__(self) -> str:
        return f"AsyncClient({self.sync.url!r})"

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.sync.close)

    def __getattr__(self, name: str) -> Any:
        if name not in _AWAITABLE:
            raise AttributeError(name)
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        call.__name__, call.__doc__ = name, method.__doc__
        return call

    async def watch(self, job_id: int, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        states, done = self.sync.watch(job_id, timeout), object()
        try:
            while (state := await asyncio.to_thread(next, states, done)) is not done:
                yield state
        finally:
            await asyncio.to_thread(states.close)


_AWAITABLE = frozenset({"health", "methods", "datasets", "submit", "evaluate", "job", "jobs", "events", "cancel",
                        "metrics", "artifacts", "download", "results", "wait"})


# -- helpers ----------------------------------------------------------------------------------
def spec_dict(spec: Any) -> dict[str, Any]:
    """A job spec as a JSON-able dict: from a dict, a JSON file path, or a pydantic model."""
    if isinstance(spec, (str, Path)):
        try:
            data = json.loads(Path(spec).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read spec {spec}: {exc}") from None
    elif hasattr(spec, "model_dump"):
        data = spec.model_dump(mode="json")
    else:
        data = spec
    if not isinstance(data, Mapping):
        raise TypeError(f"a spec must be a JSON object, not {type(data).__name__}")
    return json.loads(json.dumps(dict(data)))  # a deep copy, and a clear error for what JSON cannot hold


def _id(job_id: Any) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        try:
            job_id = int(str(job_id))
        except ValueError:
            raise ValueError(f"job id must be an integer, not {job_id!r}") from None
    return job_id


def _changed(last: Mapping[str, Any], state: Mapping[str, Any]) -> bool:
    return state.get("status") != last.get("status") or state.get("progress") != last.get("progress")


def _job_event(name: str, data: str, job_id: int) -> dict[str, Any] | None:
    if name != "job":
        return None
    try:
        state = json.loads(data)
    except ValueError:
        return None
    if not isinstance(state, dict) or state.get("id", state.get("job_id")) != job_id or "status" not in state:
        return None
    return {k: v for k, v in state.items() if k in ("status", "progress", "attempt", "error", "updated_at")}


def _frame(rows: list[dict[str, Any]], columns: list[str] | None) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("as_frame=True needs pandas (pip install pandas)") from None
    return pd.DataFrame(rows, columns=columns)
