"""Workers that own several devices, end to end over HTTP (CPU slots stand in for GPUs here):
a 2-slot Celery worker running two jobs side by side and telling a too-large job why it waits; a
2-GPU job on a 2-slot embedded worker; kill -9 of a worker during a 2-process job (no rank
survives it, the job resumes on another worker exactly once).

The last two run through the multi-process launcher (``ssl_core.launch``)."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select
from worker_testlib import metric_steps, runs

from api.db.models import Artifact
from tests.support.net import wait_for
from tests.support.processes import descendants, pid_alive
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
STEPS_PER_EPOCH = 4
SLOTS_2 = ("--slots", "2")


def checkpoint_registered(cluster, job_id) -> bool:
    with cluster.sessions() as s:
        return s.scalar(select(Artifact.id).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint")) is not None


def fleet(c) -> list[dict]:
    with c.client() as http:
        return http.get("/v1/workers").json()["items"]


@pytest.mark.redis
@pytest.mark.postgres
def test_two_slot_celery_worker_runs_two_jobs_at_once_and_a_three_slot_job_waits(make_cluster, postgres_url,
                                                                                  redis_server):
    c = make_cluster(postgres_url, redis_server.url, test_step_delay="0.1")
    c.serve()
    w1 = c.worker("w1", extra=SLOTS_2)
    (w,) = fleet(c)
    assert (w["device_kind"], w["gpus"], w["free_gpus"], w["alive"]) == ("cpu", [0, 1], [0, 1], True)
    assert w["name"].startswith("w1@") and w["queues"] == ["gpu", "cpu"]
    a, b = c.submit(tiny_pretrain(epochs=3)), c.submit(tiny_pretrain(epochs=3))
    wait_for(lambda: c.get(a)["status"] == c.get(b)["status"] == "running", 60, "both running", on_timeout=c.logs)
    assert sorted([c.get(a)["devices"], c.get(b)["devices"]]) == [[0], [1]]
    (w,) = fleet(c)
    assert w["free_gpus"] == [] and sorted(j["id"] for j in w["jobs"]) == sorted([a, b])
    big = c.submit(tiny_pretrain(epochs=1, resources={"gpus": 3}, batch_size=9))
    wait_for(lambda: c.get(big)["waiting_reason"], 30, "a waiting reason", on_timeout=c.logs)
    assert c.get(big)["waiting_reason"] == "waiting: needs 3 GPUs, largest worker has 2"
    c.wait_status(a, "succeeded")
    c.wait_status(b, "succeeded")
    assert c.get(big)["status"] == "queued" and runs(c.sessions, big) == []
    w1.stop()
    assert fleet(c) == []  # a warm shutdown deregisters


def test_two_gpu_job_over_http_on_a_two_slot_embedded_worker(make_cluster, sqlite_url):
    c = make_cluster(sqlite_url, None, local_workers=2)
    c.serve()
    jid = c.submit(tiny_pretrain(epochs=1, resources={"gpus": 2}), name="two ranks")
    done = c.wait_status(jid, "succeeded", timeout=240)
    assert (done["gpus"], done["devices"], done["attempt"]) == (2, [0, 1], 1)
    assert done["result"]["step"] == STEPS_PER_EPOCH
    assert metric_steps(c.sessions, jid) == list(range(1, STEPS_PER_EPOCH + 1))  # rank 0 alone reported
    with c.client() as http:
        assert http.get(f"/v1/jobs/{jid}/artifacts/backbone.safetensors").status_code == 200


@pytest.mark.redis
@pytest.mark.postgres
def test_kill9_during_a_two_process_job_leaves_no_rank_and_resumes_once(make_cluster, postgres_url, redis_server):
    c = make_cluster(postgres_url, redis_server.url, test_step_delay="0.2")
    c.serve()
    w1 = c.worker("w1", extra=SLOTS_2)
    # The ranks run at full speed (the step delay slows only the worker's own sink), so the job is made
    # long enough for the kill to land while they run: 512 images, 64 steps an epoch, 30 epochs.
    steps_per_epoch, epochs = 512 // 8, 30
    jid = c.submit(tiny_pretrain(epochs=epochs, resources={"gpus": 2},
                                 data={"dataset": "synthetic", "subset": 512, "image_size": 16}))
    wait_for(lambda: checkpoint_registered(c, jid), 120, "a first checkpoint", on_timeout=c.logs)
    ranks = descendants(w1.pid)
    assert len(ranks) >= 2, f"expected rank processes under the worker, found {ranks}"
    w1.kill9()
    wait_for(lambda: not any(pid_alive(p) for p in ranks), 30, "every rank to die with its worker",
             on_timeout=lambda: f"still alive: {[p for p in ranks if pid_alive(p)]}")
    w2 = c.worker("w2", extra=SLOTS_2)
    done = c.wait_status(jid, "succeeded", timeout=240)
    assert done["worker"].startswith("w2@") and done["devices"] == [0, 1]
    job_runs = runs(c.sessions, jid)
    assert [r.outcome for r in job_runs] == ["lost", "succeeded"]
    assert job_runs[1].started_at >= job_runs[0].ended_at  # never two live copies
    assert done["result"]["step"] == epochs * steps_per_epoch
    steps = metric_steps(c.sessions, jid)
    # never a step twice; a kill can lose the metric points rank 0 relayed after the worker's last
    # flush when its checkpoint was already written (a known gap of the relay, docs/reliability.md)
    assert steps == sorted(set(steps)) and set(steps) <= set(range(1, epochs * steps_per_epoch + 1))
    assert os.getpid() not in ranks and w2.alive()
