"""A Celery worker in warm shutdown (SIGTERM) starts no other job: the messages it did not run stay
in the broker, untouched, for the next worker -- real worker processes on a private redis-server.

The idle workers' re-send and the reconciler's re-dispatch are turned off here, so a job can only
run later if its own message (the submission's, or the hand-back's) was left in Redis.
"""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest
import redis
from sqlalchemy import select
from worker_testlib import runs

from api.db.models import Artifact, Job
from tests.support.net import wait_for
from tests.support.specs import tiny_pretrain

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(300)]
BURST = 8  # submissions spread over ~1.2 s after SIGTERM: longer than the consumer loop's poll


def jobs_in_queue(r: redis.Redis, queue: str) -> list[int]:
    """The job ids of the messages in ``queue``'s Redis lists (kombu keeps one list per priority
    band; each entry is the JSON envelope around the base64 Celery body ``[args, kwargs, embed]``)."""
    ids = []
    for key in r.scan_iter(match=f"{queue}*"):
        if r.type(key) == b"list":
            for raw in r.lrange(key, 0, -1):
                args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
                ids.append(int(args[0]))
    return sorted(ids)


def test_a_worker_shutting_down_takes_no_other_message(make_cluster, postgres_url, redis_server):
    """w1 has two slots: one runs a job, the other waits on the broker. SIGTERM, then a burst of
    submissions over the next second or so (the gap before Celery's loop notices the shutdown):
    the running job hands back (its message sent again at once) and w1 takes none of the
    messages; the next worker runs every job from those very messages."""
    # steps of 1 s: the running job hands back up to a second after the signal
    c = make_cluster(postgres_url, redis_server.url, test_step_delay="1.0",
                     idle_redispatch_seconds="0", redispatch_after_seconds="3600")
    w1 = c.worker("w1", wait_ready=False, extra=("--slots", "2"))
    c.serve()
    c.wait_ready(w1)
    r = redis.Redis.from_url(redis_server.url)
    running = c.submit(tiny_pretrain(epochs=3), name="running")
    wait_for(lambda: _checkpointed(c, running), 90, "a first checkpoint", on_timeout=c.logs)

    w1.signal(signal.SIGTERM)
    burst = []
    for _ in range(BURST):
        burst.append(c.submit(tiny_pretrain(epochs=1)))
        time.sleep(0.15)
    w1.popen.wait(60)
    log = w1.log()
    assert "Traceback" not in log and "Reject" not in log, log[-3000:]
    # a message w1's free slot had popped went back at once, not when w1 closed after its job
    handed_back = log.index(f"job {running}: handed back")
    assert all(log.index(line) < handed_back for line in log.splitlines() if "put back" in line or "Requeu" in line)
    assert not [j for j in burst if f"job {j}:" in log], log[-3000:]  # none claimed, none dropped
    assert c.get(running)["status"] == "queued"
    assert all(c.get(j)["status"] == "queued" and runs(c.sessions, j) == [] for j in burst)
    with c.sessions() as s:  # no message was consumed and forgotten
        assert None not in s.scalars(select(Job.dispatched_at).where(Job.id.in_([running, *burst]))).all()
    # every job's message is in the queue (the hand-back's and the burst's), none held unacked
    assert set(jobs_in_queue(r, "gpu")) == {running, *burst}, c.logs()
    assert r.hlen("unacked") == 0

    # the next worker takes them all from those messages (no re-send is enabled)
    w2 = c.worker("w2", extra=("--slots", "2"))
    for j in [running, *burst]:
        c.wait_status(j, "succeeded", timeout=120)
    assert {x.worker.split("@")[0] for j in burst for x in runs(c.sessions, j)} == {"w2"}
    assert [(x.worker.split("@")[0], x.outcome) for x in runs(c.sessions, running)] == [
        ("w1", "released"), ("w2", "succeeded")]
    assert w2.alive()


def _checkpointed(c, job_id: int) -> bool:
    with c.sessions() as s:
        return s.scalar(select(Artifact.id).where(Artifact.job_id == job_id, Artifact.kind == "checkpoint")) is not None
