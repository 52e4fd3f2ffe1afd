"""The SQL-backed Sink: what ssl_core's training and evaluation loops report, written to the job store.

Every write goes through the job's lease (:class:`api.db.leases.JobLease`), so a worker that lost
its job writes nothing more for it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

from api.db.artifacts import UnsafePath, check_artifact_name, register_artifact
from api.db.leases import JobLease, LeaseLost
from api.db.metrics import write_metrics as store_metrics
from ssl_core.storage import StoreUnavailable

log = logging.getLogger("pretextlab.worker")


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
    ``start()`` has run, the training loop never waits for the database (a commit is an fsync,
    tens of ms on a busy disk, and the loop calls ``flush`` and ``artifact`` at every epoch end).
    A background thread writes the buffers every ``flush_seconds`` (or when woken) and renews the
    lease at least every ``heartbeat_seconds``; ``close()`` writes what is left, synchronously.
    Without a started thread every call writes at once. Metrics are upserted on (job, name, step),
    so a resumed run that logs a step again overwrites it instead of duplicating it.

    ``step_delay`` (``Settings.test_step_delay``, 0 in every deployment) sleeps at each step
    boundary, to widen timing windows in the fault-injection tests (kill -9 mid-job, SIGTERM).
    """

    def __init__(self, lease: JobLease, job_dir: Path, *, flush_seconds: float, heartbeat_seconds: float,
                 stop_event: threading.Event | None = None, write_metrics: Callable[..., Any] | None = None,
                 step_delay: float = 0.0, publish: Callable[[str, Path, str], None] | None = None):
        self.lease = lease
        self._publish = publish  # stores a file in the artifact store before it is registered
        self.store_error: str | None = None  # set when the store stayed unreachable: the run stops
        self.job_dir = Path(job_dir)
        self.flush_seconds = float(flush_seconds)
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.stop_event = stop_event or threading.Event()
        self._write_metrics = write_metrics or store_metrics
        self._lock = threading.Lock()  # guards the buffers
        self._io_lock = threading.Lock()  # one database write at a time, in order
        self._rows: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._reported = False  # progress sent once already (the first one is written at once)
        self._artifacts: list[tuple[str, str, int]] = []  # (name relative to the job folder, kind, size)
        self._closed = threading.Event()
        self._wake = threading.Event()  # flush()/artifact()/close() ask the writer to write now
        self._last_beat = time.monotonic()
        self._step_delay = float(step_delay)
        # max_runtime: set by the runner once the spec is read (worker.limits); monotonic seconds
        self.runtime_limit_s: int | None = None
        self.deadline: float | None = None
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
             "images_per_sec": _finite(images_per_sec), "eta_s": _finite(eta_s) if eta_s is not None else None,
             "attempt": self.lease.attempt}
        with self._lock:
            first, self._progress = not self._reported, p
            self._reported = True
        if first:  # a resumed attempt shows where it resumed at once, not a flush period later
            self._write_soon()

    def artifact(self, name: str, path: Path, kind: str) -> None:
        """Register a file the loop wrote (name relative to the job folder) with the next write."""
        path = Path(path)
        try:
            rel = path.resolve().relative_to(self.job_dir.resolve()).as_posix()
        except ValueError:
            rel = Path(name).as_posix()
        size = path.stat().st_size if path.exists() else 0
        try:  # checked now: a bad name in the buffer would fail every later write with it
            rel = check_artifact_name(rel)
        except UnsafePath as exc:
            log.warning("job %s: artifact %r not registered: %s", self.lease.job_id, rel, exc)
            return
        if self._publish is not None:
            if self.store_error is not None:
                return  # the store is down: the file stays local, the job goes back to the queue
            try:
                self._publish(rel, path, kind)
            except StoreUnavailable as exc:
                self.store_unavailable(exc)
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
    def store_unavailable(self, exc: BaseException) -> None:
        """The artifact store stayed unreachable: stop at the next step boundary (files stay local)."""
        log.error("job %s: artifact store unreachable; stopping to hand the job back: %s", self.lease.job_id, exc)
        self.store_error = str(exc)

    def stop_reason(self) -> str | None:
        """'lost' | 'cancel' | 'store' | 'max_runtime' | 'shutdown' | None, in that order of precedence."""
        if self.lease.lost:
            return "lost"
        if self.lease.cancel_requested:
            return "cancel"
        if self.store_error is not None:
            return "store"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "max_runtime"
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
                    if rows:  # several points of one (name, step): the write keeps the last
                        self._write_metrics(s, self.lease.job_id, rows)
                    for rel, kind, size in artifacts:
                        register_artifact(s, self.lease.job_id, rel, kind, size)
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

