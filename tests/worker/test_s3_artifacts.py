"""Jobs with the S3 artifact store, run in-process against a real S3-compatible server (moto_server,
a child process): outputs land as objects, an evaluation on another host's scratch folder fetches
its source backbone, and a store that goes away mid-run sends the job back to the queue with its
checkpoint kept on the worker's disk -- then the job finishes from it once the store is back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from worker_testlib import add_job, job, metric_steps, runs

from api.db.models import Artifact
from tests.support.objstore import MotoS3
from tests.support.specs import tiny_pretrain
from worker.runner import RELEASED, SUCCEEDED, run_job

STEPS_PER_EPOCH = 4


def s3_settings(st, bucket: str, scratch: Path, **over):
    return st.settings.model_copy(update={"artifact_url": f"s3://{bucket}/arts", "artifact_root": scratch, **over})


def objects(server: MotoS3, bucket: str, job_id: int) -> dict[str, int]:
    page = server.client().list_objects_v2(Bucket=bucket, Prefix=f"arts/jobs/{job_id}/")
    return {o["Key"].split(f"jobs/{job_id}/", 1)[1]: o["Size"] for o in page.get("Contents", [])}


def test_a_job_stores_its_checkpoint_and_backbone_as_objects(sqlite_store, s3_server, s3_bucket, tmp_path):
    st = sqlite_store
    jid = add_job(st.sessions, tiny_pretrain(epochs=2))
    host1 = s3_settings(st, s3_bucket, tmp_path / "host1")
    assert run_job(jid, worker_id="w1", settings=host1, session_factory=st.sessions) == SUCCEEDED
    stored = objects(s3_server, s3_bucket, jid)
    with st.sessions() as s:
        registered = {a.name: a.size for a in s.scalars(select(Artifact).where(Artifact.job_id == jid))}
    assert {"backbone.safetensors", "checkpoints/last.safetensors"} <= set(stored)
    for name, size in registered.items():  # every registered file is an object of the same size
        assert stored[name] == size, name
    # an evaluation on another host, with an empty scratch folder, reads the backbone from the store
    ev = add_job(st.sessions, {"kind": "evaluate", "source_job_id": jid, "protocol": {"protocol": "knn", "k": 5},
                              "data": {"dataset": "synthetic", "train_subset": 32, "test_subset": 16,
                                       "image_size": 16}, "device": "cpu", "precision": "fp32"})
    host2 = s3_settings(st, s3_bucket, tmp_path / "host2")
    assert run_job(ev, worker_id="w2", settings=host2, session_factory=st.sessions) == SUCCEEDED
    assert (tmp_path / "host2" / "jobs" / str(jid) / "backbone.safetensors").is_file()
    assert job(st.sessions, ev).top1 is not None


def test_an_unreachable_store_sends_the_job_back_with_its_checkpoint_kept(sqlite_store, tmp_path, monkeypatch):
    st = sqlite_store
    server = MotoS3(tmp_path).start()
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        bucket = server.create_bucket("outage")
        settings = s3_settings(st, bucket, tmp_path / "host", store_retries=1, test_step_delay=0.05)
        jid = add_job(st.sessions, tiny_pretrain(epochs=6))

        def stop_after_first_checkpoint() -> None:  # the store goes away mid-run
            deadline = time.monotonic() + 60
            while "checkpoints/last.safetensors" not in objects(server, bucket, jid) and time.monotonic() < deadline:
                time.sleep(0.02)
            server.stop()

        killer = threading.Thread(target=stop_after_first_checkpoint)
        killer.start()
        out = run_job(jid, worker_id="w1", settings=settings, session_factory=st.sessions)
        killer.join()
        assert out == RELEASED
        j = job(st.sessions, jid)
        assert j.status == "queued" and j.dispatched_at is not None  # re-sent later, by the reconciler
        assert [r.outcome for r in runs(st.sessions, jid)] == ["released"]
        local = tmp_path / "host" / "jobs" / str(jid) / "checkpoints" / "last.safetensors"
        assert local.is_file()  # the stop checkpoint, kept on this worker's disk
        steps_before = metric_steps(st.sessions, jid)
        assert STEPS_PER_EPOCH <= len(steps_before) < 6 * STEPS_PER_EPOCH

        # the store is back (empty: moto keeps objects in memory): the job resumes from the local checkpoint
        server.start()
        server.create_bucket(bucket)
        assert run_job(jid, worker_id="w1", settings=settings, session_factory=st.sessions) == SUCCEEDED
        assert metric_steps(st.sessions, jid) == list(range(1, 6 * STEPS_PER_EPOCH + 1))
        assert job(st.sessions, jid).result["step"] == 6 * STEPS_PER_EPOCH
        assert {"backbone.safetensors", "checkpoints/last.safetensors"} <= set(objects(server, bucket, jid))
    finally:
        server.stop()


def test_a_store_down_before_the_run_sends_the_job_back_without_starting(sqlite_store, tmp_path, monkeypatch):
    from tests.support.net import free_port

    st = sqlite_store
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = s3_settings(st, "nowhere", tmp_path / "host", store_retries=1,
                           s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    jid = add_job(st.sessions, tiny_pretrain(epochs=1))
    assert run_job(jid, worker_id="w", settings=settings, session_factory=st.sessions) == RELEASED
    assert job(st.sessions, jid).status == "queued" and metric_steps(st.sessions, jid) == []


@pytest.fixture(autouse=True)
def _fresh_store_clients():
    from ssl_core.storage import open_store

    open_store.cache_clear()  # a client per test: each test has its own server and credentials
    yield
    open_store.cache_clear()


def test_db_upgrade_creates_the_artifact_bucket(s3_server, s3_bucket, tmp_path, monkeypatch):
    """The deployment's migrate step (`pretextlab db upgrade`) creates the S3 artifact bucket."""
    from api.settings import get_settings
    from worker.cli import main

    monkeypatch.setenv("PRETEXTLAB_ARTIFACT_URL", "s3://made-by-migrate/artifacts")
    monkeypatch.setenv("PRETEXTLAB_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    get_settings.cache_clear()
    try:
        assert main(["db", "upgrade"]) == 0
        assert main(["db", "upgrade"]) == 0  # idempotent
    finally:
        get_settings.cache_clear()
    s3_server.client().head_bucket(Bucket="made-by-migrate")


def test_retention_and_deletion_remove_the_objects_too(sqlite_store, s3_server, s3_bucket, tmp_path):
    from datetime import timedelta

    from api.db.clock import utcnow
    from api.db.retention import delete_job, prune

    st = sqlite_store
    host = s3_settings(st, s3_bucket, tmp_path / "host")
    kept, deleted, expired = (add_job(st.sessions, tiny_pretrain(epochs=1)) for _ in range(3))
    for jid in (kept, deleted, expired):
        assert run_job(jid, worker_id="w", settings=host, session_factory=st.sessions) == SUCCEEDED
        assert objects(s3_server, s3_bucket, jid)
    with st.sessions() as s, s.begin():
        delete_job(s, deleted)
    report = prune(st.sessions, host.artifact_root, None, store=host.artifact_store())
    assert report["folders_removed"] == [deleted] and objects(s3_server, s3_bucket, deleted) == {}
    # a retention period that only the oldest job has outlived (finished_at moved back)
    from sqlalchemy import update

    from api.db.models import Job
    with st.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == expired).values(finished_at=utcnow() - timedelta(days=10)))
    report = prune(st.sessions, host.artifact_root, 5, store=host.artifact_store())
    assert report["jobs_pruned"] == [expired] and objects(s3_server, s3_bucket, expired) == {}
    assert objects(s3_server, s3_bucket, kept)  # a job inside the period keeps its objects
