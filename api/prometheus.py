"""``GET /metrics``: Prometheus text format, written by ``prometheus_client``.

* **From SQL at scrape time** (:mod:`api.db.ops_stats`): jobs by status (the queue depth is
  ``status="queued"``), claims, requeues, lease losses and the run-duration histogram. Those
  events happen in worker processes; counting them from the rows they already write makes any API
  replica's answer complete without Prometheus multiprocess mode (which needs a directory shared
  by all processes -- impossible across hosts -- and breaks on a worker restarted with a new pid).
* **In this process**: the HTTP latency histogram, labelled by route template (``/v1/jobs/{job_id}``,
  never the raw path: bounded label values), method and status. Each API process has its own; run
  one process per container (the compose default) and scrape each.

Each app has its own registry, so test apps never share counters. Access: the same bearer token as
``/v1`` (docs/security.md, "Operations").
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Iterator

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.db import ops_stats
from api.security import require_token

log = logging.getLogger("pretextlab.api")

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

router = APIRouter(tags=["operations"], dependencies=[Depends(require_token)])


class SqlCollector(Collector):
    """Queue and worker figures, read from the job store on every scrape."""

    def __init__(self, app: FastAPI):
        self.app = app

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pretextlab_store_up", "1 when the job store answered this scrape")
        sessions = getattr(self.app.state, "sessionmaker", None)
        if sessions is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            with sessions() as s:
                families = list(_families(s))
        except Exception as exc:  # noqa: BLE001 - a scrape during an outage says so, it does not fail
            log.warning("metrics: job store unreachable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families


def _families(s: Any) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("pretextlab_jobs", "jobs by status (queued = queue depth)", labels=["status"])
    for status, n in ops_stats.jobs_by_status(s).items():
        jobs.add_metric([status], n)
    yield jobs
    yield CounterMetricFamily("pretextlab_job_claims", "executions started (claims)", value=ops_stats.claims(s))
    requeues = CounterMetricFamily("pretextlab_job_requeues", "running -> queued, by cause", labels=["reason"])
    for reason, n in ops_stats.requeues(s).items():
        requeues.add_metric([reason], n)
    yield requeues
    yield CounterMetricFamily("pretextlab_lease_losses", "attempts whose lease expired (worker lost)",
                              value=ops_stats.lease_losses(s))
    hist = HistogramMetricFamily("pretextlab_job_run_duration_seconds", "duration of finished runs (attempts)",
                                 labels=["outcome"])
    for d in ops_stats.run_durations(s):
        buckets = [(_le(b), n) for b, n in zip(ops_stats.DURATION_BUCKETS, d.buckets)] + [("+Inf", d.count)]
        hist.add_metric([d.outcome], buckets, d.total_s)
    yield hist


def _le(bound: float) -> str:
    return str(float(bound))


class HttpLatencyMiddleware:
    """Times every HTTP request; labels it with the matched route's template once routing is done."""

    def __init__(self, app: Callable[..., Awaitable[None]], histogram: Histogram):
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        start = time.perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            self.histogram.labels(template, scope.get("method", ""), str(status["code"])).observe(
                time.perf_counter() - start)


@router.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.prometheus_registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """A registry for this app: the SQL collector, the HTTP histogram and its middleware, the route."""
    registry = CollectorRegistry()
    registry.register(SqlCollector(app))
    histogram = Histogram("pretextlab_http_request_duration_seconds", "HTTP request latency",
                          ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=registry)
    app.state.prometheus_registry = registry
    app.include_router(router)
    app.add_middleware(HttpLatencyMiddleware, histogram=histogram)
