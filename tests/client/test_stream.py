"""The client's event-stream reading, before any server has the stream: the SSE parser on the
standard's own examples, and ``watch`` over a stream served by an httpx transport (the one place a
stand-in is used: the real endpoint is tested in test_client.py where the API serves it)."""

from __future__ import annotations

import json

import httpx

from pretextlab.client import Client
from pretextlab.sse import parse_events


def test_sse_parser_follows_the_standard():
    lines = [": keep-alive", "", "event: job", "data: {\"id\": 1,", "data: \"status\": \"running\"}", "id: 7", "",
             "data:no-space", "retry: 1500", "", "event: job", "", "data", "", "bogus: x", "data: tail"]
    events = list(parse_events(lines))
    assert [(e.event, e.data, e.id) for e in events] == [
        ("job", '{"id": 1,\n"status": "running"}', "7"), ("message", "no-space", "7"), ("message", "", "7")]
    assert events[1].retry_ms == 1500
    # an event without data is dropped; one not ended by a blank line is never dispatched
    assert json.loads(events[0].data) == {"id": 1, "status": "running"}


def job(status: str, step: int | None = None, **extra) -> dict:
    progress = {"epoch": 1, "step": step, "total_steps": 8, "images_per_sec": 100.0, "eta_s": 1.0} if step else None
    return {"id": 5, "status": status, "progress": progress, "result": None, **extra}


def sse(*states: dict) -> bytes:
    chunks = [": connected\n\n", "event: job\ndata: " + json.dumps({"id": 99, "status": "running"}) + "\n\n"]
    chunks += [f"event: job\ndata: {json.dumps(s)}\n\n" for s in states]
    return "".join(chunks).encode()


def test_watch_follows_the_stream_and_ends_with_the_whole_job():
    gets = iter([job("queued"), job("queued"), job("succeeded", 8, result={"step": 8})])
    stream = sse({"id": 5, "status": "running", "progress": job("running", 2)["progress"]},
                 {"id": 5, "status": "running", "progress": job("running", 6)["progress"]},
                 {"id": 5, "status": "succeeded", "progress": job("running", 8)["progress"]})
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/events/stream":
            assert request.url.params["job_id"] == "5" and request.headers["accept"] == "text/event-stream"
            return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=next(gets))

    with Client("http://test", transport=httpx.MockTransport(handler)) as c:
        states = list(c.watch(5))
        assert c.stream_supported is True
    assert [(s["status"], (s["progress"] or {}).get("step")) for s in states] == [
        ("queued", None), ("running", 2), ("running", 6), ("succeeded", 8)]
    assert states[-1]["result"] == {"step": 8}  # read back in full once the stream said it ended
    assert seen == ["/v1/jobs/5", "/v1/events/stream", "/v1/jobs/5", "/v1/jobs/5"]  # other jobs' events ignored


def test_watch_polls_with_back_off_where_the_stream_is_missing_and_rides_out_503():
    answers = iter([httpx.Response(200, json=job("queued")),
                    httpx.Response(200, json=job("running", 1)),
                    httpx.Response(503, json={"error": {"code": "service_unavailable", "message": "db down"}},
                                   headers={"Retry-After": "1"}),
                    httpx.Response(200, json=job("running", 1)),
                    httpx.Response(200, json=job("succeeded", 8, result={"step": 8}))])
    streams = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events/stream":
            streams.append(1)
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such endpoint"}})
        return next(answers)

    with Client("http://test", transport=httpx.MockTransport(handler), poll_interval=0.01,
                max_poll_interval=0.02) as c:
        states = list(c.watch(5))
        assert c.stream_supported is False
    assert [s["status"] for s in states] == ["queued", "running", "succeeded"] and len(streams) == 1
