"""The embedded local worker: polls SQL for the next queued job and runs it with the same
claim-and-run code as Celery (``worker.runner.run_job``). No broker: SQL is the queue."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from api.db.jobs import next_queued
from api.db.session import sessions_for
from api.settings import Settings
from worker.runner import SKIPPED, run_job

log = logging.getLogger("pretextlab.worker")

MIN_IDLE_S, MAX_IDLE_S = 0.2, 2.0


class LocalWorker(threading.Thread):
    """Poll-claim-run until ``stop_event`` is set; a running job is handed back to the queue then."""

    def __init__(self, settings: Settings, worker_id: str, stop_event: threading.Event,
                 session_factory: sessionmaker[Session] | None = None, queues: list[str] | None = None):
        super().__init__(name=f"local-worker-{worker_id}", daemon=True)
        self.settings = settings
        self.worker_id = worker_id
        self.stop_event = stop_event
        self.sessions = session_factory or sessions_for(settings.database_url)
        self.queues = queues or settings.queues()
        self.jobs_run = 0

    def run_once(self) -> str | None:
        """Claim and run one job; None when the queue is empty."""
        with self.sessions() as s:
            job_id = next_queued(s, self.queues)
        if job_id is None:
            return None
        outcome = run_job(job_id, worker_id=self.worker_id, settings=self.settings,
                          session_factory=self.sessions, stop_event=self.stop_event)
        if outcome != SKIPPED:
            self.jobs_run += 1
        return outcome

    def run(self) -> None:
        idle = MIN_IDLE_S
        while not self.stop_event.is_set():
            try:
                outcome = self.run_once()
            except Exception:  # database unreachable, ...: keep polling, the reconciler cleans up
                log.exception("local worker %s: poll failed", self.worker_id)
                outcome = None
            if outcome is None:
                self.stop_event.wait(idle)
                idle = min(MAX_IDLE_S, idle * 1.5)  # back off while idle, wake fast when busy
            else:
                idle = MIN_IDLE_S
