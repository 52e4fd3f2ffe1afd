"""The worker's side of a job: its lease (ownership fenced in SQL) and the SQL-backed Sink.

A claimed job is owned by one ``(owner, attempt)`` pair. Every write the worker makes for the
job -- metrics, progress, artifacts, the heartbeat, the final status -- runs inside
:meth:`JobLease.guarded`: a transaction that *starts* with a conditional UPDATE of the job row
(``WHERE id AND owner AND attempt AND status IN (running, cancelling)``), which also renews the
lease. If that UPDATE matches no row, the lease is gone (the reconciler requeued the job, or it
was finished elsewhere) and the transaction is rolled back: a worker that lost its job writes
nothing for it. The UPDATE also takes the row's write lock (PostgreSQL) or the database's write
lock (SQLite), so the reconciler cannot requeue the job between the check and the writes.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.db.models import Job

log = logging.getLogger("pretextlab.worker")

OWNED_STATUSES = ("running", "cancelling")
# Test knob: seconds slept at each step boundary (should_stop), to widen timing windows in the
# multi-process fault tests (kill -9 mid-job, SIGTERM). 0 in every real deployment.
STEP_DELAY_ENV = "PRETEXTLAB_TEST_STEP_DELAY"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LeaseLost(RuntimeError):
    """The job is no longer ours (lease expired and was reclaimed, or the job was finished)."""


class JobLease:
    """One claimed attempt of one job; every write for the job goes through :meth:`guarded`."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, owner: str, attempt: int,
                 lease_seconds: float):
        self.sessions = sessions
        self.job_id = int(job_id)
        self.owner = owner
        self.attempt = int(attempt)
        self.lease_seconds = float(lease_seconds)
        self.lost = False
        self.cancel_requested = False
        self.status = "running"

    def _guard(self, session: Session, **fields: Any) -> None:
        now = utcnow()
        res = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.owner == self.owner, Job.attempt == self.attempt,
                   Job.status.in_(OWNED_STATUSES))
            .values(lease_expires_at=now + timedelta(seconds=self.lease_seconds), heartbeat_at=now, **fields)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            self.lost = True
            raise LeaseLost(f"job {self.job_id}: lease of {self.owner} attempt {self.attempt} is lost")
        # Read the cancel flag in the same transaction: the API sets it (and `cancelling`).
        status, cancel = session.execute(
            select(Job.status, Job.cancel_requested).where(Job.id == self.job_id)
        ).one()
        self.status = status
        self.cancel_requested = bool(cancel) or status == "cancelling"

    @contextmanager
    def guarded(self, **fields: Any) -> Iterator[Session]:
        """A transaction that holds the job (raises LeaseLost, writing nothing, if it is not ours)."""
        if self.lost:
            raise LeaseLost(f"job {self.job_id}: lease already lost")
        with self.sessions() as session, session.begin():
            self._guard(session, **fields)
            yield session

    def heartbeat(self) -> None:
        """Renew the lease and refresh the cancel flag (one conditional UPDATE + one read)."""
        with self.guarded():
            pass


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    # NaN/Inf cannot be stored (SQLite turns NaN into NULL) nor served as JSON: dropped.
    return f if math.isfinite(f) else None


