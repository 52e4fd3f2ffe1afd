"""The embedded local worker: polls SQL for queued jobs that fit its free devices and runs them
with the same claim-and-run code as Celery (``worker.runner.run_job``). No broker: SQL is the queue.

It owns a set of GPUs or CPU slots (:mod:`worker.slots`) and runs as many jobs side by side as
fit, each on its own devices in a thread of its own: two 1-GPU jobs on a 2-GPU worker, or one
2-GPU job. A job larger than every live worker waits in the queue; the reconciler writes why
(``jobs.waiting_reason``).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from api.db.session import sessions_for
from api.db.workers import next_fitting
from api.settings import Settings
from worker.runner import SKIPPED, run_job
from worker.slots import CPU, Placement, SlotPool, Slots, WorkerPresence

log = logging.getLogger("pretextlab.worker")

MIN_IDLE_S, MAX_IDLE_S = 0.2, 2.0


class LocalWorker(threading.Thread):
    """Poll-claim-run until ``stop_event`` is set; running jobs are handed back to the queue then."""

    def __init__(self, settings: Settings, worker_id: str, stop_event: threading.Event,
                 session_factory: sessionmaker[Session] | None = None, queues: list[str] | None = None,
                 slots: Slots | None = None):
        super().__init__(name=f"local-worker-{worker_id}", daemon=True)
        self.settings = settings
        self.worker_id = worker_id
        self.stop_event = stop_event
        self.sessions = session_factory or sessions_for(settings.database_url)
        self.queues = queues or settings.queues()
        self.pool = SlotPool(slots or Slots(CPU, (0,)))
        self.jobs_run = 0
        self._lock = threading.Lock()
        self._running: dict[int, threading.Thread] = {}  # job id -> the thread running it
        self._freed = threading.Event()  # a job ended: its devices may fit the next one

    def _take_next(self) -> tuple[int, tuple[int, ...]] | None:
        """The best queued job that fits the free devices, with the devices it gets; None if none."""
        with self._lock:
            starting = list(self._running)
        with self.sessions() as s:
            nxt = next_fitting(s, self.queues, self.pool.free_count(), exclude=starting)
        if nxt is None:
            return None
        job_id, gpus = nxt
        devices = self.pool.acquire(gpus)
        return None if devices is None else (job_id, devices)

    def _run(self, job_id: int, devices: tuple[int, ...]) -> str:
        placement = Placement(self.worker_id, self.pool.slots.kind, devices)
        try:
            outcome = run_job(job_id, worker_id=self.worker_id, settings=self.settings,
                              session_factory=self.sessions, stop_event=self.stop_event, placement=placement)
        finally:
            self.pool.release(devices)
            with self._lock:
                self._running.pop(job_id, None)
            self._freed.set()
        if outcome != SKIPPED:
            self.jobs_run += 1
        return outcome

    def run_once(self) -> str | None:
        """Claim and run one job in this thread; None when nothing queued fits."""
        picked = self._take_next()
        return None if picked is None else self._run(*picked)

    def start_fitting(self) -> int:
        """Start a thread for each queued job that fits the free devices; returns how many started."""
        started = 0
        while not self.stop_event.is_set():
            picked = self._take_next()
            if picked is None:
                break
            job_id, devices = picked
            t = threading.Thread(target=self._run, args=(job_id, devices), daemon=True,
                                 name=f"job-{job_id}@{self.worker_id}")
            with self._lock:
                self._running[job_id] = t
            t.start()
            started += 1
        return started

    def run(self) -> None:
        presence = WorkerPresence(self.sessions, self.worker_id, self.pool.slots, self.queues,
                                  self.settings.heartbeat_seconds).start()
        idle = MIN_IDLE_S
        try:
            while not self.stop_event.is_set():
                try:
                    started = self.start_fitting()
                except Exception:  # database unreachable, ...: keep polling, the reconciler cleans up
                    log.exception("local worker %s: poll failed", self.worker_id)
                    started = 0
                if started:
                    idle = MIN_IDLE_S
                    continue
                if self._freed.wait(idle):  # a job ended: poll again at once
                    self._freed.clear()
                    idle = MIN_IDLE_S
                else:
                    idle = min(MAX_IDLE_S, idle * 1.5)  # back off while idle
        finally:
            with self._lock:
                threads = list(self._running.values())
            for t in threads:  # each checkpoints at its next step and hands its job back
                t.join()
            presence.stop()
