"""GET /v1/workers (the fleet, with heartbeats) and a job's GPUs and waiting reason in
GET /v1/jobs/{id}: on SQLite and PostgreSQL, with real heartbeating worker presences."""

from __future__ import annotations

from api.db.workers import register_worker
from api_helpers import PRETRAIN, submit
from tests.support.net import wait_for
from worker.reconciler import reconcile_once
from worker.slots import CPU, CUDA, Slots, WorkerPresence


def test_fleet_lists_workers_their_devices_jobs_and_heartbeats(client, db, settings):
    presence = WorkerPresence(db, "gpu-host-1:42", Slots(CUDA, (0, 1, 2, 3)), ["gpu"], every_s=0.1).start()
    try:
        items = client.get("/v1/workers").json()["items"]
        assert [(w["name"], w["device_kind"], w["gpus"], w["free_gpus"], w["queues"], w["jobs"], w["alive"])
                for w in items] == [("gpu-host-1:42", "cuda", [0, 1, 2, 3], [0, 1, 2, 3], ["gpu"], [], True)]
        first = items[0]["heartbeat_at"]
        wait_for(lambda: client.get("/v1/workers").json()["items"][0]["heartbeat_at"] > first, 10, "a heartbeat")
        # a job claimed on two of its GPUs shows up in the listing and on the job
        job = submit(client, {**PRETRAIN, "resources": {"gpus": 2}})
        assert job["gpus"] == 2 and job["waiting_reason"] is None
        from api.db.leases import claim
        from api.db.workers import fits

        assert claim(db, job["id"], "gpu-host-1:42/t1", 30, fits=fits(4), worker="gpu-host-1:42", devices=[2, 3])
        (w,) = client.get("/v1/workers").json()["items"]
        assert w["free_gpus"] == [0, 1] and w["jobs"] == [{"id": job["id"], "gpus": 2, "devices": [2, 3]}]
        got = client.get(f"/v1/jobs/{job['id']}").json()
        assert (got["worker"], got["devices"]) == ("gpu-host-1:42", [2, 3])
    finally:
        presence.stop()
    assert client.get("/v1/workers").json()["items"] == []  # a clean stop deregisters


def test_a_worker_without_heartbeats_is_listed_dead(client, db, settings, make_settings):
    with db() as s, s.begin():
        register_worker(s, "cpu-box:7", host="cpu-box", device_kind=CPU, gpus=[0, 1], queues=["gpu", "cpu"])
    assert client.get("/v1/workers").json()["items"][0]["alive"] is True
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(make_settings(settings.database_url, lease_seconds=0.2))) as short:
        # soon the registration's heartbeat is older than LEASE_SECONDS: listed, but dead
        wait_for(lambda: short.get("/v1/workers").json()["items"][0]["alive"] is False, 10, "dead")
        assert short.get("/v1/workers").json()["items"][0]["name"] == "cpu-box:7"


def test_a_job_no_worker_can_fit_shows_why_it_waits(client, db, settings):
    with db() as s, s.begin():
        register_worker(s, "box-a", host="a", device_kind=CUDA, gpus=[0, 1, 2, 3], queues=["gpu"])
        register_worker(s, "box-b", host="b", device_kind=CUDA, gpus=[0, 1], queues=["gpu"])
    job = submit(client, {**PRETRAIN, "resources": {"gpus": 8}})
    reconcile_once(db, settings)
    got = client.get(f"/v1/jobs/{job['id']}").json()
    assert (got["status"], got["gpus"]) == ("queued", 8)
    assert got["waiting_reason"] == "waiting: needs 8 GPUs, largest worker has 4"


def test_resources_gpus_is_validated(client):
    r = client.post("/v1/jobs", json={"spec": {**PRETRAIN, "resources": {"gpus": 0}}})
    assert r.status_code == 422 and "resources.gpus" in r.text
