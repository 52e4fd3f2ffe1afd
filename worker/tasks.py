"""Celery tasks: ``pretextlab.run_job`` (claim + run one job) and ``pretextlab.reconcile``.

Both are thin: the logic lives in :mod:`worker.runner` and :mod:`worker.reconciler`, shared with
the embedded local worker. torch is imported by the runner inside the task, never here.
"""

from __future__ import annotations

import logging
import threading

from api.db.redispatch import forget_dispatch
from api.db.session import sessions_for
from api.settings import Settings
from worker import idle_poll  # noqa: F401 - starts the idle poll with the worker
from worker.celery_app import SHUTDOWN, app, worker_id
from worker.reconciler import reconcile_once
from worker.runner import run_job

log = logging.getLogger("pretextlab.worker")


def _settings() -> Settings:
    return app.conf.pretextlab_settings


@app.task(name="pretextlab.run_job", bind=True, acks_late=True, ignore_result=True)
def run_job_task(self, job_id: int) -> str:
    """Run job ``job_id`` if it can be claimed; a duplicate or late message is dropped by the claim."""
    if SHUTDOWN.is_set():
        # A message reaching a worker that is already shutting down is acknowledged unused; the job
        # is still queued in SQL, marked as having no message, so another worker's idle poll (or the
        # reconciler's next pass) sends it again. One log line, not a Reject traceback -- and not a
        # re-send from here, which this very worker could take again until its consumer stops.
        with sessions_for(_settings().database_url)() as s, s.begin():
            forget_dispatch(s, int(job_id))
        log.info("job %s: worker shutting down: message left for another worker", job_id)
        return "skipped"
    node = f"{self.request.hostname or 'celery'}:{threading.get_ident()}"
    return run_job(int(job_id), worker_id=worker_id(node), settings=_settings(), stop_event=SHUTDOWN)


@app.task(name="pretextlab.reconcile", ignore_result=True)
def reconcile_task() -> dict:
    settings = _settings()
    report = reconcile_once(sessions_for(settings.database_url), settings)
    return {k: v for k, v in report.items() if k.startswith("n_")}  # counts only: this is logged every beat
