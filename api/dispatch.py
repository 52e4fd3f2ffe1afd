"""Tell the workers a job is ready: a Celery message carrying only the job id.

The broker is a hint, SQL is the truth. In embedded mode (no broker) this does nothing: the local
worker polls SQL. With a broker, a publish error is logged and swallowed: the job stays
``queued`` and the reconciler dispatches it again after REDISPATCH_AFTER_SECONDS.

The API uses a light Celery client (a producer only, no task modules imported), so it never
loads the worker code or torch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from api.settings import Settings, get_settings

log = logging.getLogger("pretextlab.dispatch")

TASK_NAME = "pretextlab.run_job"
_clients: dict[str, Any] = {}
_lock = threading.Lock()


def celery_client(broker_url: str, settings: Settings | None = None) -> Any:
    """One producer-only Celery app per broker URL, with short timeouts so a dead broker fails fast."""
    with _lock:
        client = _clients.get(broker_url)
        if client is None:
            # Imported here: an API without a broker (embedded mode) never loads Celery.
            from celery import Celery

            s = settings or get_settings()
            client = Celery("pretextlab-api", broker=broker_url, set_as_current=False)
            client.conf.update(
                broker_connection_timeout=2,
                broker_connection_retry=False,
                broker_transport_options={
                    "visibility_timeout": s.visibility_timeout,
                    "socket_connect_timeout": 2,
                    "socket_timeout": 5,
                },
                task_serializer="json",
                accept_content=["json"],
            )
            _clients[broker_url] = client
        return client


def dispatch(job: Any, settings: Settings | None = None, *, queue: str | None = None) -> bool:
    """Publish "run job N" to the job's queue. ``job`` is a Job row or an id (then give ``queue``).

    Returns True when a message was published, False in embedded mode or when the broker failed
    (logged; the reconciler will retry). Never raises for broker trouble. The caller records
    ``dispatched_at`` (``api.db.jobs.mark_dispatched``) when this returns True.
    """
    settings = settings or get_settings()
    if settings.broker_url is None:
        return False
    job_id = int(getattr(job, "id", job))
    queue = queue or getattr(job, "queue", None) or "gpu"
    try:
        celery_client(settings.broker_url, settings).send_task(
            TASK_NAME, args=[job_id], queue=queue, retry=False, ignore_result=True
        )
        return True
    except Exception as exc:  # noqa: BLE001 - any broker trouble: leave the job queued
        log.warning("dispatch of job %s to queue %s failed (%s); the reconciler will retry",
                    job_id, queue, type(exc).__name__)
        return False


def broker_reachable(settings: Settings, timeout: float = 2.0) -> bool:
    """For /readyz: can we open a connection to the broker?"""
    if settings.broker_url is None:
        return True
    try:
        with celery_client(settings.broker_url, settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001
        return False


def reset_clients() -> None:
    """Forget cached clients (tests that restart brokers)."""
    with _lock:
        for c in _clients.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        _clients.clear()
