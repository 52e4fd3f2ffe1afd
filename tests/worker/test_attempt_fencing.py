"""Each attempt reports its own progress, a cancel during the last step ends ``cancelled``, and a new
job never resumes from an old job's checkpoint (a reused id after a database reset)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from worker_testlib import add_job, events, job, job_dir, metric_steps, runs
from tests.support.specs import tiny_pretrain

from api.db.clock import utcnow
from api.db.jobs import transition
from api.db.leases import claim
from api.db.models import Job
from worker import runner
from worker.reconciler import reconcile_once
from worker.runner import CANCELLED, CANCELLED_AFTER_COMPLETION, SUCCEEDED, Outcome, run_job
from worker.sink import SqlSink


def test_a_reclaim_clears_the_dead_attempts_progress(sqlite_store):
    st = sqlite_store
    jid = add_job(st.sessions)
    first = claim(st.sessions, jid, "w1", 30)
    sink = SqlSink(first, st.settings.job_dir(jid), flush_seconds=60, heartbeat_seconds=60)
    sink.progress(epoch=2, step=354, total_steps=384, images_per_sec=10.0, eta_s=1.0)  # no thread: written now
    assert job(st.sessions, jid).progress["step"] == 354
    with st.sessions() as s, s.begin():  # the worker died: its lease runs out
        s.execute(update(Job).where(Job.id == jid).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert reconcile_once(st.sessions, st.settings)["requeued"] == [jid]
    second = claim(st.sessions, jid, "w2", 30)
    assert job(st.sessions, jid).progress is None  # not 354 of 384 from the dead attempt
    SqlSink(second, st.settings.job_dir(jid), flush_seconds=60, heartbeat_seconds=60).progress(
        epoch=1, step=289, total_steps=384, images_per_sec=10.0, eta_s=1.0)
    p = job(st.sessions, jid).progress
    assert (p["step"], p["attempt"]) == (289, 2)
    # and the dead attempt can no longer write its step over it
    sink.progress(epoch=2, step=355, total_steps=384, images_per_sec=10.0, eta_s=1.0)
    assert job(st.sessions, jid).progress["step"] == 289


def test_a_cancel_during_the_last_step_ends_cancelled_keeping_outputs(sqlite_store, monkeypatch):
    st = sqlite_store
    jid = add_job(st.sessions, tiny_pretrain(epochs=1, eval={"after": [{"protocol": "knn"}]}))

    def last_step_then_cancel(sessions, job_id, spec, folder, sink, *_rest):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "backbone.safetensors").write_bytes(b"w")
        with sessions() as s, s.begin():  # what POST /cancel does while the last step runs
            assert transition(s, job_id, ["running"], "cancelling", actor="api", cancel_requested=True)
        return Outcome(True, {"step": 4, "backbone": "backbone.safetensors"})

    monkeypatch.setattr(runner, "_execute", last_step_then_cancel)
    assert run_job(jid, worker_id="w", settings=st.settings, session_factory=st.sessions) == CANCELLED
    j = job(st.sessions, jid)
    assert j.status == "cancelled" and j.result == {"step": 4, "backbone": "backbone.safetensors"}
    assert events(st.sessions, jid)[-1] == ("cancelling", "cancelled", "w")
    with st.sessions() as s:
        from api.db.jobs import job_events, dependents_waiting
        assert job_events(s, jid)[-1].reason == CANCELLED_AFTER_COMPLETION
        assert dependents_waiting(s, jid) == []  # no follow-up evaluation for a cancelled job
    assert runs(st.sessions, jid)[-1].outcome == "cancelled"


def test_an_old_job_folder_with_the_same_id_is_not_resumed(sqlite_store):
    """A database reset with the artifact storage kept: job 1 of the new database finds the old job 1's
    checkpoint in jobs/1/, but it records another run key, so it is set aside and never resumed."""
    from ssl_core.specs import parse_job_spec
    from ssl_core.train import pretrain

    st = sqlite_store
    folder = st.settings.job_dir(1)
    pretrain(parse_job_spec(tiny_pretrain(epochs=1)), folder, run_key="the-old-database's-job-1")
    jid = add_job(st.sessions, tiny_pretrain(epochs=2))
    assert jid == 1 and job_dir(st.sessions, st.settings, jid) == folder
    assert run_job(jid, worker_id="w", settings=st.settings, session_factory=st.sessions) == SUCCEEDED
    assert metric_steps(st.sessions, jid)[0] == 1  # started fresh, not at the old run's step
    assert list((folder / "checkpoints").glob("last.untrusted-*.safetensors"))  # the old one, set aside
    assert (folder / "checkpoints" / "last.safetensors").is_file()
