"""Finishing a job that cannot be finished (fail once, never a retry loop), and evaluations that
wait for their source pretraining instead of failing."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from worker_testlib import add_job, job, runs
from tests.support.specs import tiny_pretrain

from api.db.jobs import next_queued
from api.db.leases import claim
from api.db.models import Job
from worker.reconciler import reconcile_once
from worker.runner import FAILED, LOST, SKIPPED, SUCCEEDED, run_job

EVAL_DATA = {"dataset": "synthetic", "train_subset": 32, "test_subset": 16, "image_size": 16}


def evaluate_of(src: int) -> dict:
    return {"kind": "evaluate", "source_job_id": src, "protocol": {"protocol": "knn", "k": 5},
            "data": EVAL_DATA, "device": "cpu", "precision": "fp32"}


def _run(st, jid, **kw):
    return run_job(jid, worker_id=kw.pop("worker_id", "w"), settings=kw.pop("settings", st.settings),
                   session_factory=st.sessions, **kw)


def _failed_once(st, jid, *needles):
    j = job(st.sessions, jid)
    assert j.status == "failed", (j.status, j.error)
    for needle in needles:
        assert needle in j.error, j.error
    assert "Traceback" not in j.error and j.owner is None and j.lease_expires_at is None
    assert [(r.attempt, r.outcome) for r in runs(st.sessions, jid)] == [(1, "failed")]
    reconcile_once(st.sessions, st.settings, dispatch=lambda j, q: True)  # nothing to requeue
    assert _run(st, jid, worker_id="again") == SKIPPED
    assert job(st.sessions, jid).status == "failed" and len(runs(st.sessions, jid)) == 1


# -- a poisoned follow-up key / errors while concluding ----------------------------------------
def test_followup_key_taken_by_another_job_fails_the_pretraining_once(store):
    st = store
    spec = tiny_pretrain(epochs=1, eval={"after": [{"protocol": "knn", "k": 5}], "data": EVAL_DATA})
    jid = add_job(st.sessions, spec)
    # a job (e.g. submitted before the API reserved the namespace) already holds the runner's key
    squatter = add_job(st.sessions, tiny_pretrain(epochs=1), idempotency_key=f"pretextlab:eval-after:{jid}:0")
    assert _run(st, jid) == FAILED
    _failed_once(st, jid, "could not be finished", "IntegrityError")
    with st.sessions() as s:  # the success transaction rolled back whole: no follow-up, no result
        assert s.scalar(select(func.count()).select_from(Job).where(Job.parent_job_id == jid)) == 0
        assert s.get(Job, jid).result is None
    assert job(st.sessions, squatter).status == "queued"


def test_oserror_registering_outputs_fails_once(sqlite_store, monkeypatch):
    import worker.runner as runner

    def broken(lease, job_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "_register_outputs", broken)
    jid = add_job(sqlite_store.sessions, tiny_pretrain(epochs=1))
    assert _run(sqlite_store, jid) == FAILED
    _failed_once(sqlite_store, jid, "OSError", "No space left on device")


def test_invalid_followup_spec_fails_once_naming_the_field(sqlite_store, monkeypatch):
    import worker.runner as runner

    st = sqlite_store
    monkeypatch.setattr(runner, "eval_followups", lambda job: [
        {"kind": "evaluate", "source_job_id": job.id, "protocol": {"protocol": "knn", "k": 0}, "data": EVAL_DATA}])
    jid = add_job(st.sessions, tiny_pretrain(epochs=1))
    assert _run(st, jid) == FAILED
    _failed_once(st, jid, "invalid spec", "protocol")
    with st.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.parent_job_id == jid)) == 0


def test_connection_error_while_concluding_still_leaves_the_job_to_its_lease(sqlite_store, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import worker.runner as runner

    def down(lease, job_dir):
        raise OperationalError("(simulated)", {}, ConnectionError("database unreachable"))

    monkeypatch.setattr(runner, "_register_outputs", down)
    jid = add_job(sqlite_store.sessions, tiny_pretrain(epochs=1))
    assert _run(sqlite_store, jid) == LOST
    j = job(sqlite_store.sessions, jid)
    assert j.status == "running" and j.error is None  # the reconciler requeues it when the lease expires


# -- evaluations waiting for their source ----------------------------------------------------------------
def test_waiting_evaluation_is_skipped_by_the_poll_and_the_claim(sqlite_store):
    st = sqlite_store

    def poll(queues):  # what the local worker's poll asks the store
        with st.sessions() as s:
            return next_queued(s, queues)

    src = add_job(st.sessions, tiny_pretrain(epochs=1))
    ev = add_job(st.sessions, evaluate_of(src), priority=9)  # would be served first
    other = add_job(st.sessions, tiny_pretrain(epochs=1))
    assert poll(["gpu", "cpu"]) == src
    assert claim(st.sessions, ev, "w", 30) is None
    assert claim(st.sessions, src, "w", 30) is not None  # the source is running now
    # the evaluation neither blocks the queue nor gets picked again and again
    assert poll(["gpu", "cpu"]) == other
    assert poll(["cpu"]) is None
    assert _run(st, ev) == SKIPPED
    j = job(st.sessions, ev)
    assert (j.status, j.attempt) == ("queued", 0) and runs(st.sessions, ev) == []


def test_readme_flow_evaluation_submitted_right_after_pretraining_succeeds(sqlite_store, monkeypatch):
    """Embedded mode, one local worker: pretrain then evaluate it, both queued at once."""
    import worker.local as local
    from worker.local import LocalWorker

    st = sqlite_store
    outcomes: list[tuple[int, str]] = []
    real = local.run_job

    def counting(job_id, **kw):
        out = real(job_id, **kw)
        outcomes.append((job_id, out))
        return out

    monkeypatch.setattr(local, "run_job", counting)
    src = add_job(st.sessions, tiny_pretrain(epochs=1))
    ev = add_job(st.sessions, evaluate_of(src), priority=5)  # higher priority than its source
    stop = threading.Event()
    w = LocalWorker(st.settings, "local-0", stop, session_factory=st.sessions)
    w.start()
    try:
        deadline = time.monotonic() + 90
        while job(st.sessions, ev).status in ("queued", "running"):
            assert time.monotonic() < deadline, outcomes
            time.sleep(0.05)
    finally:
        stop.set()
        w.join(30)
    e = job(st.sessions, ev)
    assert e.status == "succeeded", e.error
    assert e.top1 is not None and job(st.sessions, src).status == "succeeded"
    assert outcomes == [(src, SUCCEEDED), (ev, SUCCEEDED)]  # no skipped claims, no spinning
    assert [(r.attempt, r.outcome) for r in runs(st.sessions, ev)] == [(1, "succeeded")]


def test_evaluation_of_a_failed_source_fails_clearly(sqlite_store):
    st = sqlite_store
    src = add_job(st.sessions, tiny_pretrain(data={"dataset": "image_folder", "path": "no/such", "image_size": 16}))
    ev = add_job(st.sessions, evaluate_of(src))
    assert _run(st, ev) == SKIPPED
    assert _run(st, src) == FAILED
    assert _run(st, ev) == FAILED
    assert job(st.sessions, ev).error == f"source_job_id: job {src} (failed) has no backbone weights"


@pytest.mark.parametrize("ending", ["succeeded", "failed"])
def test_with_a_broker_waiting_evaluations_are_dispatched_when_the_source_ends(sqlite_store, monkeypatch, ending):
    import api.dispatch

    st = sqlite_store
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(api.dispatch, "dispatch", lambda jid, settings, queue=None: sent.append((jid, queue)) or True)
    settings = st.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    data = {} if ending == "succeeded" else {"data": {"dataset": "image_folder", "path": "no/such", "image_size": 16}}
    src = add_job(st.sessions, tiny_pretrain(epochs=1, **data))
    ev = add_job(st.sessions, evaluate_of(src))
    assert _run(st, ev, settings=settings) == SKIPPED  # the message at submit time: dropped, job kept
    assert _run(st, src, settings=settings) == ending
    assert sent == [(ev, "cpu")]
    assert job(st.sessions, ev).dispatched_at is not None
    assert _run(st, ev, settings=settings) == ending
