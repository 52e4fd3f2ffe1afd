"""After a broker loss, an idle worker finds the queued job whose message is gone and sends it
again; a worker shutting down puts back, unstarted, a message it still receives."""

from __future__ import annotations

from datetime import timedelta

import redis
from sqlalchemy import update
from worker_testlib import add_job, job

from api.db.clock import as_utc, utcnow
from api.db.models import Job
from api.dispatch import reset_clients
from worker import idle_poll


def test_an_idle_worker_resends_a_lost_message_once_per_grace_period(sqlite_url, tmp_path, redis_server):
    from tests.worker.conftest import make_store

    st = make_store(sqlite_url, tmp_path, idle_redispatch_seconds=5)
    st.settings = st.settings.model_copy(update={"broker_url": redis_server.url})
    r = redis.Redis.from_url(redis_server.url)
    try:
        fresh, lost, cpu = add_job(st.sessions), add_job(st.sessions), add_job(st.sessions, {
            "kind": "evaluate", "baseline": "random_init", "protocol": {"protocol": "knn"},
            "data": {"dataset": "synthetic", "image_size": 16}})
        now = utcnow()
        with st.sessions() as s, s.begin():  # fresh: just dispatched; lost and cpu: sent 30 s ago, then FLUSHALL
            s.execute(update(Job).where(Job.id == fresh).values(dispatched_at=now))
            s.execute(update(Job).where(Job.id.in_([lost, cpu])).values(dispatched_at=now - timedelta(seconds=30)))
        assert idle_poll.poll_once(st.sessions, st.settings, ["gpu"], limit=5) == [lost]
        assert r.llen("gpu") == 1 and r.llen("cpu") == 0  # the cpu job is not this worker's to send
        assert as_utc(job(st.sessions, lost).dispatched_at) > now
        assert idle_poll.poll_once(st.sessions, st.settings, ["gpu"], limit=5) == []  # not again within 5 s
        assert idle_poll.poll_once(st.sessions, st.settings, ["gpu", "cpu"], limit=5) == [cpu]
    finally:
        reset_clients()
        st.engine.dispose()


def test_idle_means_no_task_running_or_reserved():
    assert idle_poll.busy() is False


def test_a_message_taken_during_shutdown_is_left_for_another_worker(sqlite_url, tmp_path, monkeypatch, caplog):
    from tests.worker.conftest import make_store
    from worker import tasks

    st = make_store(sqlite_url, tmp_path)
    jid = add_job(st.sessions)
    with st.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == jid).values(dispatched_at=utcnow()))
    monkeypatch.setattr(tasks, "_settings", lambda: st.settings)
    monkeypatch.setattr(tasks.SHUTDOWN, "is_set", lambda: True)
    caplog.set_level("INFO", logger="pretextlab.worker")
    assert tasks.run_job_task.run(jid) == "skipped"  # no Reject raised, so no traceback
    j = job(st.sessions, jid)
    assert j.status == "queued" and j.attempt == 0 and j.dispatched_at is None  # first in line for a re-send
    lines = [r for r in caplog.records if str(jid) in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    st.engine.dispose()


class _Qos:
    def can_consume(self) -> bool:
        return True


class _Message:
    headers = {"task": "pretextlab.run_job", "argsrepr": "(7,)"}

    def __init__(self) -> None:
        self.rejected: list[bool] = []

    def reject_log_error(self, logger, errors, requeue=False) -> None:
        self.rejected.append(requeue)


def test_the_shutdown_gate_asks_for_nothing_and_requeues_what_still_arrives(monkeypatch, caplog):
    """The consumer step behind the warm shutdown (real worker processes: tests/e2e/test_warm_shutdown.py)."""
    from types import SimpleNamespace

    from worker import celery_app

    assert celery_app.ShutdownGate in celery_app.app.steps["consumer"]
    started: list[int] = []
    c = SimpleNamespace(task_consumer=SimpleNamespace(channel=SimpleNamespace(qos=_Qos())),
                        strategies={"pretextlab.run_job": lambda m, b, a, r, cb: started.append(b)},
                        connection_errors=(OSError,))
    monkeypatch.setattr(celery_app, "SHUTDOWN", celery_app.threading.Event())
    celery_app.ShutdownGate(SimpleNamespace()).start(c)
    handle = c.strategies["pretextlab.run_job"]
    first = _Message()
    handle(first, 1, None, None, [])  # running: handled as before
    assert started == [1] and first.rejected == [] and c.task_consumer.channel.qos.can_consume()
    celery_app.SHUTDOWN.set()
    caplog.set_level("INFO", logger="pretextlab.worker")
    late = _Message()
    handle(late, 2, None, None, [])
    assert started == [1] and late.rejected == [True]  # back to the broker, no task started
    assert c.task_consumer.channel.qos.can_consume() is False  # and no BRPOP asks for another
    (line,) = [r for r in caplog.records if "put back" in r.getMessage()]
    assert "pretextlab.run_job(7,)" in line.getMessage() and line.exc_info is None
