"""run_job in-process with the real trainer and evaluator: success, resume after hand-back, cancel,
permanent failures (failed once, never requeued), follow-up evaluations."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select, update
from worker_testlib import add_job, events, job, job_dir, metric_steps, runs
from tests.support.specs import tiny_pretrain

from api.db.jobs import transition
from api.db.models import Artifact, Job
from worker.reconciler import reconcile_once
from worker.runner import CANCELLED, FAILED, RELEASED, SUCCEEDED, run_job

STEPS_PER_EPOCH = 4  # 32 images / batch 8


class StopAfter(threading.Event):
    """A shutdown event that 'fires' after ``n`` step-boundary checks (deterministic hand-back)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0 or super().is_set()


def start_in_thread(store, spec: dict) -> tuple[int, threading.Thread, dict]:
    """Submit ``spec``, run it with run_job in a thread, and return once it has logged metrics:
    (job id, the thread, a dict whose "out" is run_job's outcome once the thread ends)."""
    jid = add_job(store.sessions, spec)
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "out", run_job(jid, worker_id="w", settings=store.settings, session_factory=store.sessions)))
    t.start()
    deadline = time.monotonic() + 60
    while len(metric_steps(store.sessions, jid)) < 2:
        assert time.monotonic() < deadline and t.is_alive(), "job did not start"
        time.sleep(0.05)
    return jid, t, result


def artifacts(sessions, job_id):
    with sessions() as s:
        return {a.name: a.kind for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}


def test_tiny_job_succeeds_with_metrics_progress_artifacts(store):
    jid = add_job(store.sessions, tiny_pretrain(epochs=2))
    assert run_job(jid, worker_id="w", settings=store.settings, session_factory=store.sessions) == SUCCEEDED
    j = job(store.sessions, jid)
    assert j.status == "succeeded" and j.owner is None and j.lease_expires_at is None and j.finished_at
    assert j.result["step"] == 2 * STEPS_PER_EPOCH and j.result["backbone"] == "backbone.safetensors"
    assert j.progress["total_steps"] == 2 * STEPS_PER_EPOCH
    assert metric_steps(store.sessions, jid) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    arts = artifacts(store.sessions, jid)
    assert arts["backbone.safetensors"] == "backbone" and arts["checkpoints/last.safetensors"] == "checkpoint"
    assert (store.settings.job_dir(jid) / "backbone.safetensors").is_file()
    assert [(r.attempt, r.outcome) for r in runs(store.sessions, jid)] == [(1, "succeeded")]
    assert events(store.sessions, jid)[-1] == ("running", "succeeded", "w")


def test_handback_then_resume_continues_steps_without_duplicates(sqlite_store):
    st = sqlite_store
    jid = add_job(st.sessions, tiny_pretrain(epochs=3))
    out = run_job(jid, worker_id="w1", settings=st.settings, session_factory=st.sessions, stop_event=StopAfter(6))
    assert out == RELEASED
    j = job(st.sessions, jid)
    assert (j.status, j.owner, j.attempt) == ("queued", None, 1)
    assert (st.settings.job_dir(jid) / "checkpoints" / "last.safetensors").is_file()
    first = metric_steps(st.sessions, jid)
    assert first and max(first) < 3 * STEPS_PER_EPOCH
    assert run_job(jid, worker_id="w2", settings=st.settings, session_factory=st.sessions) == SUCCEEDED
    assert metric_steps(st.sessions, jid) == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert [(r.attempt, r.worker, r.outcome) for r in runs(st.sessions, jid)] == [
        (1, "w1", "released"), (2, "w2", "succeeded")]
    assert ("running", "queued", "w1") in events(st.sessions, jid)


def test_cancel_running_job_checkpoints_then_cancelled(sqlite_store):
    st = sqlite_store
    st.settings = st.settings.model_copy(update={"test_step_delay": 0.05})
    jid, t, result = start_in_thread(st, tiny_pretrain(epochs=50))
    with st.sessions() as s, s.begin():  # what POST /v1/jobs/{id}/cancel does to a running job
        assert transition(s, jid, ["running"], "cancelling", actor="api", cancel_requested=True)
    t.join(60)
    assert result["out"] == CANCELLED
    j = job(st.sessions, jid)
    assert j.status == "cancelled" and j.result is None
    assert (st.settings.job_dir(jid) / "checkpoints" / "last.safetensors").is_file()
    assert max(metric_steps(st.sessions, jid)) < 50 * STEPS_PER_EPOCH
    assert [e[:2] for e in events(st.sessions, jid)][-2:] == [("running", "cancelling"), ("cancelling", "cancelled")]
    assert runs(st.sessions, jid)[-1].outcome == "cancelled"


