"""max_runtime (a job past its run time checkpoints and fails saying why, counted over attempts)
and retention (old finished jobs lose their metrics and files; active and recent ones keep them;
orphaned folders go), on the real trainer and real databases."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from worker_testlib import add_job, job, metric_steps, runs
from tests.support.specs import tiny_pretrain

from api.db.artifacts import register_artifact
from api.db.clock import utcnow
from api.db.jobs import transition
from api.db.leases import time_used
from api.db.metrics import write_metrics
from api.db.models import Artifact, Job, JobRun, Metric
from api.db.retention import prune
from tests.worker.conftest import make_store
from worker.limits import runtime_limit
from worker.runner import FAILED, SUCCEEDED, run_job


def test_max_runtime_exceeded_checkpoints_and_fails_with_the_reason(sqlite_url, tmp_path):
    st = make_store(sqlite_url, tmp_path, test_step_delay=0.1)
    try:
        jid = add_job(st.sessions, tiny_pretrain(epochs=20, max_runtime_s=1))
        assert run_job(jid, worker_id="w", settings=st.settings, session_factory=st.sessions) == FAILED
        j = job(st.sessions, jid)
        assert j.status == "failed" and j.error == "max_runtime 1 s exceeded"
        assert (st.settings.job_dir(jid) / "checkpoints" / "last.safetensors").is_file()  # stopped cooperatively
        steps = metric_steps(st.sessions, jid)
        assert max(steps, default=0) < 20 * 4  # stopped long before the end (setup counts too)
        assert [(r.attempt, r.outcome) for r in runs(st.sessions, jid)] == [(1, "failed")]
    finally:
        st.engine.dispose()


def test_the_deployment_ceiling_applies_without_a_spec_value(sqlite_url, tmp_path):
    st = make_store(sqlite_url, tmp_path, test_step_delay=0.1, max_runtime_s=1)
    try:
        jid = add_job(st.sessions, tiny_pretrain(epochs=20))
        assert run_job(jid, worker_id="w", settings=st.settings, session_factory=st.sessions) == FAILED
        assert job(st.sessions, jid).error == "max_runtime 1 s exceeded"
        # a job well inside its limit is not touched
        ok = add_job(st.sessions, tiny_pretrain(epochs=1, max_runtime_s=3600))
        fast = st.settings.model_copy(update={"test_step_delay": 0.0, "max_runtime_s": None})
        assert run_job(ok, worker_id="w", settings=fast, session_factory=st.sessions) == SUCCEEDED
    finally:
        st.engine.dispose()


def test_runtime_limit_is_the_smaller_and_earlier_attempts_count(store):
    s = store.settings
    assert runtime_limit({"max_runtime_s": 50}, s.model_copy(update={"max_runtime_s": 40})) == 40
    assert runtime_limit({"max_runtime_s": 30}, s.model_copy(update={"max_runtime_s": 40})) == 30
    assert runtime_limit({}, s) is None
    jid = add_job(store.sessions)
    t0 = utcnow()
    with store.sessions() as ses, ses.begin():
        ses.add(JobRun(job_id=jid, attempt=1, worker="a", started_at=t0, ended_at=t0 + timedelta(seconds=70)))
        ses.add(JobRun(job_id=jid, attempt=2, worker="b", started_at=t0, ended_at=t0 + timedelta(seconds=5)))
        ses.add(JobRun(job_id=jid, attempt=3, worker="c", started_at=t0))
    with store.sessions() as ses:
        assert time_used(ses, jid, 3) == 75 and time_used(ses, jid, 2) == 70


def _finished_with_data(store, finished_ago_days: float | None, status: str = "succeeded") -> int:
    """A job with metrics, an artifact row and a file, finished that many days ago (None: active)."""
    jid = add_job(store.sessions)
    folder = store.settings.job_dir(jid)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text("{}")
    with store.sessions() as s, s.begin():
        write_metrics(s, jid, [{"name": "train/loss", "step": i, "value": 1.0, "epoch": 0} for i in range(1, 6)])
        register_artifact(s, jid, "result.json", "result", 2)
        if finished_ago_days is not None:
            assert transition(s, jid, "queued", "cancelled" if status == "cancelled" else "running")
            if status != "cancelled":
                assert transition(s, jid, "running", status)
            s.execute(update(Job).where(Job.id == jid).values(finished_at=utcnow() - timedelta(days=finished_ago_days)))
    return jid


def _counts(store, jid: int) -> tuple[int, int, bool]:
    with store.sessions() as s:
        m = s.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == jid))
        a = s.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id == jid))
    return m, a, store.settings.job_dir(jid).exists()


def test_retention_prunes_only_old_finished_jobs(store):
    old = _finished_with_data(store, 40)
    old_failed = _finished_with_data(store, 31, status="failed")
    old_cancelled = _finished_with_data(store, 90, status="cancelled")
    recent = _finished_with_data(store, 5)
    active = _finished_with_data(store, None)  # queued, created long ago does not matter
    with store.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == active).values(created_at=utcnow() - timedelta(days=400)))
    # A folder no row names (another database's job, a reset database) is never the sweep's to remove.
    stranger = store.settings.job_dir(99_999)
    stranger.mkdir(parents=True)
    (stranger / "last.pt").write_bytes(b"x")

    report = prune(store.sessions, store.settings.artifact_root, 30)
    assert sorted(report["jobs_pruned"]) == sorted([old, old_failed, old_cancelled])
    assert report["metrics_deleted"] == 15 and report["artifacts_deleted"] == 3
    for jid in (old, old_failed, old_cancelled):
        assert _counts(store, jid) == (0, 0, False)
        assert job(store.sessions, jid) is not None  # the record that it ran stays
    assert _counts(store, recent) == (5, 1, True) and _counts(store, active) == (5, 1, True)
    assert stranger.exists()
    # idempotent: nothing left to do
    again = prune(store.sessions, store.settings.artifact_root, 30)
    assert again["jobs_pruned"] == [] and again["folders_removed"] == []
    # no retention period: nothing of a live job goes
    assert prune(store.sessions, store.settings.artifact_root, None)["jobs_pruned"] == []
    assert _counts(store, recent) == (5, 1, True)


def test_a_folder_that_cannot_go_keeps_its_rows_for_the_next_sweep(store, monkeypatch):
    import api.db.retention as retention

    old = _finished_with_data(store, 40)
    monkeypatch.setattr(retention.os, "rename", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert prune(store.sessions, store.settings.artifact_root, 30)["jobs_pruned"] == []
    assert _counts(store, old) == (5, 1, True)
    monkeypatch.undo()
    assert prune(store.sessions, store.settings.artifact_root, 30)["jobs_pruned"] == [old]
    assert _counts(store, old) == (0, 0, False)
