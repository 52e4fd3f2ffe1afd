"""POST/GET /v1/jobs, events, cancel, idempotency, evaluation sources: on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from api.db.jobs import create_job, job_events, transition
from api.db.models import Job, JobEvent
from api_helpers import PRETRAIN, submit

EVAL = {"kind": "evaluate", "data": {"dataset": "synthetic", "train_subset": 32, "test_subset": 16}}


def test_submit_pretrain_denormalises_and_records_event(client, db):
    job = submit(client, name="demo", tags=["a", "b"], priority=5)
    assert job["status"] == "queued" and job["kind"] == "pretrain"
    assert (job["method"], job["dataset"], job["queue"], job["protocol"]) == ("simclr", "synthetic", "gpu", None)
    assert job["name"] == "demo" and job["tags"] == ["a", "b"] and job["priority"] == 5
    # the stored spec is explicit: the method's paper defaults were filled in
    assert job["spec"]["optim"]["name"] == "lars" and job["spec"]["augment"]
    assert job["attempt"] == 0 and job["artifacts"] == 0
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["spec"] == job["spec"] and got["progress"] is None
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["items"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [(None, "queued")]


def test_moco_label_and_evaluate_queue(client):
    moco = submit(client, {**PRETRAIN, "method": {"name": "moco", "version": 2, "queue_size": 48}})
    assert moco["method"] == "moco_v2"
    ev = submit(client, {**EVAL, "source_job_id": moco["id"]})
    assert (ev["kind"], ev["queue"], ev["protocol"], ev["method"], ev["source_job_id"]) == (
        "evaluate", "cpu", "knn", "moco_v2", moco["id"])


def test_progress_is_reported(client, db):
    job = submit(client)
    with db() as s:
        assert transition(s, job["id"], "queued", "running", owner="w1",
                               progress={"epoch": 1, "step": 10, "total_steps": 40, "images_per_sec": 123.5,
                                         "eta_s": 3.0})
        s.commit()
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert got["status"] == "running" and got["owner"] == "w1"
    assert got["progress"] == {"epoch": 1, "step": 10, "total_steps": 40, "images_per_sec": 123.5, "eta_s": 3.0}


def test_kind_mismatch_and_invalid_spec_name_the_field(client):
    r = client.post("/v1/jobs", json={"kind": "evaluate", "spec": {"kind": "pretrain"}})
    assert r.status_code == 422 and "spec.kind" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "epochs": 10**9}})
    assert r.status_code == 422
    assert any(d["loc"] == "spec.epochs" for d in r.json()["error"]["details"]), r.json()
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "batch_size": 10**6}})
    assert r.status_code == 422 and "spec.batch_size" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "data": {"dataset": "synthetic", "image_size": 100000}}})
    assert r.status_code == 422 and "image_size" in r.json()["error"]["message"]
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "method": {"name": "moco", "queue_size": 1 << 30}}})
    assert r.status_code == 422 and "queue_size" in r.json()["error"]["message"]
    # a queue longer than the training set minus one batch (64 synthetic images, batch 16)
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "method": {"name": "moco", "queue_size": 64}}})
    msg = r.json()["error"]["message"]
    assert r.status_code == 422 and "method.queue_size" in msg and "64 training samples" in msg, msg
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "data": {"dataset": "image_folder", "path": "../../etc",
                                                                     "image_size": 32}}})
    assert r.status_code == 422 and "'..'" in r.json()["error"]["message"]


def test_empty_unbounded_and_mistyped_specs_are_refused_over_http(client):
    r = client.post("/v1/jobs", json={"spec": {}})  # no silent ResNet-18 x 100 epochs on all the data
    assert r.status_code == 422 and any(d["loc"] == "spec.method" for d in r.json()["error"]["details"]), r.json()
    ops = [{"op": "horizontal_flip"}] * 10_001
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "augment": ops}})
    assert r.status_code == 422 and any(d["loc"] == "spec.augment" for d in r.json()["error"]["details"]), r.json()
    for bad in ("3", True):
        r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "epochs": bad}})
        assert r.status_code == 422 and any(d["loc"] == "spec.epochs" for d in r.json()["error"]["details"])
    r = client.post("/v1/jobs", content=b'{"spec": {"method": {"name": "simclr", "temperature": NaN}}}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "finite" in r.text, r.text


def test_idempotency_key(client, db):
    h = {"Idempotency-Key": "run-42"}
    first = client.post("/v1/jobs", json={"spec": PRETRAIN, "name": "x"}, headers=h)
    assert first.status_code == 201
    again = client.post("/v1/jobs", json={"spec": PRETRAIN, "name": "x"}, headers=h)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    other = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "epochs": 2}, "name": "x"}, headers=h)
    assert other.status_code == 409
    err = other.json()["error"]
    assert err["code"] == "idempotency_conflict" and "run-42" in err["message"]
    with db() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 1


def test_evaluate_source_must_be_a_pretraining(client, db):
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "source_job_id": 12345}})
    assert r.status_code == 422 and "job 12345 does not exist" in r.json()["error"]["message"]
    pre = submit(client)
    ev = submit(client, {**EVAL, "source_job_id": pre["id"]})
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "source_job_id": ev["id"]}})
    assert r.status_code == 422 and "not a pretraining" in r.json()["error"]["message"]
    with db() as s:
        transition(s, pre["id"], "queued", "cancelled")
        s.commit()
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "source_job_id": pre["id"]}})
    assert r.status_code == 409 and "cancelled" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "invalid_state"
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "source_job_id": 2**70}})
    assert r.status_code == 422


def test_evaluate_weights_must_stay_inside_allowed_roots(client, settings, tmp_path):
    weights = settings.artifact_root / "jobs" / "1" / "backbone.safetensors"
    ok = client.post("/v1/jobs", json={"spec": {**EVAL, "weights": str(weights)}})
    assert ok.status_code == 201, ok.text
    assert ok.json()["spec"]["weights"] == str(weights.resolve())
    # a relative path is stored resolved against the root that holds it, so the worker opens that file
    (settings.data_root / "w").mkdir(parents=True)
    (settings.data_root / "w" / "b.safetensors").write_bytes(b"x")
    rel = client.post("/v1/jobs", json={"spec": {**EVAL, "weights": "w/b.safetensors"}},
                      headers={"Idempotency-Key": "rel"})
    assert rel.status_code == 201
    assert rel.json()["spec"]["weights"] == str((settings.data_root / "w" / "b.safetensors").resolve())
    again = client.post("/v1/jobs", json={"spec": {**EVAL, "weights": "w/b.safetensors"}},
                        headers={"Idempotency-Key": "rel"})
    assert again.status_code == 200 and again.json()["id"] == rel.json()["id"]
    for bad in ["/etc/passwd", str(tmp_path / "elsewhere" / "w.safetensors"), "../../../etc/passwd"]:
        r = client.post("/v1/jobs", json={"spec": {**EVAL, "weights": bad}})
        assert r.status_code == 422, bad
        assert "weights" in r.json()["error"]["message"]
    # a symlink inside the data root pointing outside is refused after resolution
    settings.data_root.mkdir(parents=True, exist_ok=True)
    (settings.data_root / "escape").symlink_to("/etc")
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "weights": "escape/passwd"}})
    assert r.status_code == 422


def test_unknown_job_is_404_everywhere(client):
    for method, path in [("get", "/v1/jobs/999"), ("get", "/v1/jobs/999/events"), ("post", "/v1/jobs/999/cancel"),
                         ("get", "/v1/jobs/999/metrics"), ("get", "/v1/jobs/999/artifacts")]:
        r = getattr(client, method)(path)
        assert r.status_code == 404, path
        assert r.json()["error"] == {"code": "not_found", "message": "job 999 not found", "details": [{"loc": "job_id", "msg": "job 999 not found", "type": "not_found", "value": 999}]}
    assert client.get("/v1/jobs/99999999999999999999999").status_code == 422
    assert client.get("/v1/jobs/abc").status_code == 422


def test_list_filters_and_cursor_pagination(client, db):
    ids = [submit(client, tags=["even" if i % 2 == 0 else "odd", "all"])["id"] for i in range(7)]
    moco = submit(client, {**PRETRAIN, "method": {"name": "moco", "queue_size": 48}}, tags=["all"])["id"]
    ev = submit(client, {**EVAL, "source_job_id": ids[0]})["id"]
    with db() as s:
        transition(s, ids[1], "queued", "running")
        s.commit()
    # pagination: newest first, pages of 3, nothing lost or repeated
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        assert len(page["items"]) <= 3
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids + [moco, ev], reverse=True)

    def ids_for(**params):
        return [j["id"] for j in client.get("/v1/jobs", params=params).json()["items"]]

    assert ids_for(status="running") == [ids[1]]
    assert ids_for(kind="evaluate") == [ev]
    assert ids_for(method="moco_v2") == [moco]
    assert ids_for(dataset="synthetic", kind="pretrain") == sorted(ids + [moco], reverse=True)
    assert ids_for(tag="even") == sorted(ids[0::2], reverse=True)
    assert ids_for(tag="all", limit=2) == sorted(ids + [moco], reverse=True)[:2]
    assert ids_for(tag="nope") == []
    assert client.get("/v1/jobs", params={"limit": 501}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    bad = client.get("/v1/jobs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_cursor"
    assert len(client.get("/v1/jobs").json()["items"]) == 9  # default limit 50


def test_cancel_queued_running_finished(client, db):
    queued, running, done = (submit(client)["id"] for _ in range(3))
    with db() as s:
        assert transition(s, running, "queued", "running", owner="w")
        assert transition(s, done, "queued", "running")
        assert transition(s, done, "running", "succeeded", result={"final_loss": 0.1})
        s.commit()

    r = client.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    r = client.post(f"/v1/jobs/{running}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling" and r.json()["cancel_requested"] is True
    again = client.post(f"/v1/jobs/{running}/cancel")
    assert again.status_code == 202 and again.json()["status"] == "cancelling"
    for job_id, status in [(done, "succeeded"), (queued, "cancelled")]:
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "invalid_state" and status in r.json()["error"]["message"]
    events = client.get(f"/v1/jobs/{running}/events").json()["items"]
    assert [(e["from_status"], e["to_status"]) for e in events] == [
        (None, "queued"), ("queued", "running"), ("running", "cancelling")]
    assert events[-1]["actor"] == "local"  # the principal when PRETEXTLAB_AUTH=off


def test_transition_is_conditional(db, settings):
    with db() as s:
        job = create_job(s, PRETRAIN, max_attempts=3)
        s.commit()
        assert not transition(s, job.id, "running", "succeeded")  # wrong origin: nothing happens
        assert transition(s, job.id, "queued", "running", owner="a", attempt=Job.attempt + 1)
        assert not transition(s, job.id, "queued", "running", owner="b")  # a second claim loses
        assert not transition(s, job.id, "running", "succeeded", where=Job.owner == "b")  # not the owner
        assert transition(s, job.id, ("queued", "running"), "failed", where=Job.owner == "a", error="boom")
        s.commit()
        s.refresh(job)
        assert (job.status, job.owner, job.attempt, job.error) == ("failed", "a", 1, "boom")
        assert job.finished_at is not None
        events = job_events(s, job.id)
        assert [(e.from_status, e.to_status, e.attempt) for e in events] == [
            (None, "queued", 0), ("queued", "running", 1), ("running", "failed", 1)]


def test_queue_size_limit(database_url, make_settings):
    from fastapi.testclient import TestClient

    from api.db.session import upgrade
    from api.main import create_app

    upgrade(database_url)
    with TestClient(create_app(make_settings(database_url, max_active_jobs=2))) as c:
        submit(c)
        second = submit(c)
        r = c.post("/v1/jobs", json={"spec": PRETRAIN})
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full" and "Retry-After" in r.headers
        assert c.post(f"/v1/jobs/{second['id']}/cancel").status_code == 200
        submit(c)  # room again


@pytest.mark.redis
def test_dispatch_publishes_to_the_jobs_queue(database_url, make_settings, redis_server):
    import redis
    from fastapi.testclient import TestClient

    from api.db.session import upgrade
    from api.dispatch import reset_clients
    from api.main import create_app

    upgrade(database_url)
    reset_clients()
    with TestClient(create_app(make_settings(database_url, broker_url=redis_server.url))) as c:
        pre = submit(c)
        ev = submit(c, {**EVAL, "source_job_id": pre["id"]})
        r = redis.Redis.from_url(redis_server.url)
        assert r.llen("gpu") == 1 and r.llen("cpu") == 1
        assert c.get(f"/v1/jobs/{pre['id']}").json()["status"] == "queued"
        redis_server.stop()
        lost = submit(c)  # broker down: the job is still accepted and stays queued for the reconciler
        assert c.get(f"/v1/jobs/{lost['id']}").json()["status"] == "queued"
        ready = c.get("/readyz")
        assert ready.status_code == 503 and {"loc": "broker", "msg": ready.json()["error"]["message"], "type": "not_ready", "value": "unreachable"} in ready.json()["error"]["details"]
    reset_clients()
    from api.db.session import make_engine, session_factory

    engine = make_engine(database_url)
    with session_factory(engine)() as s:
        assert s.get(Job, pre["id"]).dispatched_at is not None
        assert s.get(Job, ev["id"]).dispatched_at is not None
        assert s.get(Job, lost["id"]).dispatched_at is None
    engine.dispose()


def test_evaluate_of_a_failed_source_is_a_conflict_but_active_sources_are_accepted(client, db):
    pre = submit(client)
    ev = submit(client, {**EVAL, "source_job_id": pre["id"]})  # queued source: waits for it (worker side)
    assert ev["status"] == "queued"
    with db() as s:
        assert transition(s, pre["id"], "queued", "running", owner="w")
        s.commit()
    assert submit(client, {**EVAL, "source_job_id": pre["id"]})["status"] == "queued"
    with db() as s:
        assert transition(s, pre["id"], "running", "failed", error="boom")
        s.commit()
    r = client.post("/v1/jobs", json={"spec": {**EVAL, "source_job_id": pre["id"]}})
    assert r.status_code == 409 and f"job {pre['id']} is failed" in r.json()["error"]["message"]


@pytest.mark.parametrize("key", ["pretextlab:eval-after:1:0", "PRETEXTLAB:x", "pretextlab:"])
def test_reserved_idempotency_keys_are_refused(client, db, key):
    r = client.post("/v1/jobs", json={"spec": PRETRAIN}, headers={"Idempotency-Key": key})
    assert r.status_code == 422, r.text
    assert "reserved" in r.json()["error"]["message"]
    with db() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    # a key merely containing the word is the client's own
    ok = client.post("/v1/jobs", json={"spec": PRETRAIN}, headers={"Idempotency-Key": "my-pretextlab:1"})
    assert ok.status_code == 201


def _folder(path):
    return {"dataset": "image_folder", "path": str(path), "image_size": 16}


def test_dataset_paths_must_stay_inside_allowed_roots(client, settings, tmp_path):
    data_root = settings.data_root
    (data_root / "imgs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (data_root / "escape").symlink_to(outside)  # a symlink inside that points outside
    eval_data = {"dataset": "synthetic", "train_subset": 32, "test_subset": 16}
    cases = [
        ({**PRETRAIN, "data": _folder("/etc")}, "spec.data.path"),
        ({**PRETRAIN, "data": _folder(outside)}, "spec.data.path"),
        ({**PRETRAIN, "data": _folder("escape")}, "spec.data.path"),
        ({**PRETRAIN, "eval": {"data": {**eval_data, "dataset": "image_folder", "path": "/etc"}}},
         "spec.eval.data.path"),
        ({**EVAL, "baseline": "raw_pixels", "data": {**eval_data, "dataset": "image_folder", "path": "/etc"}},
         "spec.data.path"),
    ]
    for spec, field in cases:
        r = client.post("/v1/jobs", json={"spec": spec})
        assert r.status_code == 422, (spec, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_spec" and err["message"].startswith(field + ":"), err
        assert "outside the allowed data roots" in err["message"]
    # inside the data root, relative or absolute; an extra allowed root too
    assert submit(client, {**PRETRAIN, "data": _folder("imgs")})["status"] == "queued"
    assert submit(client, {**PRETRAIN, "data": _folder(data_root / "imgs")})["status"] == "queued"
    ev = submit(client, {**EVAL, "baseline": "raw_pixels",
                         "data": {**eval_data, "dataset": "image_folder", "path": "imgs"}})
    assert ev["status"] == "queued"


def test_extra_allowed_data_root_is_accepted(settings, tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app

    extra = tmp_path / "extra"
    extra.mkdir()
    with TestClient(create_app(settings.model_copy(update={"allowed_data_roots": str(extra)}))) as c:
        assert submit(c, {**PRETRAIN, "data": _folder(extra)})["status"] == "queued"
        assert c.post("/v1/jobs", json={"spec": {**PRETRAIN, "data": _folder(tmp_path)}}).status_code == 422