class SqlSink:
    """ssl_core's Sink, backed by SQL: batched metrics, progress, artifacts, heartbeat, stop flag.

    ``metrics``/``progress``/``artifact`` only buffer and ``flush`` only wakes the writer: once
    ``start()`` has run, the training loop never waits for the database (issue 7 §3: a commit is an
    fsync, tens of ms on a busy disk, and the loop calls ``flush`` and ``artifact`` at every epoch
    end). A background thread writes the buffers every ``flush_seconds`` (or when woken) and renews
    the lease at least every ``heartbeat_seconds``; ``close()`` writes what is left, synchronously.
    Without a started thread every call writes at once. Metrics are upserted on (job, name, step),
    so a resumed run that logs a step again overwrites it instead of duplicating it.
    """

    def __init__(self, lease: JobLease, job_dir: Path, *, flush_seconds: float, heartbeat_seconds: float,
                 stop_event: threading.Event | None = None, write_metrics: Callable[..., Any] | None = None):
        self.lease = lease
        self.job_dir = Path(job_dir)
        self.flush_seconds = float(flush_seconds)
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.stop_event = stop_event or threading.Event()
        self._write_metrics = write_metrics or _default_write_metrics()
        self._lock = threading.Lock()  # guards the buffers
        self._io_lock = threading.Lock()  # one database write at a time, in order
        self._rows: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._artifacts: list[tuple[str, str, int]] = []  # (name relative to the job folder, kind, size)
        self._closed = threading.Event()
        self._wake = threading.Event()  # flush()/artifact()/close() ask the writer to write now
        self._last_beat = time.monotonic()
        self._step_delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
        self._thread = threading.Thread(target=self._loop, name=f"sink-job-{lease.job_id}", daemon=True)

    # -- Sink protocol -------------------------------------------------------------------------
    def metrics(self, step: int, values: dict[str, float], epoch: int | None = None) -> None:
        rows = [
            {"name": str(k)[:100], "step": int(step), "value": f, "epoch": epoch}
            for k, v in values.items()
            if (f := _finite(v)) is not None
        ]
        with self._lock:
            self._rows.extend(rows)

    def progress(self, *, epoch: int, step: int, total_steps: int, images_per_sec: float,
                 eta_s: float | None) -> None:
        p = {"epoch": int(epoch), "step": int(step), "total_steps": int(total_steps),
             "images_per_sec": _finite(images_per_sec), "eta_s": _finite(eta_s) if eta_s is not None else None}
        with self._lock:
            self._progress = p

    def artifact(self, name: str, path: Path, kind: str) -> None:
        """Register a file the loop wrote (name relative to the job folder) with the next write."""
        path = Path(path)
        try:
            rel = path.resolve().relative_to(self.job_dir.resolve()).as_posix()
        except ValueError:
            rel = Path(name).as_posix()
        size = path.stat().st_size if path.exists() else 0
        from api.security import UnsafePath, check_artifact_name

        try:  # checked now: a bad name in the buffer would fail every later write with it
            rel = check_artifact_name(rel)
        except UnsafePath as exc:
            log.warning("job %s: artifact %r not registered: %s", self.lease.job_id, rel, exc)
            return
        with self._lock:
            self._artifacts.append((rel, kind, size))
        try:
            self._write_soon()
        except LeaseLost:
            log.warning("job %s: lease lost, artifact %s not registered", self.lease.job_id, rel)

    def should_stop(self) -> bool:
        """True to stop at this step boundary (cancel, shutdown); raises LeaseLost when the job is no
        longer ours, so the loop unwinds without writing even its stop checkpoint."""
        if self._step_delay:
            time.sleep(self._step_delay)
        if self.lease.lost:
            raise LeaseLost(f"job {self.lease.job_id}: lease lost; abandoning")
        return self.stop_reason() is not None

    def flush(self) -> None:
        self._write_soon()

    def _write_soon(self) -> None:
        """Wake the writer thread (never waits); write here only when there is no thread."""
        if self._thread.is_alive() and not self._closed.is_set():
            self._wake.set()
        else:
            self._flush()

    # -- worker side ---------------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        """'lost' | 'cancel' | 'shutdown' | None, in that order of precedence."""
        if self.lease.lost:
            return "lost"
        if self.lease.cancel_requested:
            return "cancel"
        if self.stop_event.is_set():
            return "shutdown"
        return None

    def start(self) -> "SqlSink":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the background thread and write what is buffered (if the job is still ours)."""
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._flush()

    def _loop(self) -> None:
        period = max(0.05, min(self.flush_seconds, self.heartbeat_seconds))
        while True:
            self._wake.wait(period)
            self._wake.clear()
            if self._closed.is_set() or self.lease.lost:
                return
            try:
                self._flush(heartbeat=time.monotonic() - self._last_beat >= self.heartbeat_seconds)
            except LeaseLost:
                log.warning("job %s: lease lost; abandoning it", self.lease.job_id)
                return
            except Exception:  # a database hiccup: retried next tick; the lease absorbs short outages
                log.exception("job %s: writing metrics/heartbeat failed (will retry)", self.lease.job_id)

    def _flush(self, heartbeat: bool = False) -> None:
        with self._io_lock:
            with self._lock:
                rows, self._rows = self._rows, []
                progress, self._progress = self._progress, None
                artifacts, self._artifacts = self._artifacts, []
            if not rows and progress is None and not artifacts and not heartbeat:
                return
            if self.lease.lost:
                return
            fields = {"progress": progress} if progress is not None else {}
            try:
                with self.lease.guarded(**fields) as s:
                    if rows:
                        self._write_metrics(s, self.lease.job_id, _dedupe(rows))
                    if artifacts:
                        from api import crud

                        for rel, kind, size in artifacts:
                            crud.register_artifact(s, self.lease.job_id, rel, kind, size)
                self._last_beat = time.monotonic()
            except LeaseLost:
                raise
            except Exception:
                with self._lock:  # put them back, in order, for the next try
                    self._rows[:0] = rows
                    self._artifacts[:0] = artifacts
                    if self._progress is None:
                        self._progress = progress
                raise


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # One statement cannot upsert the same key twice (PostgreSQL refuses): the last value wins.
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        last[(r["name"], r["step"])] = r
    return list(last.values())


def _default_write_metrics() -> Callable[..., Any]:
    from api import crud

    return crud.write_metrics
