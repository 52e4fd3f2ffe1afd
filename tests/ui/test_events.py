"""GET /v1/events/stream against a real uvicorn (in a thread): the SSE wire format the dashboard
and the Python client read, the ?job_id filter, pings, and the one shared poller."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import uvicorn

from api.db.leases import claim
from api.db.session import make_engine, session_factory, upgrade
from api.main import create_app
from api.routes import events
from api.settings import Settings
from tests.support.net import free_port, wait_for, wait_for_http


@pytest.fixture
def served(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setattr(events, "PING_S", 0.5)
    url = database_url  # SQLite and PostgreSQL: the change query compares stored timestamps
    upgrade(url)
    settings = Settings(database_url=url, artifact_root=tmp_path / "a", data_root=tmp_path / "d", broker_url=None,
                        api_tokens=None, auth="off")
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_for_http(base + "/healthz", 30, "uvicorn in a thread")
    engine = make_engine(url)
    try:
        yield {"base": base, "app": app, "sessions": session_factory(engine)}
    finally:
        events.close_streams(app)  # open streams end within a tick, so uvicorn can stop
        server.should_exit = True
        thread.join(20)
        engine.dispose()


def submit(base: str, name: str) -> int:
    r = httpx.post(base + "/v1/jobs", json={"name": name, "spec": {"method": {"name": "rotation"},
                                                                   "data": {"dataset": "digits"}}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def read_events(lines: Iterator[str], want: int, pings: list[str]) -> list[dict[str, Any]]:
    """Parse `event: job` / `data: ...` blocks until ``want`` events arrived; comments go to pings."""
    got: list[dict[str, Any]] = []
    kind = None
    for line in lines:
        if line.startswith(":"):
            pings.append(line)
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            assert kind == "job"
            got.append(json.loads(line[6:]))
            if len(got) >= want:
                return got
    raise AssertionError(f"stream ended after {got}")


def test_stream_sends_job_changes_in_the_documented_format(served: dict[str, Any]) -> None:
    base = served["base"]
    watched = submit(base, "watched")
    with httpx.stream("GET", f"{base}/v1/events/stream?job_id={watched}", timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        pings: list[str] = []
        first = read_events(lines, 1, pings)[0]  # the current state first
        assert first["id"] == watched and first["status"] == "queued"
        assert set(first["progress"]) == {"epoch", "step", "total_steps", "images_per_sec", "eta_s"}
        assert {"attempt", "updated_at"} <= set(first)
        submit(base, "other job: filtered out")
        lease = claim(served["sessions"], watched, "test-worker", lease_seconds=600)
        assert lease is not None
        with lease.guarded(progress={"epoch": 1, "step": 5, "total_steps": 10, "images_per_sec": 99.0, "eta_s": 3.0}):
            pass
        seen = [first]
        while not (seen[-1]["status"] == "running" and seen[-1]["progress"]["step"] == 5):
            seen += read_events(lines, 1, pings)
        assert {e["id"] for e in seen} == {watched}
        assert seen[-1]["attempt"] == 1 and seen[-1]["progress"]["eta_s"] == 3.0
        lease.heartbeat()  # a lease renewal only: no event for it, just the pings
        for line in lines:
            assert not line.startswith("data:"), line
            if line == ": ping":
                break


def test_one_stream_for_all_jobs_and_one_poller(served: dict[str, Any]) -> None:
    base = served["base"]
    with httpx.stream("GET", f"{base}/v1/events/stream", timeout=30) as r1, \
            httpx.stream("GET", f"{base}/v1/events/stream", timeout=30) as r2:
        ids = {submit(base, "a"), submit(base, "b")}
        readers = [r1.iter_lines(), r2.iter_lines()]  # kept: a dropped reader closes its connection
        for lines in readers:
            got = read_events(lines, 2, [])
            assert {e["id"] for e in got} == ids and {e["status"] for e in got} == {"queued"}
        feed = events.feed_of(served["app"])
        assert len(feed.subscribers) == 2  # both fed by the same task, one query per tick
    wait_for(lambda: not feed.subscribers, 10, "closed streams to unsubscribe")
    wait_for(lambda: feed.task.done(), 10, "the poller to stop when nobody listens")


