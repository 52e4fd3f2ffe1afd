"""Two Celery worker processes that share nothing but network endpoints: PostgreSQL, a private
redis-server and an S3-compatible server (moto_server), each worker with its own scratch folder.
A worker is killed with -9 mid-job; the other resumes the job from the checkpoint *object* (its own
disk never held it), and the API serves the result by a redirect to a presigned URL."""

from __future__ import annotations

import sys

import httpx
import pytest
from sqlalchemy import select
from worker_testlib import metric_steps, runs

from api.db.models import Artifact, Metric
from tests.support.net import wait_for
from tests.support.processes import Proc
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(300)]
STEPS_PER_EPOCH = 4


def stored(s3_server, bucket: str, job_id: int) -> set[str]:
    page = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"arts/jobs/{job_id}/")
    return {o["Key"].split(f"jobs/{job_id}/", 1)[1] for o in page.get("Contents", [])}


def test_kill9_resumes_from_the_object_checkpoint_on_another_host(make_cluster, postgres_url, redis_server,
                                                                   s3_server, s3_bucket, tmp_path):
    c = make_cluster(postgres_url, redis_server.url, test_step_delay="0.1", artifact_url=f"s3://{s3_bucket}/arts",
                     s3_public_endpoint_url=s3_server.endpoint)
    workers = {}
    for name in ("h1", "h2"):  # a scratch folder per "host": nothing shared on disk
        env = {**c.env, "PRETEXTLAB_ARTIFACT_ROOT": str(tmp_path / f"scratch-{name}")}
        p = Proc(name, [sys.executable, "-m", "worker.cli", "worker", "--hostname", f"{name}@%h"], env, tmp_path)
        c.procs.append(p)
        workers[name] = p
    c.serve()
    for p in workers.values():
        c.wait_ready(p)
    jid = c.submit(tiny_pretrain(epochs=6))

    def checkpoint_registered() -> bool:
        with c.sessions() as s:
            return s.scalar(select(Artifact.id).where(Artifact.job_id == jid, Artifact.kind == "checkpoint")) is not None

    wait_for(checkpoint_registered, 90, "a first checkpoint", on_timeout=c.logs)
    assert "checkpoints/last.safetensors" in stored(s3_server, s3_bucket, jid)  # registered = stored first
    victim = runs(c.sessions, jid)[0].worker.split("@")[0]
    survivor = "h2" if victim == "h1" else "h1"
    with c.sessions() as s:
        before = dict(s.execute(select(Metric.step, Metric.created_at)
                                .where(Metric.job_id == jid, Metric.name == "train/loss")).all())
    workers[victim].kill9()
    done = c.wait_status(jid, "succeeded", timeout=150)
    assert done["attempt"] == 2
    assert [r.outcome for r in runs(c.sessions, jid)] == ["lost", "succeeded"]
    assert f"job {jid}: fetched its checkpoint from s3://{s3_bucket}/arts/" in workers[survivor].log()
    assert metric_steps(c.sessions, jid) == list(range(1, 6 * STEPS_PER_EPOCH + 1))
    with c.sessions() as s:
        after = dict(s.execute(select(Metric.step, Metric.created_at)
                               .where(Metric.job_id == jid, Metric.name == "train/loss")).all())
    assert all(after[st] == before[st] for st in range(1, STEPS_PER_EPOCH + 1))  # not recomputed
    assert {"backbone.safetensors", "checkpoints/last.safetensors"} <= stored(s3_server, s3_bucket, jid)
    with c.client() as http:
        r = http.get(f"/v1/jobs/{jid}/artifacts/backbone.safetensors")
        assert r.status_code == 307 and r.headers["location"].startswith(s3_server.endpoint)
        body = httpx.get(r.headers["location"]).content
    local = tmp_path / f"scratch-{survivor}" / "jobs" / str(jid) / "backbone.safetensors"
    assert body == local.read_bytes()
