"""Claim, lease fencing and the reconciler, with real SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from worker_testlib import add_job, events, job, runs

from api.db.clock import utcnow
from api.db.jobs import transition
from api.db.leases import JobLease, LeaseLost, claim, end_run
from api.db.models import Job
from worker.reconciler import reconcile_once
from worker.runner import SKIPPED, run_job
from worker.sink import SqlSink


def _expire(sessions, job_id):
    with sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=5)))


class Recorder:
    def __init__(self):
        self.sent: list[tuple[int, str]] = []

    def __call__(self, job_id: int, queue: str) -> bool:
        self.sent.append((job_id, queue))
        return True


def test_claim_race_exactly_one_wins(store):
    jid = add_job(store.sessions)
    n = 6
    barrier = threading.Barrier(n)
    won: list[JobLease | None] = [None] * n

    def racer(i):
        barrier.wait()
        won[i] = claim(store.sessions, jid, f"w{i}", 30)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w in won if w is not None]
    assert len(winners) == 1
    j = job(store.sessions, jid)
    assert (j.status, j.attempt, j.owner) == ("running", 1, winners[0].owner)
    assert [(r.attempt, r.worker) for r in runs(store.sessions, jid)] == [(1, winners[0].owner)]
    assert events(store.sessions, jid)[-1] == ("queued", "running", winners[0].owner)


def test_redelivered_message_for_running_or_finished_job_does_nothing(store):
    jid = add_job(store.sessions)
    lease = claim(store.sessions, jid, "first", 30)
    assert lease is not None
    # a second message (redelivery past the visibility timeout, a reconciler duplicate) is dropped
    assert run_job(jid, worker_id="second", settings=store.settings, session_factory=store.sessions) == SKIPPED
    assert len(runs(store.sessions, jid)) == 1
    assert job(store.sessions, jid).owner == "first"
    with lease.guarded() as s:
        assert transition(s, jid, ["running"], "succeeded", owner=None)
    assert run_job(jid, worker_id="third", settings=store.settings, session_factory=store.sessions) == SKIPPED
    assert len(runs(store.sessions, jid)) == 1
    assert job(store.sessions, jid).status == "succeeded"


def test_live_lease_is_left_alone(store):
    jid = add_job(store.sessions)
    assert claim(store.sessions, jid, "w", 30) is not None
    rec = Recorder()
    out = reconcile_once(store.sessions, store.settings, dispatch=rec)
    assert out["n_requeued"] == 0 and rec.sent == []
    assert job(store.sessions, jid).status == "running"


def test_expired_lease_requeued_then_next_claim_is_attempt_two(store):
    jid = add_job(store.sessions)
    lease = claim(store.sessions, jid, "dead-worker", 30)
    _expire(store.sessions, jid)
    rec = Recorder()
    out = reconcile_once(store.sessions, store.settings, dispatch=rec)
    assert out["requeued"] == [jid]
    assert rec.sent == [(jid, "gpu")]
    j = job(store.sessions, jid)
    assert (j.status, j.owner, j.attempt) == ("queued", None, 1)
    assert j.dispatched_at is not None  # marked when the dispatch went out
    assert [(r.attempt, r.outcome) for r in runs(store.sessions, jid)] == [(1, "lost")]
    assert events(store.sessions, jid)[-1] == ("running", "queued", "reconciler")
    # the lost worker wakes up: every write is fenced, nothing lands
    with pytest.raises(LeaseLost):
        lease.heartbeat()
    sink = SqlSink(lease, store.settings.job_dir(jid), flush_seconds=1, heartbeat_seconds=1)
    sink.metrics(1, {"train/loss": 1.0})
    with pytest.raises(LeaseLost):  # the training loop unwinds at its next step, writing nothing
        sink.should_stop()
    sink.close()  # no exception, and no metric written
    from worker_testlib import metric_steps

    assert metric_steps(store.sessions, jid) == []
    # a new claim increments the attempt
    again = claim(store.sessions, jid, "new-worker", 30)
    assert again is not None and again.attempt == 2
    assert [r.attempt for r in runs(store.sessions, jid)] == [1, 2]
    # a second reconcile pass does not touch the new, live attempt
    reconcile_once(store.sessions, store.settings, dispatch=rec)
    assert job(store.sessions, jid).status == "running"


def test_max_attempts_fails_with_reason(store):
    jid = add_job(store.sessions, max_attempts=2)
    rec = Recorder()
    for attempt in (1, 2):
        assert claim(store.sessions, jid, f"w{attempt}", 30) is not None
        _expire(store.sessions, jid)
        reconcile_once(store.sessions, store.settings, dispatch=rec)
    j = job(store.sessions, jid)
    assert j.status == "failed"
    assert j.error == "lease expired 2 times (worker lost); giving up"
    assert [r.outcome for r in runs(store.sessions, jid)] == ["lost", "lost"]
    ev = events(store.sessions, jid)
    assert ev == [(None, "queued", "api"), ("queued", "running", "w1"), ("running", "queued", "reconciler"),
                  ("queued", "running", "w2"), ("running", "failed", "reconciler")]
    assert rec.sent == [(jid, "gpu")]  # the failed job is not dispatched again


def test_graceful_handbacks_do_not_use_up_attempts(store):
    jid = add_job(store.sessions, max_attempts=2)
    for i in range(3):  # three rolling restarts hand the job back
        lease = claim(store.sessions, jid, f"w{i}", 30)
        with lease.guarded() as s:
            assert transition(s, jid, ["running"], "queued", owner=None, lease_expires_at=None)
            end_run(s, jid, lease.attempt, "released")
    lease = claim(store.sessions, jid, "w-last", 30)
    assert lease.attempt == 4
    _expire(store.sessions, jid)
    reconcile_once(store.sessions, store.settings, dispatch=Recorder())
    assert job(store.sessions, jid).status == "queued"  # first real loss of 2 allowed


def test_expired_cancelling_becomes_cancelled(store):
    jid = add_job(store.sessions)
    assert claim(store.sessions, jid, "w", 30) is not None
    with store.sessions() as s, s.begin():
        assert transition(s, jid, ["running"], "cancelling", cancel_requested=True)
    _expire(store.sessions, jid)
    out = reconcile_once(store.sessions, store.settings, dispatch=Recorder())
    assert out["cancelled"] == [jid]
    j = job(store.sessions, jid)
    assert j.status == "cancelled" and j.finished_at is not None
    assert events(store.sessions, jid)[-1] == ("cancelling", "cancelled", "reconciler")


def test_lost_queued_messages_are_redispatched(store):
    fresh = add_job(store.sessions)
    stale = add_job(store.sessions, spec=None)
    never = add_job(store.sessions)
    now = utcnow()
    with store.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == fresh).values(dispatched_at=now))
        s.execute(update(Job).where(Job.id == stale).values(dispatched_at=now - timedelta(seconds=3600)))
    rec = Recorder()
    out = reconcile_once(store.sessions, store.settings, dispatch=rec)
    assert sorted(out["redispatched"]) == sorted([stale, never])
    assert sorted(j for j, _ in rec.sent) == sorted([stale, never])
    # just dispatched: not sent again on the next pass
    rec2 = Recorder()
    reconcile_once(store.sessions, store.settings, dispatch=rec2)
    assert rec2.sent == []
    # a failing broker leaves dispatched_at alone, so the next pass retries
    with store.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == fresh).values(dispatched_at=None))
    out = reconcile_once(store.sessions, store.settings, dispatch=lambda j, q: False)
    assert out["redispatched"] == [] and job(store.sessions, fresh).dispatched_at is None


def test_heartbeat_renews_and_sees_cancel(store):
    jid = add_job(store.sessions)
    lease = claim(store.sessions, jid, "w", 30)
    before = job(store.sessions, jid).lease_expires_at
    lease.heartbeat()
    assert job(store.sessions, jid).lease_expires_at >= before
    assert not lease.cancel_requested
    with store.sessions() as s, s.begin():
        transition(s, jid, ["running"], "cancelling", cancel_requested=True)
    lease.heartbeat()  # still ours while cancelling
    assert lease.cancel_requested


def test_redispatch_backs_off_exponentially_per_job(store, monkeypatch):
    """A job queued behind long jobs for two hours: a pass every 30 s used to re-send it ~80 times."""
    import api.db.jobs
    import worker.reconciler as rec

    jid = add_job(store.sessions)
    t0 = utcnow()
    clock = [t0]
    monkeypatch.setattr(rec, "utcnow", lambda: clock[0])
    monkeypatch.setattr(api.db.jobs, "utcnow", lambda: clock[0])  # what mark_dispatched records
    sends = []
    for k in range(0, 2 * 3600 // 30 + 1):
        clock[0] = t0 + timedelta(seconds=30 * k)
        if jid in reconcile_once(store.sessions, store.settings, dispatch=Recorder())["redispatched"]:
            sends.append(30 * k)
    base = store.settings.redispatch_after_seconds  # 60
    assert sends[0] == 0  # never dispatched: sent at once
    assert base <= sends[1] <= 2 * base  # a lost message is still recovered quickly
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    assert all(g2 >= g1 for g1, g2 in zip(gaps, gaps[1:])), sends
    assert gaps[-1] >= 16 * base and 6 <= len(sends) <= 10, sends


def test_redispatch_interval_doubles_is_capped_and_restarts_when_requeued():
    from worker.reconciler import MAX_REDISPATCH_INTERVAL_S, redispatch_due, redispatch_interval

    q = utcnow()
    at = lambda s: q + timedelta(seconds=s)  # noqa: E731
    assert redispatch_interval(at(0), q, 60) == 60
    assert redispatch_interval(at(60), q, 60) == 60
    assert redispatch_interval(at(500), q, 60) == 500
    assert redispatch_interval(at(10**6), q, 60) == MAX_REDISPATCH_INTERVAL_S
    assert redispatch_interval(at(10**6), q, 60, cap=10) == 60  # the cap never goes below the base
    # requeued (by the reconciler or a hand-back) after the last send: the back-off starts over
    assert redispatch_interval(at(5000), at(5000 + 1), 60) == 60
    assert redispatch_due(at(100), None, q, 60)
    assert not redispatch_due(at(1000 + 999), at(1000), q, 60) and redispatch_due(at(2000), at(1000), q, 60)


def test_evaluations_waiting_for_an_active_source_are_not_redispatched(store):
    src = add_job(store.sessions)
    ev = add_job(store.sessions, {"kind": "evaluate", "source_job_id": src, "data": {"dataset": "synthetic"}})
    rec = Recorder()
    out = reconcile_once(store.sessions, store.settings, dispatch=rec)
    assert out["redispatched"] == [src] and rec.sent == [(src, "gpu")]
    with store.sessions() as s, s.begin():
        assert transition(s, src, "queued", "running", owner="w")
        s.execute(update(Job).where(Job.id == ev).values(dispatched_at=utcnow()))  # sent at submit time
    assert reconcile_once(store.sessions, store.settings, dispatch=Recorder())["redispatched"] == []
    # the source ends (here: fails) after the evaluation's last dispatch: sent at once, then not again
    with store.sessions() as s, s.begin():
        assert transition(s, src, "running", "failed", error="boom")
    assert reconcile_once(store.sessions, store.settings, dispatch=Recorder())["redispatched"] == [ev]
    assert reconcile_once(store.sessions, store.settings, dispatch=Recorder())["redispatched"] == []
