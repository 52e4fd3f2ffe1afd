"""pretextlab.client against a real embedded server: submit, wait, metrics, artifacts, download,
cancel, results, evaluate; the API's errors as typed exceptions; the event stream or its fallback."""

from __future__ import annotations

import pytest

from pretextlab.client import (
    AuthError,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    ValidationError,
    WaitTimeout,
)
from tests.client.conftest import TOKEN
from tests.support.net import free_port
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
STEPS_PER_EPOCH = 4


def test_submit_wait_read_metrics_and_download(client, server, tmp_path, capsys):
    job = client.submit(tiny_pretrain(epochs=2), name="client-run", tags=["client", "t1"])
    assert job["status"] == "queued" and job["name"] == "client-run" and job["tags"] == ["client", "t1"]

    done = client.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded", server.log()
    assert done["result"]["step"] == 2 * STEPS_PER_EPOCH and done["finished_at"]
    assert f"job {job['id']}" in capsys.readouterr().err  # the progress bar
    assert client.stream_supported is True  # the server has the stream, and wait used it

    assert "train/loss" in client.metrics(job["id"])
    points = client.metrics(job["id"], "train/loss")
    assert [p["step"] for p in points] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert all(isinstance(p["value"], float) for p in points)
    two = client.metrics(job["id"], "train/loss", max_points=2)
    assert [p["step"] for p in two] == [1, 2 * STEPS_PER_EPOCH]  # first and last kept
    frame = client.metrics(job["id"], "train/loss", as_frame=True)
    assert list(frame.columns) == ["step", "value", "epoch"] and len(frame) == len(points)
    assert frame["value"].tolist() == [p["value"] for p in points] and frame.attrs["downsampled"] is False

    names = {a["name"]: a for a in client.artifacts(job["id"])}
    assert "backbone.safetensors" in names
    saved = client.download(job["id"], "backbone.safetensors", tmp_path)
    assert saved == tmp_path / "backbone.safetensors"
    assert saved.read_bytes() == server.job_file(job["id"], "backbone.safetensors").read_bytes()
    assert names["backbone.safetensors"]["size"] == saved.stat().st_size
    nested = client.download(job["id"], "checkpoints/last.safetensors", tmp_path / "sub" / "last.safetensors")
    assert nested.read_bytes() == server.job_file(job["id"], "checkpoints/last.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.safetensors", "sub"]  # no temp file left

    assert list(client.watch(job["id"])) == [client.job(job["id"])]  # a finished job: once
    listed = client.jobs(status="succeeded", tag="t1")
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.job(job["id"])["artifacts"] == len(names)
    assert [e["to_status"] for e in client.events(job["id"])][:2] == ["queued", "running"]

    # an evaluation of the backbone, then the leaderboard
    ev = client.evaluate(job["id"], "knn", data={"dataset": "synthetic", "train_subset": 16, "test_subset": 8},
                         device="cpu", name="knn-of-client-run")
    assert ev["kind"] == "evaluate" and ev["source_job_id"] == job["id"]
    assert client.wait(ev["id"], timeout=120, progress=False)["status"] == "succeeded", server.log()
    rows = [r for r in client.results(dataset="synthetic") if r["evaluation_job_id"] == ev["id"]]
    assert len(rows) == 1 and rows[0]["pretrain_job_id"] == job["id"] and 0 <= rows[0]["top1"] <= 1
    assert client.results(protocol="knn", as_frame=True)["evaluation_job_id"].tolist()


def test_jobs_follows_pages(client):
    ids = [client.submit(tiny_pretrain(epochs=1), tags=["paging"])["id"] for _ in range(3)]
    assert [j["id"] for j in client.jobs(tag="paging", limit=2)] == ids[::-1][:2]
    assert [j["id"] for j in client.jobs(tag="paging", limit=None)] == ids[::-1]  # pages of 500, one here
    for i in ids:
        client.wait(i, timeout=120, progress=False)


def test_cancel_a_running_job_then_a_finished_one_conflicts(client, server):
    job = client.submit(tiny_pretrain(epochs=500))
    for state in client.watch(job["id"], timeout=90):
        if state["status"] == "running" and (state.get("progress") or {}).get("step"):
            break
    assert client.cancel(job["id"])["status"] in ("cancelling", "cancelled")
    assert client.wait(job["id"], timeout=60, progress=False)["status"] == "cancelled", server.log()
    with pytest.raises(Conflict) as err:
        client.cancel(job["id"])
    assert err.value.code == "invalid_state" and err.value.detail("status") == "cancelled"


