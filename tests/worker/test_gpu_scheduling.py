"""Workers that own several devices (CPU slots here): jobs side by side on their own slots, a job
that needs every slot, a job larger than the fleet waiting with its reason, dead workers dropping
out of capacity, and the Celery task leaving a job it cannot fit queued."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from api.db.clock import utcnow
from api.db.workers import capacity_by_queue, fleet, heartbeat_worker, register_worker
from tests.support.net import wait_for
from tests.support.specs import tiny_pretrain
from tests.worker.worker_testlib import add_job, job
from worker.local import LocalWorker
from worker.reconciler import reconcile_once
from worker.slots import CPU, CUDA, Placement, SlotPool, Slots, parse_gpus, resolve_slots


def _worker(st, slots: int, stop: threading.Event, name: str = "w2") -> LocalWorker:
    return LocalWorker(st.settings, name, stop, session_factory=st.sessions, slots=Slots(CPU, tuple(range(slots))))


def test_resolve_slots_and_pool():
    assert resolve_slots("0,2", None) == Slots(CUDA, (0, 2))
    assert resolve_slots(None, 3) == Slots(CPU, (0, 1, 2))
    assert resolve_slots(None, None, default_slots=2, detect=False) == Slots(CPU, (0, 1))
    for bad in ("a,b", "0,0", "-1"):
        with pytest.raises(ValueError, match="--gpus"):
            parse_gpus(bad)
    with pytest.raises(ValueError, match="--slots"):
        resolve_slots(None, 0)
    with pytest.raises(ValueError, match="one of them"):
        resolve_slots("0", 2)
    pool = SlotPool(Slots(CPU, (0, 1, 2)))
    a = pool.acquire(2)
    assert a == (0, 1) and pool.acquire(2) is None and pool.acquire(1) == (2,)
    pool.release(a)
    assert pool.free_count() == 2 and pool.acquire(2) == (0, 1)
    assert Placement("w", CPU, (0,)).cuda_devices() is None
    assert Placement("w", CUDA, (1, 3)).cuda_devices() == [1, 3]


def test_two_one_slot_jobs_run_at_once_each_on_its_own_slot(store):
    st = store
    st.settings = st.settings.model_copy(update={"test_step_delay": 0.1})
    a, b = add_job(st.sessions, tiny_pretrain(epochs=2)), add_job(st.sessions, tiny_pretrain(epochs=2))
    stop = threading.Event()
    w = _worker(st, 2, stop)
    w.start()
    try:
        # both running at the same time, on different slots, and the fleet listing says so
        wait_for(lambda: job(st.sessions, a).status == job(st.sessions, b).status == "running", 60, "both running")
        assert sorted([job(st.sessions, a).devices, job(st.sessions, b).devices]) == [[0], [1]]
        assert {job(st.sessions, a).worker, job(st.sessions, b).worker} == {"w2"}
        with st.sessions() as s:
            (me,) = fleet(s, utcnow() - timedelta(seconds=30))
        assert (me.name, me.gpus, me.free_gpus, me.alive) == ("w2", [0, 1], [], True)
        assert sorted(j["id"] for j in me.jobs) == sorted([a, b])
        wait_for(lambda: {job(st.sessions, a).status, job(st.sessions, b).status} == {"succeeded"}, 120, "both done")
    finally:
        stop.set()
        w.join(30)
    assert not w.is_alive()
    with st.sessions() as s:  # a clean stop deregisters
        assert fleet(s, utcnow()) == []


def test_a_two_slot_job_takes_both_slots_and_the_next_job_waits_for_them(sqlite_store):
    st = sqlite_store
    big = add_job(st.sessions, tiny_pretrain(resources={"gpus": 2}))
    small = add_job(st.sessions, tiny_pretrain())
    assert job(st.sessions, big).gpus == 2 and job(st.sessions, small).gpus == 1
    w = _worker(st, 2, threading.Event())
    assert w._take_next() == (big, (0, 1))  # oldest first, and it fits the two free slots
    assert w._take_next() is None  # nothing fits zero free slots
    w.pool.release((0, 1))
    # with one slot busy, the 2-slot job is passed over for the one that fits
    assert w.pool.acquire(1) == (0,)
    assert w._take_next() == (small, (1,))


def test_two_slot_job_runs_as_two_ranks_on_a_two_slot_worker(sqlite_store):
    st = sqlite_store
    jid = add_job(st.sessions, tiny_pretrain(epochs=1, resources={"gpus": 2}))
    w = _worker(st, 2, threading.Event())
    assert w.run_once() == "succeeded", job(st.sessions, jid).error
    j = job(st.sessions, jid)
    assert (j.status, j.devices, j.worker, j.attempt) == ("succeeded", [0, 1], "w2", 1)
    assert w.pool.free_count() == 2


def test_job_larger_than_every_live_worker_waits_with_its_reason(store):
    st = store
    jid = add_job(st.sessions, tiny_pretrain(resources={"gpus": 3}, batch_size=9))
    one = add_job(st.sessions, tiny_pretrain(epochs=1))
    reconcile_once(st.sessions, st.settings)
    assert job(st.sessions, jid).waiting_reason == "waiting: needs 3 GPUs, no live worker serves queue gpu"
    with st.sessions() as s, s.begin():
        register_worker(s, "w2", host="h", device_kind=CPU, gpus=[0, 1], queues=["gpu", "cpu"])
    reconcile_once(st.sessions, st.settings)
    assert job(st.sessions, jid).waiting_reason == "waiting: needs 3 GPUs, largest worker has 2"
    assert job(st.sessions, one).waiting_reason is None
    # the 2-slot worker never takes it, but runs the job that fits
    w = _worker(st, 2, threading.Event())
    assert w.run_once() == "succeeded" and job(st.sessions, one).status == "succeeded"
    assert w.run_once() is None and job(st.sessions, jid).status == "queued"
    # a large enough worker appears: the reason goes
    with st.sessions() as s, s.begin():
        register_worker(s, "w4", host="h", device_kind=CPU, gpus=[0, 1, 2, 3], queues=["gpu"])
    reconcile_once(st.sessions, st.settings)
    assert job(st.sessions, jid).waiting_reason is None


def test_a_dead_worker_drops_out_of_capacity(store):
    st = store
    with st.sessions() as s, s.begin():
        register_worker(s, "big", host="h1", device_kind=CPU, gpus=[0, 1, 2, 3], queues=["gpu"])
        register_worker(s, "small", host="h2", device_kind=CPU, gpus=[0], queues=["gpu"])
    now = utcnow()
    with st.sessions() as s:
        assert capacity_by_queue(s, now - timedelta(seconds=30)) == {"gpu": 4}
        # no heartbeat from either for 30 s: neither counts, both are listed as dead
        assert capacity_by_queue(s, now + timedelta(seconds=30)) == {}
        assert [w.alive for w in fleet(s, now + timedelta(seconds=30))] == [False, False]
    jid = add_job(st.sessions, tiny_pretrain(resources={"gpus": 2}))
    with st.sessions() as s, s.begin():
        assert heartbeat_worker(s, "big") and not heartbeat_worker(s, "gone")
    reconcile_once(st.sessions, st.settings)  # LEASE_SECONDS 30: "big" is alive and fits it
    assert job(st.sessions, jid).waiting_reason is None
    # with LEASE_SECONDS 0.05 the same heartbeats are soon too old: no live worker is left
    short = st.settings.model_copy(update={"lease_seconds": 0.05})
    wait_for(lambda: (reconcile_once(st.sessions, short), job(st.sessions, jid).waiting_reason)[1], 10, "reason")
    assert job(st.sessions, jid).waiting_reason == "waiting: needs 2 GPUs, no live worker serves queue gpu"
    # a day of silence and a dead worker is forgotten
    from api.db.workers import forget_workers

    with st.sessions() as s, s.begin():
        assert forget_workers(s, utcnow() - timedelta(days=1)) == 0
        assert forget_workers(s, utcnow() + timedelta(seconds=1)) == 2


def test_celery_task_leaves_a_job_it_cannot_fit_queued_for_a_resend(sqlite_store, monkeypatch):
    from worker import celery_app, tasks

    st = sqlite_store
    jid = add_job(st.sessions, tiny_pretrain(resources={"gpus": 2}))
    with st.sessions() as s, s.begin():
        from api.db.jobs import mark_dispatched

        mark_dispatched(s, jid)
    pool = SlotPool(Slots(CPU, (0, 1)))
    pool.acquire(1)  # one slot busy with another job
    monkeypatch.setitem(celery_app.FLEET, "pool", pool)
    monkeypatch.setitem(celery_app.FLEET, "name", "celery@h:1")
    assert tasks._run_placed(jid, "celery@h:1:7", st.settings) == "skipped"
    j = job(st.sessions, jid)
    assert (j.status, j.attempt, j.dispatched_at) == ("queued", 0, None)  # the reconciler sends it again
    assert pool.free_count() == 1
