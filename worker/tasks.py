"""Celery tasks: ``pretextlab.run_job`` (claim + run one job), ``pretextlab.reconcile`` and
``pretextlab.prune`` (retention; it needs the artifact root writable where the beat's worker runs).

Both are thin: the logic lives in :mod:`worker.runner` and :mod:`worker.reconciler`, shared with
the embedded local worker. torch is imported by the runner inside the task, never here.
"""

from __future__ import annotations

import logging
import threading

from celery.exceptions import Reject

from api.db.retention import prune
from api.db.redispatch import forget_dispatch
from api.db.session import sessions_for
from api.db.workers import gpus_of, undispatch
from api.settings import Settings
from worker import idle_poll  # noqa: F401 - starts the idle poll with the worker
from worker.celery_app import FLEET, SHUTDOWN, app, worker_id
from worker.reconciler import reconcile_once
from worker.runner import SKIPPED, run_job
from worker.slots import Placement

log = logging.getLogger("pretextlab.worker")


def _settings() -> Settings:
    return app.conf.pretextlab_settings


@app.task(name="pretextlab.run_job", bind=True, acks_late=True, ignore_result=True)
def run_job_task(self, job_id: int) -> str:
    """Run job ``job_id`` if it can be claimed; a duplicate or late message is dropped by the claim."""
    if SHUTDOWN.is_set():
        # A message received during warm shutdown is put back before it gets here (ShutdownGate in
        # worker.celery_app); this covers the instant between that check and the pool thread
        # starting. The message is acknowledged unused and the job, still queued in SQL, marked as
        # having none, so another worker's idle poll (or the reconciler) sends it again. One log line:
        # raising Reject from a task would log a traceback.
        with sessions_for(_settings().database_url)() as s, s.begin():
            forget_dispatch(s, int(job_id))
        log.info("job %s: worker shutting down: message left for another worker", job_id)
        return "skipped"
    node = f"{self.request.hostname or 'celery'}:{threading.get_ident()}"
    return _run_placed(int(job_id), worker_id(node), _settings())


def _run_placed(job_id: int, owner: str, settings: Settings) -> str:
    """Run the job on free devices of this worker; if too few are free now, leave it queued in SQL
    (its message dropped, ``dispatched_at`` cleared so the reconciler sends it again)."""
    pool = FLEET.get("pool")
    if pool is None:  # not started as a worker (a task called in-process): no devices to share out
        return run_job(job_id, worker_id=owner, settings=settings, stop_event=SHUTDOWN)
    sessions = sessions_for(settings.database_url)
    with sessions() as s:
        gpus = gpus_of(s, job_id) or 1
    devices = pool.acquire(gpus)
    if devices is None:
        with sessions() as s, s.begin():
            undispatch(s, job_id)
        log.info("job %s: needs %s device(s), %s free here; left queued for the reconciler to re-send",
                 job_id, gpus, pool.free_count())
        return SKIPPED
    try:
        return run_job(job_id, worker_id=owner, settings=settings, stop_event=SHUTDOWN,
                       placement=Placement(FLEET["name"], pool.slots.kind, devices))
    finally:
        pool.release(devices)


@app.task(name="pretextlab.reconcile", ignore_result=True)
def reconcile_task() -> dict:
    settings = _settings()
    report = reconcile_once(sessions_for(settings.database_url), settings)
    return {k: v for k, v in report.items() if k.startswith("n_")}  # counts only: this is logged every beat


@app.task(name="pretextlab.prune", ignore_result=True)
def prune_task() -> dict:
    settings = _settings()
    report = prune(sessions_for(settings.database_url), settings.artifact_root, settings.retention_days,
                   store=settings.artifact_store())
    return {k: len(v) if isinstance(v, list) else v for k, v in report.items()}