def test_wait_gives_up_after_its_timeout_and_the_job_goes_on(client):
    job = client.submit(tiny_pretrain(epochs=500))
    with pytest.raises(WaitTimeout) as err:
        client.wait(job["id"], timeout=1.0, progress=False)
    assert err.value.job["id"] == job["id"] and err.value.job["status"] in ("queued", "running")
    client.cancel(job["id"])
    assert client.wait(job["id"], timeout=60, progress=False)["status"] == "cancelled"


def test_api_errors_are_typed_with_the_api_code_and_details(client, tmp_path):
    with pytest.raises(NotFound) as err:
        client.job(987654)
    assert (err.value.status, err.value.code, err.value.detail("job_id")) == (404, "not_found", 987654)
    assert "job 987654 not found" in str(err.value)

    with pytest.raises(ValidationError) as err:
        client.submit(tiny_pretrain(epochs=0, batch_size=1))
    assert err.value.status == 422 and err.value.code == "invalid_spec"
    assert {d["loc"] for d in err.value.details} == {"spec.epochs", "spec.batch_size"}

    done = client.submit(tiny_pretrain(epochs=1), idempotency_key="client-key-1")
    again = client.submit(tiny_pretrain(epochs=1), idempotency_key="client-key-1")
    assert again["id"] == done["id"]
    with pytest.raises(Conflict) as err:
        client.submit(tiny_pretrain(epochs=2), idempotency_key="client-key-1")
    assert err.value.code == "idempotency_conflict" and err.value.detail("job_id") == done["id"]

    client.wait(done["id"], timeout=120, progress=False)
    with pytest.raises(NotFound) as err:
        client.download(done["id"], "no-such-file.bin", tmp_path / "x.bin")
    assert (err.value.detail("job_id"), err.value.detail("name")) == (done["id"], "no-such-file.bin")
    assert list(tmp_path.iterdir()) == []  # nothing half-written

    with pytest.raises(ValueError, match="job id must be an integer"):
        client.job("abc")
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as dead, pytest.raises(ConnectionFailed):
        dead.job(1)


def test_tokens_wrong_or_missing_raise_auth_error(token_server):
    with Client(token_server.url) as anonymous, pytest.raises(AuthError) as err:
        anonymous.jobs()
    assert (err.value.status, err.value.code) == (401, "unauthorized")
    with Client(token_server.url, token="wrong") as wrong, pytest.raises(AuthError) as err:
        wrong.job(1)
    assert (err.value.status, err.value.code) == (403, "forbidden")
    with Client(token_server.url, token=TOKEN) as ok:
        job = ok.submit(tiny_pretrain(epochs=1))
        assert ok.wait(job["id"], timeout=120, progress=False)["status"] == "succeeded"
        assert repr(ok) == f"Client({token_server.url!r})"  # the token is never shown


def test_wait_follows_the_event_stream(client, server):
    """The server serves GET /v1/events/stream: wait/watch must use it (the polling fallback has its
    own test against a server without the stream)."""
    job = client.submit(tiny_pretrain(epochs=20))  # 80 steps, >= 4 s: several ticks of the stream
    states = list(client.watch(job["id"], timeout=120))
    assert states[-1]["status"] == "succeeded" and states[-1]["result"]  # the last one is the whole job
    assert states[0]["status"] in ("queued", "running")
    assert client.stream_supported is True
    steps = [(s.get("progress") or {}).get("step") for s in states if s["status"] == "running"]
    assert len([s for s in steps if s]) >= 2, states  # progress arrived as it happened


def test_async_twin(server):
    import asyncio

    from pretextlab.client import AsyncClient

    async def scenario() -> tuple[dict, list[str], list[str]]:
        async with AsyncClient(server.url) as client:
            job = await client.submit(tiny_pretrain(epochs=1), name="async")
            statuses = [s["status"] async for s in client.watch(job["id"], timeout=120)]
            names = [a["name"] for a in await client.artifacts(job["id"])]
            with pytest.raises(NotFound):
                await client.job(987654)
            return await client.job(job["id"]), statuses, names

    job, statuses, names = asyncio.run(scenario())
    assert job["name"] == "async" and job["status"] == "succeeded" and statuses[-1] == "succeeded"
    assert "backbone.safetensors" in names
