"""Real Celery worker processes on a private redis-server, PostgreSQL, and the API process
(`pretextlab serve` with a broker: API + reconciler). Jobs are submitted and polled over HTTP.

Faults: SIGTERM (hand back), kill -9 (lease expiry -> requeue -> resume from the checkpoint),
a Redis restart that empties the broker, a visibility timeout shorter than the job.
"""

from __future__ import annotations

import signal
import time

import pytest
from sqlalchemy import select
from worker_testlib import metric_steps, runs

from api.db.models import Artifact, JobEvent, Metric
from tests.support.net import wait_for
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(300)]
STEPS_PER_EPOCH = 4


def checkpoint_registered(cluster, job_id) -> bool:
    with cluster.sessions() as s:
        return s.scalar(select(Artifact.id).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint")) is not None


def no_overlap(job_runs) -> bool:
    """No two runs of one job were alive at once (each started after the previous one ended)."""
    for a, b in zip(job_runs, job_runs[1:]):
        if a.ended_at is None or b.started_at < a.ended_at:
            return False
    return True


def test_job_over_http_then_sigterm_hands_back_to_another_worker(make_cluster, postgres_url, redis_server):
    c = make_cluster(postgres_url, redis_server.url, test_step_delay="0.1")
    (w1,) = c.start("w1")
    # 1. a tiny job end to end over HTTP
    jid = c.submit(tiny_pretrain(epochs=1), name="tiny")
    done = c.wait_status(jid, "succeeded")
    assert done["result"]["step"] == STEPS_PER_EPOCH
    with c.client() as http:
        m = http.get(f"/v1/jobs/{jid}/metrics", params={"name": "train/loss"}).json()
        assert m, m
        arts = http.get(f"/v1/jobs/{jid}/artifacts").json()
        names = {a["name"] for a in (arts["items"] if isinstance(arts, dict) else arts)}
        assert {"backbone.safetensors", "checkpoints/last.safetensors"} <= names
        r = http.get(f"/v1/jobs/{jid}/artifacts/backbone.safetensors")
        assert r.status_code == 200 and len(r.content) > 100
    assert metric_steps(c.sessions, jid) == list(range(1, STEPS_PER_EPOCH + 1))

    # 2. SIGTERM the worker mid-job: checkpoint, hand back, exit promptly
    jid2 = c.submit(tiny_pretrain(epochs=5))
    wait_for(lambda: checkpoint_registered(c, jid2), 90, "a first checkpoint", on_timeout=c.logs)
    t0 = time.monotonic()
    w1.signal(signal.SIGTERM)
    w1.popen.wait(60)
    assert time.monotonic() - t0 < 30, "warm shutdown waited too long"
    with c.sessions() as s:
        evs = [(e.from_status, e.to_status) for e in s.scalars(select(JobEvent).where(JobEvent.job_id == jid2))]
    assert ("running", "queued") in evs
    assert c.get(jid2)["status"] == "queued"
    # 3. another worker resumes it (handed back = re-dispatched at once; no lease wait)
    c.worker("w2")
    c.wait_status(jid2, "succeeded")
    rs = runs(c.sessions, jid2)
    assert [r.outcome for r in rs] == ["released", "succeeded"]
    assert rs[0].worker.startswith("w1@") and rs[1].worker.startswith("w2@")
    assert metric_steps(c.sessions, jid2) == list(range(1, 5 * STEPS_PER_EPOCH + 1))


def test_kill9_mid_job_requeues_and_resumes_from_checkpoint(make_cluster, postgres_url, redis_server):
    c = make_cluster(postgres_url, redis_server.url, test_step_delay="0.1")
    workers = dict(zip(("k1", "k2"), c.start("k1", "k2")))
    jid = c.submit(tiny_pretrain(epochs=6))
    wait_for(lambda: checkpoint_registered(c, jid), 90, "a first checkpoint", on_timeout=c.logs)
    owner = c.get(jid)
    victim = runs(c.sessions, jid)[0].worker.split("@")[0]
    with c.sessions() as s:  # what the first run wrote before it died
        before = dict(s.execute(select(Metric.step, Metric.created_at)
                                .where(Metric.job_id == jid, Metric.name == "train/loss")).all())
    workers[victim].kill9()
    done = c.wait_status(jid, "succeeded", timeout=150)
    assert done["attempt"] == 2, owner
    rs = runs(c.sessions, jid)
    assert [r.outcome for r in rs] == ["lost", "succeeded"]
    assert not rs[1].worker.startswith(victim + "@")
    assert no_overlap(rs)
    total = 6 * STEPS_PER_EPOCH
    assert metric_steps(c.sessions, jid) == list(range(1, total + 1))  # continuous, each step once
    with c.sessions() as s:
        after = dict(s.execute(select(Metric.step, Metric.created_at)
                               .where(Metric.job_id == jid, Metric.name == "train/loss")).all())
    # resumed from the checkpoint: the first epoch's points were not recomputed by the second run
    assert all(after[st] == before[st] for st in range(1, STEPS_PER_EPOCH + 1))
    with c.sessions() as s:
        evs = [(e.from_status, e.to_status, e.actor) for e in s.scalars(
            select(JobEvent).where(JobEvent.job_id == jid).order_by(JobEvent.id))]
    assert ("running", "queued", "reconciler") in evs


def test_broker_emptied_while_jobs_queued_and_running(make_cluster, postgres_url, redis_server):
    c = make_cluster(postgres_url, redis_server.url, test_step_delay="0.05")
    c.start("f1", "f2")
    jobs = [c.submit(tiny_pretrain(epochs=3)) for _ in range(4)]
    wait_for(lambda: sum(c.get(j)["status"] == "running" for j in jobs) >= 1, 90, "a running job", on_timeout=c.logs)
    redis_server.restart_empty()  # queued messages, unacked messages: all gone
    for j in jobs:
        c.wait_status(j, "succeeded", timeout=200)
    for j in jobs:
        rs = runs(c.sessions, j)
        assert rs[-1].outcome == "succeeded" and no_overlap(rs), [(r.worker, r.outcome) for r in rs]
        assert metric_steps(c.sessions, j) == list(range(1, 3 * STEPS_PER_EPOCH + 1))


def test_job_longer_than_visibility_timeout_runs_once(make_cluster, postgres_url, redis_server):
    c = make_cluster(postgres_url, redis_server.url, visibility_timeout="2", test_step_delay="0.15")
    v1, v2 = c.start("v1", "v2")
    jid = c.submit(tiny_pretrain(epochs=10))  # 40 steps x 0.15 s: far past the 2 s timeout
    c.wait_status(jid, "running")

    def redelivered() -> bool:
        # Redis put the unacked message back; the idle worker got it and the claim dropped it
        j = c.get(jid)
        assert j["status"] == "running", j
        assert len(runs(c.sessions, jid)) == 1  # never a second claim alongside the first
        return "not claimable" in v1.log() + v2.log()

    wait_for(redelivered, 60, "the message to be redelivered", interval=0.2, on_timeout=c.logs)
    c.wait_status(jid, "succeeded")
    assert [(r.attempt, r.outcome) for r in runs(c.sessions, jid)] == [(1, "succeeded")]
    assert metric_steps(c.sessions, jid) == list(range(1, 10 * STEPS_PER_EPOCH + 1))