def _assert_failed_once(st, jid, needle):
    j = job(st.sessions, jid)
    assert j.status == "failed", j.error
    assert needle in j.error and "Traceback" not in j.error
    assert [(r.attempt, r.outcome) for r in runs(st.sessions, jid)] == [(1, "failed")]
    # no retry loop: the reconciler leaves a failed job alone, and a late message does nothing
    reconcile_once(st.sessions, st.settings, dispatch=lambda j, q: True)
    assert run_job(jid, worker_id="again", settings=st.settings, session_factory=st.sessions) == "skipped"
    assert job(st.sessions, jid).status == "failed" and len(runs(st.sessions, jid)) == 1


def run_with_training_step(store, monkeypatch, wrap) -> int:
    """Run a tiny job whose method's training_step is ``wrap(inner_step)``; return the job id."""
    import ssl_core.registry as registry

    real = registry.build_method

    def build(spec):
        method = real(spec)
        method.training_step = wrap(method.training_step)
        return method

    monkeypatch.setattr(registry, "build_method", build)
    jid = add_job(store.sessions, tiny_pretrain(epochs=1))
    assert run_job(jid, worker_id="w", settings=store.settings, session_factory=store.sessions) == FAILED
    return jid


def test_nan_loss_fails_once_naming_the_step(sqlite_store, monkeypatch):
    def wrap(inner):
        def step(images, targets, generator=None):
            loss, metrics = inner(images, targets, generator)
            return loss * float("nan"), metrics
        return step

    jid = run_with_training_step(sqlite_store, monkeypatch, wrap)
    _assert_failed_once(sqlite_store, jid, "non-finite loss at step")


def test_a_refused_statement_during_the_run_fails_once(sqlite_store, monkeypatch):
    """Only an unreachable database leaves the job to its lease; a statement the database refused
    (here an IntegrityError) would be refused again on every retry, so the job fails once."""
    from sqlalchemy.exc import IntegrityError

    def wrap(inner):
        def step(images, targets, generator=None):
            raise IntegrityError("INSERT INTO metrics ...", {}, Exception("duplicate key value"))
        return step

    jid = run_with_training_step(sqlite_store, monkeypatch, wrap)
    _assert_failed_once(sqlite_store, jid, "duplicate key value")


def test_invalid_dataset_fails_once(sqlite_store):
    spec = tiny_pretrain(data={"dataset": "image_folder", "path": "no/such/folder", "image_size": 16})
    jid = add_job(sqlite_store.sessions, spec)
    assert run_job(jid, worker_id="w", settings=sqlite_store.settings,
                   session_factory=sqlite_store.sessions) == FAILED
    _assert_failed_once(sqlite_store, jid, "no/such/folder")


def test_invalid_stored_spec_fails_once_with_the_field(sqlite_store):
    st = sqlite_store
    jid = add_job(st.sessions)
    with st.sessions() as s, s.begin():  # e.g. a spec written by an older version
        s.execute(update(Job).where(Job.id == jid).values(spec={**tiny_pretrain(), "epochs": -1}))
    assert run_job(jid, worker_id="w", settings=st.settings, session_factory=st.sessions) == FAILED
    _assert_failed_once(st, jid, "invalid spec: epochs")


def test_eval_after_creates_followups_once_and_they_run(sqlite_store):
    st = sqlite_store
    spec = tiny_pretrain(epochs=1, eval={"after": [{"protocol": "knn", "k": 5}],
                                         "data": {"dataset": "synthetic", "train_subset": 32, "test_subset": 16}})
    jid = add_job(st.sessions, spec)
    assert run_job(jid, worker_id="w", settings=st.settings, session_factory=st.sessions) == SUCCEEDED
    with st.sessions() as s:
        children = list(s.scalars(select(Job).where(Job.parent_job_id == jid)))
    assert len(children) == 1
    child = children[0]
    assert (child.kind, child.status, child.source_job_id, child.queue) == ("evaluate", "queued", jid, "cpu")
    # a duplicate finish (the success transition is conditional) cannot create them again
    assert run_job(jid, worker_id="w2", settings=st.settings, session_factory=st.sessions) == "skipped"
    assert run_job(child.id, worker_id="w", settings=st.settings, session_factory=st.sessions) == SUCCEEDED
    c = job(st.sessions, child.id)
    assert c.top1 is not None and 0.0 <= c.top1 <= 1.0 and c.top5 is not None
    assert c.result["protocol"] == "knn"
    assert "result.json" in artifacts(st.sessions, child.id)


