"""Run one job by id: claim it in SQL, run ssl_core with a SqlSink, finish it. Shared by Celery and
the embedded local worker.

Exactly-once rests on SQL, not on the broker:

* **Claim** is one conditional UPDATE ``queued -> running`` (owner, ``attempt + 1``, a lease) plus a
  ``JobRun(job_id, attempt)`` row in the same transaction; the unique (job_id, attempt) makes a
  second run of the same attempt impossible even if two claims raced. A message for a job that is
  running under a live lease, finished or cancelled claims nothing and is dropped.
* **Fencing**: every later write for the job (metrics, progress, artifacts, the heartbeat, the final
  status) first re-checks ``owner + attempt + status`` in the same transaction (``sink.JobLease``).
  A worker whose lease expired -- it hung, or lost the database for longer than LEASE_SECONDS --
  and whose job was requeued writes nothing more for it.
* **Finish**: succeeded (result, top-1/top-5, follow-up evaluations in the same transaction) /
  cancelled (after a checkpoint) / handed back to the queue on shutdown / failed once with the error
  message. Retrying is the reconciler's job, and only for lost workers: an exception from the job
  itself (NaN loss, bad data, an invalid spec, a bug) fails it once. So does an exception while
  *finishing* it (registering outputs, creating its follow-ups) unless it is a connection-level
  database error (:func:`is_connection_error`): only an unreachable store leaves the job to its lease.
* **Waiting on a source**: an evaluation of a pretraining job that is still queued/running/cancelling
  is not claimable (:func:`source_settled`; the local worker's poll skips it too). It stays queued,
  no attempt is used; it is dispatched again when its source finishes (here, and by the reconciler).

torch and ssl_core.train are imported inside :func:`_execute`, never at module load.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import exists, func, literal, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, aliased, sessionmaker

from api.db.models import ACTIVE_STATUSES, Artifact, Job, JobRun
from worker.sink import JobLease, LeaseLost, SqlSink, utcnow

log = logging.getLogger("pretextlab.worker")

MAX_ERROR_CHARS = 4000

# Outcomes run_job returns (and JobRun.outcome records).
SUCCEEDED, FAILED, CANCELLED, RELEASED, LOST, SKIPPED = (
    "succeeded", "failed", "cancelled", "released", "lost", "skipped")

_sessions_by_url: dict[str, sessionmaker[Session]] = {}
_sessions_lock = threading.Lock()


def sessions_for(database_url: str) -> sessionmaker[Session]:
    """One engine per database URL per process (Celery runs many tasks in one process)."""
    with _sessions_lock:
        if database_url not in _sessions_by_url:
            from api.db.session import make_engine, session_factory

            _sessions_by_url[database_url] = session_factory(make_engine(database_url))
        return _sessions_by_url[database_url]


def is_connection_error(exc: BaseException) -> bool:
    """The database could not be reached (or dropped the connection) -- as opposed to a statement
    it refused (an IntegrityError, a DataError, ...) or an error of our own. Only the former is
    worth waiting out: the job keeps its lease and the reconciler requeues it if it expires."""
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
    return False


# -- claim -------------------------------------------------------------------------------------------
def source_settled() -> Any:
    """SQL condition on ``Job``: not an evaluation whose source pretraining is still active
    (queued/running/cancelling). Such a job waits in the queue: claiming it would only fail it for
    want of weights the source has not written yet."""
    src = aliased(Job)
    return ~exists(select(literal(1)).select_from(src)
                   .where(src.id == Job.source_job_id, src.status.in_(ACTIVE_STATUSES)))


def waiting_on(sessions: sessionmaker[Session], job_id: int) -> tuple[int, str] | None:
    """(source id, source status) when job ``job_id`` is queued behind an active source, else None."""
    src = aliased(Job)
    with sessions() as s:
        row = s.execute(select(src.id, src.status).join(Job, Job.source_job_id == src.id)
                        .where(Job.id == job_id, Job.status == "queued", src.status.in_(ACTIVE_STATUSES))).first()
    return (row[0], row[1]) if row else None


def dependents_waiting(sessions: sessionmaker[Session], source_job_id: int) -> list[int]:
    """Queued evaluations of ``source_job_id`` (to dispatch once it has finished)."""
    with sessions() as s:
        return list(s.scalars(select(Job.id).where(Job.source_job_id == source_job_id, Job.status == "queued")
                              .order_by(Job.priority.desc(), Job.id)))


def claim(sessions: sessionmaker[Session], job_id: int, worker_id: str, lease_seconds: float,
          job_dir: Path | None = None) -> JobLease | None:
    """Atomically take a queued job (None if it is not claimable: running, finished, cancelled, gone)."""
    from api import crud

    now = utcnow()
    with sessions() as s, s.begin():
        fields: dict[str, Any] = dict(
            owner=worker_id, attempt=Job.attempt + 1, lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now, started_at=func.coalesce(Job.started_at, now), cancel_requested=False,
        )
        if job_dir is not None:
            fields["artifact_dir"] = str(job_dir)
        if not crud.transition(s, job_id, ["queued"], "running", actor=worker_id, reason="claimed",
                               where=source_settled(), **fields):
            return None
        attempt = s.execute(select(Job.attempt).where(Job.id == job_id)).scalar_one()
        # Unique (job_id, attempt): if this ever collided, the whole claim rolls back.
        s.add(JobRun(job_id=job_id, attempt=attempt, worker=worker_id, started_at=now))
    return JobLease(sessions, job_id, worker_id, attempt, lease_seconds)


def _end_run(s: Session, lease: JobLease, outcome: str) -> None:
    s.execute(
        update(JobRun)
        .where(JobRun.job_id == lease.job_id, JobRun.attempt == lease.attempt, JobRun.ended_at.is_(None))
        .values(ended_at=utcnow(), outcome=outcome)
        .execution_options(synchronize_session=False)
    )


# -- the job ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    completed: bool
    result: dict[str, Any] | None = None


def _source_weights(sessions: sessionmaker[Session], source_job_id: int) -> Path:
    """The registered backbone of a pretraining job (an evaluate job's ``source_job_id``)."""
    from ssl_core.errors import PermanentError

    with sessions() as s:
        src = s.get(Job, source_job_id)
        if src is None:
            raise PermanentError(f"source_job_id: job {source_job_id} does not exist")
        art = s.execute(
            select(Artifact).where(Artifact.job_id == source_job_id, Artifact.kind == "backbone")
            .order_by(Artifact.id.desc())
        ).scalars().first()
        if art is None or not src.artifact_dir:
            raise PermanentError(
                f"source_job_id: job {source_job_id} ({src.status}) has no backbone weights"
                + (" yet" if src.status in ("queued", "running", "cancelling") else ""))
        path = Path(src.artifact_dir) / art.name
    if not path.is_file():
        raise PermanentError(f"source_job_id: the backbone file of job {source_job_id} is missing ({art.name})")
    return path


def _execute(sessions: sessionmaker[Session], job_id: int, spec_dict: dict[str, Any], job_dir: Path,
             sink: SqlSink) -> Outcome:
    """Validate the spec and run ssl_core (torch is imported here, never at module load)."""
    from ssl_core.specs import parse_job_spec

    spec = parse_job_spec(spec_dict)
    if spec.kind == "pretrain":
        from ssl_core.train import pretrain

        res = pretrain(spec, job_dir, sink=sink, should_stop=sink.should_stop, resume=True)
    else:
        from ssl_core.evaluate import evaluate

        weights = _source_weights(sessions, spec.source_job_id) if spec.source_job_id is not None else None
        res = evaluate(spec, job_dir, sink=sink, should_stop=sink.should_stop, weights_path=weights)
    return Outcome(True, res.to_dict()) if res.completed else Outcome(False)


def error_message(exc: BaseException) -> str:
    """What a user reads in ``job.error``: the message, not a traceback."""
    from pydantic import ValidationError

    from ssl_core.errors import PermanentError

    if isinstance(exc, ValidationError):
        def where(loc: tuple) -> str:
            if loc and loc[0] in ("pretrain", "evaluate"):  # the union's tag, not a field
                loc = loc[1:]
            return ".".join(str(p) for p in loc) or "spec"

        parts = [f"{where(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        msg = "invalid spec: " + "; ".join(parts)
    elif isinstance(exc, PermanentError):
        msg = str(exc) or type(exc).__name__
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return msg[:MAX_ERROR_CHARS]


# -- finishing ---------------------------------------------------------------------------------------------
def eval_followups(job: Job) -> list[dict[str, Any]]:
    """The evaluate specs a succeeded pretraining asked for (``spec.eval.after``)."""
    from ssl_core.specs import EvalDataSpec, parse_job_spec

    spec = parse_job_spec(job.spec)
    if spec.kind != "pretrain" or not spec.eval.after:
        return []
    data = spec.eval.data or EvalDataSpec(
        dataset=spec.data.dataset, path=spec.data.path, image_size=spec.data.image_size)
    return [
        {"kind": "evaluate", "source_job_id": job.id, "protocol": p.model_dump(mode="json"),
         "data": data.model_dump(mode="json", exclude_none=True), "seed": spec.seed, "device": spec.device,
         "precision": spec.precision}
        for p in spec.eval.after
    ]


def _finish(lease: JobLease, status_from: list[str], status_to: str, outcome: str, *,
            reason: str | None = None, on_commit: Callable[[Session], list[int]] | None = None,
            **fields: Any) -> list[int]:
    """One guarded transaction: the status change, the JobRun outcome, and any follow-up jobs."""
    from api import crud

    created: list[int] = []
    with lease.guarded() as s:
        if not crud.transition(s, lease.job_id, status_from, status_to, actor=lease.owner, reason=reason,
                               **fields):
            raise LeaseLost(f"job {lease.job_id}: not in {status_from} any more")
        _end_run(s, lease, outcome)
        if on_commit is not None:
            created = on_commit(s)
    return created


def run_job(job_id: int, *, worker_id: str, settings: Any, session_factory: sessionmaker[Session] | None = None,
            stop_event: threading.Event | None = None) -> str:
    """Claim, run and finish one job; returns the outcome (succeeded, failed, cancelled, released,
    lost, or skipped when the job could not be claimed)."""
    sessions = session_factory or sessions_for(settings.database_url)
    stop_event = stop_event or threading.Event()
    job_id = int(job_id)
    job_dir = settings.job_dir(job_id)
    lease = claim(sessions, job_id, worker_id, settings.lease_seconds, job_dir)
    if lease is None:
        waiting = waiting_on(sessions, job_id)
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
                   heartbeat_seconds=settings.heartbeat_seconds, stop_event=stop_event).start()
    error: BaseException | None = None
    outcome = Outcome(False)
    try:
        with sessions() as s:
            spec_dict = dict(s.execute(select(Job.spec).where(Job.id == job_id)).scalar_one())
        job_dir.mkdir(parents=True, exist_ok=True)  # e.g. an unwritable ARTIFACT_ROOT fails the job, clearly
        outcome = _execute(sessions, job_id, spec_dict, job_dir, sink)
    except LeaseLost:
        pass
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


def _fail_finishing(lease: JobLease, exc: BaseException, sessions: sessionmaker[Session], settings: Any) -> str:
    job_id = lease.job_id
    detail = f"{type(exc).__name__}: {exc.orig}" if isinstance(exc, DBAPIError) else error_message(exc)
    msg = f"the job ran but could not be finished: {detail}"[:MAX_ERROR_CHARS]
    log.error("job %s: %s", job_id, msg, exc_info=exc)
    try:
        _finish(lease, ["running", "cancelling"], "failed", FAILED, reason=msg, error=msg,
                owner=None, lease_expires_at=None, finished_at=utcnow())
    except LeaseLost:
        log.warning("job %s: lease lost while failing it; abandoned without writing", job_id)
        return LOST
    except Exception:
        log.exception("job %s: could not record the failure; left to the reconciler", job_id)
        return LOST
    _dispatch_all(sessions, [], settings, dependents_of=job_id)  # evaluations waiting on it now fail, clearly
    return FAILED


def _conclude(lease: JobLease, sink: SqlSink, outcome: Outcome, error: BaseException | None, settings: Any,
              sessions: sessionmaker[Session]) -> str:
    job_id = lease.job_id
    now = utcnow()
    done = dict(owner=None, lease_expires_at=None, finished_at=now)
    if lease.lost:
        raise LeaseLost(f"job {job_id}: lease lost")
    if error is not None:
        msg = error_message(error)
        log.warning("job %s: failed: %s", job_id, msg)
        _finish(lease, ["running", "cancelling"], "failed", FAILED, reason=msg, error=msg, **done)
        _dispatch_all(sessions, [], settings, dependents_of=job_id)  # they fail, clearly
        return FAILED
    if outcome.completed:
        _register_outputs(lease, settings.job_dir(job_id))
        result = outcome.result or {}
        extra: dict[str, Any] = {"result": result}
        if "top1" in result:  # evaluate jobs: the leaderboard reads these columns
            extra.update(top1=result.get("top1"), top5=result.get("top5"))
        created = _finish(lease, ["running", "cancelling"], "succeeded", SUCCEEDED, reason="completed",
                          on_commit=lambda s: _create_followups(s, job_id, settings.max_attempts),
                          **done, **extra)
        _dispatch_all(sessions, created, settings, dependents_of=job_id)
        log.info("job %s: succeeded", job_id)
        return SUCCEEDED
    # stopped early, after a checkpoint
    if sink.stop_reason() == "cancel" or lease.status == "cancelling":
        _finish(lease, ["cancelling", "running"], "cancelled", CANCELLED, reason="cancel requested", **done)
        _dispatch_all(sessions, [], settings, dependents_of=job_id)
        log.info("job %s: cancelled", job_id)
        return CANCELLED
    # shutting down: hand the job back; the attempt stays, the next claim increments it
    _finish(lease, ["running"], "queued", RELEASED, reason="worker shutting down; job handed back",
            owner=None, lease_expires_at=None, dispatched_at=None)
    _dispatch_all(sessions, [job_id], settings)
    log.info("job %s: handed back to the queue (worker shutting down)", job_id)
    return RELEASED


def _register_outputs(lease: JobLease, job_dir: Path) -> None:
    """Make sure the final files are registered even if a sink call was missed (idempotent upserts)."""
    from api import crud

    files = [("backbone.safetensors", "backbone"), ("checkpoints/last.pt", "checkpoint"), ("result.json", "result")]
    present = [(n, k, (job_dir / n).stat().st_size) for n, k in files if (job_dir / n).is_file()]
    if not present:
        return
    with lease.guarded() as s:
        for name, kind, size in present:
            crud.register_artifact(s, lease.job_id, name, kind, size)


def _create_followups(s: Session, job_id: int, max_attempts: int) -> list[int]:
    """Queue the evaluations a pretraining asked for, in the success transaction (so at most once)."""
    from api import crud

    job = s.get(Job, job_id)
    created: list[int] = []
    for i, spec in enumerate(eval_followups(job)):
        child = crud.create_job(
            s, spec, name=f"{job.name or f'job {job_id}'} / {spec['protocol']['protocol']}",
            tags=list(job.tags or []), priority=job.priority, parent_job_id=job_id,
            idempotency_key=f"pretextlab:eval-after:{job_id}:{i}", max_attempts=max_attempts,
            actor="worker",
        )
        created.append(child.id)
    return created


def _dispatch_all(sessions: sessionmaker[Session], job_ids: list[int], settings: Any,
                  dependents_of: int | None = None) -> None:
    """Tell the broker (best effort: the reconciler re-dispatches anything this misses).
    ``dependents_of``: also the evaluations that were waiting for that (now finished) job."""
    from worker.reconciler import send_and_mark

    if settings.broker_url is None:  # embedded: the local workers poll SQL
        return
    try:
        if dependents_of is not None:
            job_ids = [*job_ids, *dependents_waiting(sessions, dependents_of)]
        job_ids = list(dict.fromkeys(job_ids))
        send_and_mark(sessions, job_ids, settings)
    except Exception:
        log.exception("jobs %s: dispatch failed; the reconciler will re-dispatch them", job_ids)
