"""The embedded default: `pretextlab serve` on SQLite (API + local worker + reconciler in one
process), driven over HTTP: a job to succeeded, cancelling a running job, SIGTERM hand-back."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from worker_testlib import job, metric_steps, runs

from api.db.models import Artifact
from tests.support.net import wait_for
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
STEPS_PER_EPOCH = 4


def checkpoint_registered(cluster, job_id) -> bool:
    with cluster.sessions() as s:
        return s.scalar(select(Artifact.id).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint")) is not None


def test_embedded_serve_runs_cancels_and_hands_back(make_cluster, sqlite_url):
    c = make_cluster(sqlite_url, None, test_step_delay="0.05")
    serve = c.serve()
    # a job end to end over HTTP, no broker anywhere
    jid = c.submit(tiny_pretrain(epochs=1), name="embedded")
    done = c.wait_status(jid, "succeeded")
    assert done["result"]["step"] == STEPS_PER_EPOCH
    with c.client() as http:
        assert http.get(f"/v1/jobs/{jid}/artifacts/backbone.safetensors").status_code == 200
    assert metric_steps(c.sessions, jid) == list(range(1, STEPS_PER_EPOCH + 1))

    # cancel a running job: cancelling -> cancelled, with a checkpoint
    long = c.submit(tiny_pretrain(epochs=200))
    wait_for(lambda: checkpoint_registered(c, long), 90, "a checkpoint", on_timeout=c.logs)
    with c.client() as http:
        r = http.post(f"/v1/jobs/{long}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "cancelling", r.text
    c.wait_status(long, "cancelled", timeout=60)
    assert runs(c.sessions, long)[-1].outcome == "cancelled"
    assert (c.tmp / "artifacts" / "jobs" / str(long) / "checkpoints" / "last.safetensors").is_file()

    # SIGTERM the server mid-job: the job is handed back, the process exits, a restart finishes it
    jid3 = c.submit(tiny_pretrain(epochs=6))
    wait_for(lambda: checkpoint_registered(c, jid3), 90, "a checkpoint", on_timeout=c.logs)
    t0 = time.monotonic()
    serve.signal(signal.SIGTERM)
    serve.popen.wait(60)
    assert time.monotonic() - t0 < 30
    assert serve.popen.returncode == 0, serve.log()[-2000:]
    with c.sessions() as s:
        from api.db.models import Job

        assert s.get(Job, jid3).status == "queued"
    c.serve("serve2")
    c.wait_status(jid3, "succeeded")
    assert [r.outcome for r in runs(c.sessions, jid3)] == ["released", "succeeded"]
    assert metric_steps(c.sessions, jid3) == list(range(1, 6 * STEPS_PER_EPOCH + 1))
