"""The SqlSink never makes the training loop wait for the database.

A writer stuck inside the database (a slow fsync, a lock) must not hold up metrics, progress,
flush or artifact calls from the loop; close() then writes everything, synchronously.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from worker_testlib import add_job, metric_steps

from api.db.leases import claim
from api.db.metrics import write_metrics
from api.db.models import Artifact
from worker.sink import SqlSink


def test_loop_calls_return_while_the_writer_is_stuck(sqlite_store, tmp_path):
    st = sqlite_store
    jid = add_job(st.sessions)
    lease = claim(st.sessions, jid, "w1", 30)
    assert lease is not None

    entered, release = threading.Event(), threading.Event()

    def slow_write(session, job_id, rows):  # the database hangs in the writer thread
        entered.set()
        assert release.wait(30)
        return write_metrics(session, job_id, rows)

    job_dir = st.settings.job_dir(jid)
    job_dir.mkdir(parents=True)
    ckpt = job_dir / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x" * 10)
    sink = SqlSink(lease, job_dir, flush_seconds=0.05, heartbeat_seconds=10, write_metrics=slow_write).start()
    try:
        sink.metrics(1, {"train/loss": 1.0})
        sink.flush()
        assert entered.wait(10), "the writer thread did not pick the metrics up"
        # the writer is now stuck inside a transaction: nothing the loop calls may wait for it
        t0 = time.perf_counter()
        for step in range(2, 50):
            sink.metrics(step, {"train/loss": 1.0 / step})
            sink.progress(epoch=0, step=step, total_steps=50, images_per_sec=100.0, eta_s=1.0)
            assert not sink.should_stop()
        sink.artifact("last.pt", ckpt, "checkpoint")
        sink.flush()
        assert time.perf_counter() - t0 < 1.0
    finally:
        release.set()
        sink.close()
    assert metric_steps(st.sessions, jid) == list(range(1, 50))
    with st.sessions() as s:
        names = s.execute(select(Artifact.name, Artifact.kind).where(Artifact.job_id == jid)).all()
    assert [tuple(n) for n in names] == [("checkpoints/last.pt", "checkpoint")]


def test_without_a_thread_every_call_writes_at_once(sqlite_store):
    st = sqlite_store
    jid = add_job(st.sessions)
    lease = claim(st.sessions, jid, "w1", 30)
    job_dir = st.settings.job_dir(jid)
    job_dir.mkdir(parents=True)
    (job_dir / "backbone.safetensors").write_bytes(b"w")
    sink = SqlSink(lease, job_dir, flush_seconds=60, heartbeat_seconds=60)  # not started
    sink.metrics(3, {"train/loss": 0.5})
    sink.flush()
    assert metric_steps(st.sessions, jid) == [3]
    sink.artifact("backbone.safetensors", job_dir / "backbone.safetensors", "backbone")
    with st.sessions() as s:
        assert s.execute(select(Artifact.name).where(Artifact.job_id == jid)).scalars().all() == [
            "backbone.safetensors"]
    sink.close()
