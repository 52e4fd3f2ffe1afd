"""Run one job by id: claim it in SQL, run ssl_core with a SqlSink, finish it. Shared by Celery and
the embedded local worker.

Exactly-once rests on SQL, not on the broker (the mechanics are in :mod:`api.db.leases`):

* **Claim** (``leases.claim``): one conditional UPDATE ``queued -> running`` plus a ``JobRun`` row
  for the new attempt. A message for a job that is running under a live lease, finished or
  cancelled claims nothing and is dropped.
* **Fencing**: every later write for the job (metrics, progress, artifacts, the heartbeat, the final
  status) first re-checks ``owner + attempt + status`` in the same transaction (``JobLease``).
  A worker whose lease expired -- it hung, or lost the database for longer than LEASE_SECONDS --
  and whose job was requeued writes nothing more for it.
* **Finish**: succeeded (result, top-1/top-5, follow-up evaluations in the same transaction) /
  cancelled (after a checkpoint) / handed back to the queue on shutdown / failed once with the error
  message. Retrying is the reconciler's job, and only for lost workers: an exception from the job
  itself (NaN loss, bad data, an invalid spec, a bug) fails it once. So does an exception while
  *finishing* it (registering outputs, creating its follow-ups) unless it is a connection-level
  database error (``session.is_connection_error``): only an unreachable store leaves the job to
  its lease.
* **Waiting on a source**: an evaluation of a pretraining job that is still queued/running/cancelling
  is not claimable (``jobs.source_settled``; the local worker's poll skips it too). It stays queued,
  no attempt is used; it is dispatched again when its source finishes (here, and by the reconciler).

torch, ssl_core.train and ssl_core.evaluate are imported inside :func:`_execute`, never at module load.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from api.db.artifacts import latest_artifact, register_artifact
from api.db.clock import utcnow
from api.db.jobs import (create_job, dependents_waiting, get_job, gpus_needed, run_key_of, spec_of,
                         waiting_on)
from api.db.leases import JobLease, LeaseLost, claim
from api.db.models import ACTIVE_STATUSES, Job
from api.db.session import is_connection_error, sessions_for
from api.db.suites import EVAL_FIRST, suite_cancelled
from api.db.workers import fits
from api.redact import redact
from api.settings import Settings
from ssl_core.errors import PermanentError
from ssl_core.specs import followup_eval_data, parse_job_spec, spec_error_path
from ssl_core.storage import StoreUnavailable
from worker.artifact_sync import Publisher, fetch_source, pull_checkpoint
from worker.limits import runtime_exceeded, set_runtime_deadline
from worker.reconciler import send_and_mark
from worker.sink import SqlSink
from worker.slots import Placement, pin_thread

log = logging.getLogger("pretextlab.worker")

MAX_ERROR_CHARS = 4000
# The event reason of a cancel that arrived during the last step (docs/api.md, "Cancelling").
CANCELLED_AFTER_COMPLETION = "cancel requested during the last step: the run completed; outputs kept"

# Outcomes run_job returns (and JobRun.outcome records).
SUCCEEDED, FAILED, CANCELLED, RELEASED, LOST, SKIPPED = (
    "succeeded", "failed", "cancelled", "released", "lost", "skipped")


# -- the job ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    completed: bool
    result: dict[str, Any] | None = None


def _source_weights(sessions: sessionmaker[Session], source_job_id: int, settings: Settings) -> Path:
    """The registered backbone of a pretraining job (an evaluate job's ``source_job_id``), fetched
    from the artifact store into this host's scratch folder when the store is remote."""
    with sessions() as s:
        src = get_job(s, source_job_id)
        if src is None:
            raise PermanentError(f"source_job_id: job {source_job_id} does not exist")
        art = latest_artifact(s, source_job_id, "backbone")
        if art is None or not src.artifact_dir:
            raise PermanentError(
                f"source_job_id: job {source_job_id} ({src.status}) has no backbone weights"
                + (" yet" if src.status in ACTIVE_STATUSES else ""))
        path, size = Path(src.artifact_dir) / art.name, art.size
    store = settings.artifact_store()
    if store.remote:
        path = fetch_source(store, source_job_id, art.name, settings.job_dir(source_job_id) / art.name, size,
                            settings.store_retries)
    if not path.is_file():
        raise PermanentError(f"source_job_id: the backbone file of job {source_job_id} is missing ({art.name})")
    return path


def _execute(sessions: sessionmaker[Session], job_id: int, spec_dict: dict[str, Any], job_dir: Path,
             sink: SqlSink, settings: Settings, placement: Placement | None = None,
             run_key: str | None = None) -> Outcome:
    """Validate the spec and run ssl_core (torch is imported here, never at module load). A job
    of several GPUs runs as that many rank processes on the placement's devices; ``run_key`` is
    recorded in (and checked against) the run's checkpoint."""
    spec = parse_job_spec(spec_dict)
    if spec.kind == "pretrain":
        try:  # another worker's progress first (a remote store only)
            pull_checkpoint(settings.artifact_store(), job_id, job_dir, settings.store_retries)
        except StoreUnavailable as exc:
            sink.store_unavailable(exc)
            return Outcome(False)
        gpus = gpus_needed(spec_dict)
        if gpus > 1:
            from ssl_core.launch import run_pretrain

            res = run_pretrain(spec, job_dir, nproc=gpus, devices=placement.cuda_devices() if placement else None,
                               sink=sink, should_stop=sink.should_stop, resume=True, run_key=run_key)
        else:
            from ssl_core.train import pretrain

            pin_thread(placement)
            res = pretrain(spec, job_dir, sink=sink, should_stop=sink.should_stop, resume=True, run_key=run_key)
    else:
        from ssl_core.evaluate import evaluate

        weights = _source_weights(sessions, spec.source_job_id, settings) if spec.source_job_id is not None else None
        res = evaluate(spec, job_dir, sink=sink, should_stop=sink.should_stop, weights_path=weights)
    return Outcome(True, res.to_dict()) if res.completed else Outcome(False)


def error_message(exc: BaseException) -> str:
    """What a user reads in ``job.error``: the message, not a traceback."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(spec_error_path(e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()]
        msg = "invalid spec: " + "; ".join(parts)
    elif isinstance(exc, PermanentError):
        msg = str(exc) or type(exc).__name__
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return redact(msg)[:MAX_ERROR_CHARS]  # users read it: no URL password or token


# -- finishing ---------------------------------------------------------------------------------------------
def eval_followups(job: Job) -> list[dict[str, Any]]:
    """The evaluate specs a succeeded pretraining asked for (``spec.eval.after``)."""
    spec = parse_job_spec(job.spec)
    if spec.kind != "pretrain" or not spec.eval.after:
        return []
    data = followup_eval_data(spec)
    # eval.layers is set only with knn/linear after-protocols (the spec refuses fine-tuning with it)
    layers = {} if spec.eval.layers is None else {
        "layers": spec.eval.layers, "layer_pooling": spec.eval.layer_pooling.model_dump(mode="json")}
    return [
        {"kind": "evaluate", "source_job_id": job.id, "protocol": p.model_dump(mode="json"),
         "data": data.model_dump(mode="json", exclude_none=True), "seed": spec.seed, "device": spec.device,
         "precision": spec.precision, **layers}
        for p in spec.eval.after
    ]


def run_job(job_id: int, *, worker_id: str, settings: Settings,
            session_factory: sessionmaker[Session] | None = None, stop_event: threading.Event | None = None,
            placement: Placement | None = None) -> str:
    """Claim, run and finish one job; returns the outcome (succeeded, failed, cancelled, released,
    lost, or skipped when the job could not be claimed). With a ``placement`` only a job that
    fits its devices is claimed, and the claim records them."""
    sessions = session_factory or sessions_for(settings.database_url)
    stop_event = stop_event or threading.Event()
    job_id = int(job_id)
    with sessions() as s:
        run_key = run_key_of(s, job_id)
    job_dir = settings.job_dir(job_id)
    where = {} if placement is None else dict(fits=fits(len(placement.devices)), worker=placement.worker,
                                              devices=list(placement.devices), waiting_reason=None)
    lease = claim(sessions, job_id, worker_id, settings.lease_seconds, job_dir, **where)
    if lease is None:
        with sessions() as s:
            waiting = waiting_on(s, job_id)
        if waiting is not None:
            # Not a failure and no attempt used: it stays queued and is dispatched again when the
            # source finishes (by _conclude below, or by the reconciler).
            log.info("job %s: not claimable yet: waits for its source job %s (%s); left queued",
                     job_id, *waiting)
        else:
            log.info("job %s: not claimable (running elsewhere, finished or cancelled); message dropped", job_id)
        return SKIPPED
    log.info("job %s: claimed by %s (attempt %s)", job_id, worker_id, lease.attempt)
    sink = SqlSink(lease, job_dir, flush_seconds=settings.metric_flush_seconds,
                   heartbeat_seconds=settings.heartbeat_seconds, stop_event=stop_event,
                   step_delay=settings.test_step_delay,
                   publish=Publisher(settings.artifact_store(), job_id, job_dir, settings.store_retries)).start()
    error: BaseException | None = None
    outcome = Outcome(False)
    try:
        with sessions() as s:
            spec_dict = spec_of(s, job_id)
        set_runtime_deadline(sink, sessions, lease, spec_dict, settings)
        job_dir.mkdir(parents=True, exist_ok=True)  # e.g. an unwritable ARTIFACT_ROOT fails the job, clearly
        outcome = _execute(sessions, job_id, spec_dict, job_dir, sink, settings, placement, run_key)
    except LeaseLost:
        pass
    except StoreUnavailable as exc:  # an object store (artifacts, a dataset) unreachable: back to the queue
        sink.store_unavailable(exc)
    except Exception as exc:
        if is_connection_error(exc):
            # The store, not the job, failed: leave the job to its lease (the reconciler requeues it).
            log.exception("job %s: database unreachable; abandoning this attempt to the reconciler", job_id)
            return LOST  # (the finally below still stops the sink)
        error = exc  # the job's own failure (a refused statement included): fail it once, never a retry loop
    finally:
        try:
            sink.close()
        except LeaseLost:
            pass
        except Exception:
            log.exception("job %s: final metrics flush failed", job_id)
    try:
        return _conclude(lease, sink, outcome, error, settings, sessions)
    except LeaseLost:
        log.warning("job %s: lease lost (attempt %s); abandoned without writing", job_id, lease.attempt)
        return LOST
    except Exception as exc:
        if is_connection_error(exc):  # the finish could not be written: the lease expires, the reconciler requeues
            log.exception("job %s: database error while finishing; left to the reconciler", job_id)
            return LOST
        # Anything else (an OSError registering outputs, an IntegrityError or an invalid spec creating
        # the follow-ups, a bug) would fail again on every retry: fail the job once, saying why.
        return _fail_finishing(lease, exc, sessions, settings)


def _fail_finishing(lease: JobLease, exc: BaseException, sessions: sessionmaker[Session],
                    settings: Settings) -> str:
    job_id = lease.job_id
    detail = f"{type(exc).__name__}: {exc.orig}" if isinstance(exc, DBAPIError) else error_message(exc)
    msg = redact(f"the job ran but could not be finished: {detail}")[:MAX_ERROR_CHARS]
    log.error("job %s: %s", job_id, msg, exc_info=exc)
    try:
        lease.finish(["running", "cancelling"], "failed", FAILED, reason=msg, error=msg,
                     owner=None, lease_expires_at=None, finished_at=utcnow())
    except LeaseLost:
        log.warning("job %s: lease lost while failing it; abandoned without writing", job_id)
        return LOST
    except Exception:
        log.exception("job %s: could not record the failure; left to the reconciler", job_id)
        return LOST
    _dispatch_all(sessions, [], settings, dependents_of=job_id)  # evaluations waiting on it now fail, clearly
    return FAILED


def _conclude(lease: JobLease, sink: SqlSink, outcome: Outcome, error: BaseException | None,
              settings: Settings, sessions: sessionmaker[Session]) -> str:
    job_id = lease.job_id
    now = utcnow()
    done = dict(owner=None, lease_expires_at=None, finished_at=now)
    if lease.lost:
        raise LeaseLost(f"job {job_id}: lease lost")
    if error is not None:
        msg = error_message(error)
        log.warning("job %s: failed: %s", job_id, msg)
        lease.finish(["running", "cancelling"], "failed", FAILED, reason=msg, error=msg, **done)
        _dispatch_all(sessions, [], settings, dependents_of=job_id)  # they fail, clearly
        return FAILED
    if outcome.completed and sink.store_error is None:
        job_dir = settings.job_dir(job_id)
        try:  # the final files in the store before the job is called succeeded
            Publisher(settings.artifact_store(), job_id, job_dir, settings.store_retries).outputs(
                [n for n, _ in FINAL_OUTPUTS if (job_dir / n).is_file()])
        except StoreUnavailable as exc:
            sink.store_unavailable(exc)
    if outcome.completed and sink.store_error is None:
        _register_outputs(lease, settings.job_dir(job_id))
        result = outcome.result or {}
        extra: dict[str, Any] = {"result": result}
        if "top1" in result:  # evaluate jobs: the leaderboard reads these columns
            extra.update(top1=result.get("top1"), top5=result.get("top5"))
        try:  # from running only: a cancel that landed during the last step wins (below)
            created = lease.finish(["running"], "succeeded", SUCCEEDED, reason="completed",
                                   on_commit=lambda s: _create_followups(s, job_id, settings.max_attempts),
                                   **done, **extra)
        except LeaseLost:
            if lease.lost:
                raise
            return _cancelled_after_completion(lease, settings, sessions, done, extra)
        _dispatch_all(sessions, created, settings, dependents_of=job_id)
        log.info("job %s: succeeded", job_id)
        return SUCCEEDED
    # stopped early, after a checkpoint
    if sink.stop_reason() == "max_runtime":
        return runtime_exceeded(lease, sink, done, lambda: _dispatch_all(sessions, [], settings, dependents_of=job_id))
    if sink.stop_reason() == "cancel" or lease.status == "cancelling":
        lease.finish(["cancelling", "running"], "cancelled", CANCELLED, reason="cancel requested", **done)
        _dispatch_all(sessions, [], settings, dependents_of=job_id)
        log.info("job %s: cancelled", job_id)
        return CANCELLED
    if sink.store_error is not None:
        # The artifact store is unreachable: the checkpoint is kept in this host's scratch folder and the
        # job goes back to the queue. Not re-dispatched at once (dispatched_at = now): the reconciler
        # sends it again after redispatch_after_seconds, so an outage is not a claim/release hot loop.
        lease.finish(["running"], "queued", RELEASED, reason=f"artifact store unreachable: {sink.store_error}"[:500],
                     owner=None, lease_expires_at=None, dispatched_at=now)
        log.warning("job %s: handed back to the queue (artifact store unreachable)", job_id)
        return RELEASED
    # shutting down: hand the job back; the attempt stays, the next claim increments it
    lease.finish(["running"], "queued", RELEASED, reason="worker shutting down; job handed back",
                 owner=None, lease_expires_at=None, dispatched_at=None)
    _dispatch_all(sessions, [job_id], settings)
    log.info("job %s: handed back to the queue (worker shutting down)", job_id)
    return RELEASED


FINAL_OUTPUTS = [("backbone.safetensors", "backbone"), ("checkpoints/last.safetensors", "checkpoint"), ("result.json", "result")]


def _cancelled_after_completion(lease: JobLease, settings: Settings, sessions: sessionmaker[Session],
                                done: dict[str, Any], extra: dict[str, Any]) -> str:
    """The cancel arrived while the last step ran: the job ends ``cancelled`` as the 202 promised,
    keeping what the finished run wrote (checkpoint, backbone, result); no follow-ups are created."""
    lease.finish(["cancelling"], "cancelled", CANCELLED, **done, **extra,
                 reason=CANCELLED_AFTER_COMPLETION)
    _dispatch_all(sessions, [], settings, dependents_of=lease.job_id)
    log.info("job %s: cancelled (the run had completed; outputs kept)", lease.job_id)
    return CANCELLED


def _register_outputs(lease: JobLease, job_dir: Path) -> None:
    """Make sure the final files are registered even if a sink call was missed (idempotent upserts)."""
    present = [(n, k, (job_dir / n).stat().st_size) for n, k in FINAL_OUTPUTS if (job_dir / n).is_file()]
    if not present:
        return
    with lease.guarded() as s:
        for name, kind, size in present:
            register_artifact(s, lease.job_id, name, kind, size)


def _create_followups(s: Session, job_id: int, max_attempts: int) -> list[int]:
    """Queue the evaluations a pretraining asked for, in the success transaction (so at most once)."""
    job = get_job(s, job_id)
    created: list[int] = []
    if job.suite_id is not None and suite_cancelled(s, job.suite_id):
        return created  # its suite was cancelled while it ran its last steps: nothing more to run
    for i, spec in enumerate(eval_followups(job)):
        child = create_job(
            s, spec, name=f"{job.name or f'job {job_id}'} / {spec['protocol']['protocol']}",
            tags=list(job.tags or []), priority=job.priority + (EVAL_FIRST if job.suite_id is not None else 0),
            parent_job_id=job_id,
            idempotency_key=f"pretextlab:eval-after:{job_id}:{i}", max_attempts=max_attempts,
            actor="worker", created_by=job.created_by, suite_id=job.suite_id, variant=job.variant, trial=job.trial,
        )
        created.append(child.id)
    return created


def _dispatch_all(sessions: sessionmaker[Session], job_ids: list[int], settings: Settings,
                  dependents_of: int | None = None) -> None:
    """Tell the broker (best effort: the reconciler re-dispatches anything this misses).
    ``dependents_of``: also the evaluations that were waiting for that (now finished) job."""
    if settings.broker_url is None:  # embedded: the local workers poll SQL
        return
    try:
        if dependents_of is not None:
            with sessions() as s:
                job_ids = [*job_ids, *dependents_waiting(s, dependents_of)]
        job_ids = list(dict.fromkeys(job_ids))
        send_and_mark(sessions, job_ids, settings)
    except Exception:
        log.exception("jobs %s: dispatch failed; the reconciler will re-dispatch them", job_ids)