def test_evaluate_with_unfinished_source_waits_in_the_queue(sqlite_store):
    """Claimed before its source finished, an evaluation is left queued -- no failure, no attempt."""
    st = sqlite_store
    src = add_job(st.sessions)
    jid = add_job(st.sessions, {"kind": "evaluate", "source_job_id": src, "data": {"dataset": "synthetic"}})
    assert run_job(jid, worker_id="w", settings=st.settings, session_factory=st.sessions) == "skipped"
    j = job(st.sessions, jid)
    assert (j.status, j.attempt, j.error) == ("queued", 0, None) and runs(st.sessions, jid) == []


def test_local_worker_runs_queue_in_priority_order(sqlite_store):
    from worker.local import LocalWorker

    st = sqlite_store
    low = add_job(st.sessions, tiny_pretrain(epochs=1), priority=0)
    high = add_job(st.sessions, tiny_pretrain(epochs=1), priority=5)
    stop = threading.Event()
    w = LocalWorker(st.settings, "local-0", stop, session_factory=st.sessions)
    assert w.run_once() == SUCCEEDED
    assert job(st.sessions, high).status == "succeeded" and job(st.sessions, low).status == "queued"
    w.start()
    deadline = time.monotonic() + 60
    while job(st.sessions, low).status != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop.set()
    w.join(10)
    assert not w.is_alive()


def test_unwritable_artifact_root_fails_the_job_clearly(sqlite_store, tmp_path):
    st = sqlite_store
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    settings = st.settings.model_copy(update={"artifact_root": blocker})
    jid = add_job(st.sessions)
    assert run_job(jid, worker_id="w", settings=settings, session_factory=st.sessions) == FAILED
    j = job(st.sessions, jid)
    assert j.status == "failed" and ("NotADirectoryError" in j.error or "FileExistsError" in j.error), j.error


def test_database_blip_during_a_run_loses_nothing(store, monkeypatch):
    """The store fails for a moment mid-run: the sink keeps its buffer, retries, and the job ends
    succeeded with every step once and a single run (the lease outlives the blip)."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    store.settings = store.settings.model_copy(update={"test_step_delay": 0.05})
    outage, refused = threading.Event(), []

    @event.listens_for(store.engine, "before_cursor_execute")
    def _down(*_args, **_kw):
        if outage.is_set():
            refused.append(1)
            raise OperationalError("(simulated)", {}, ConnectionError("database unreachable"))

    jid, t, result = start_in_thread(store, tiny_pretrain(epochs=10))
    deadline = time.monotonic() + 60
    outage.set()
    while len(refused) < 3:  # the writer tried (and failed) a few times
        assert time.monotonic() < deadline
        time.sleep(0.05)
    outage.clear()
    t.join(120)
    assert result["out"] == SUCCEEDED
    assert metric_steps(store.sessions, jid) == list(range(1, 10 * STEPS_PER_EPOCH + 1))
    assert [(r.attempt, r.outcome) for r in runs(store.sessions, jid)] == [(1, "succeeded")]


def test_evaluate_job_reports_progress_and_is_handed_back_during_feature_extraction(sqlite_store):
    st = sqlite_store
    spec = {"kind": "evaluate", "baseline": "random_init", "backbone": {"name": "convnet", "width": 4},
            "protocol": {"protocol": "knn", "k": 5}, "device": "cpu", "batch_size": 8,
            "data": {"dataset": "synthetic", "train_subset": 32, "test_subset": 16, "image_size": 16}}
    total = 32 // 8 + 16 // 8 + 1  # feature batches (train, test) + the kNN vote
    jid = add_job(st.sessions, spec)
    out = run_job(jid, worker_id="w1", settings=st.settings, session_factory=st.sessions, stop_event=StopAfter(2))
    assert out == RELEASED  # a shutdown mid-extraction hands the job back instead of finishing it
    j = job(st.sessions, jid)
    assert (j.status, j.owner, j.result, j.top1) == ("queued", None, None, None)
    assert j.progress is not None and j.progress["total_steps"] == total and 1 <= j.progress["step"] < total
    assert not (job_dir(st.sessions, st.settings, jid) / "result.json").exists()
    assert run_job(jid, worker_id="w2", settings=st.settings, session_factory=st.sessions) == SUCCEEDED
    j = job(st.sessions, jid)
    assert j.status == "succeeded" and j.top1 is not None
    assert j.progress["step"] == j.progress["total_steps"] == total
