"""An idle Celery worker looks in SQL for work the broker lost, and re-sends its message.

After a broker loss (Redis restarted empty, FLUSHALL) the queued jobs' messages are gone. The
reconciler re-sends them, but with a back-off meant for jobs that merely wait behind busy workers
(first re-send after REDISPATCH_AFTER_SECONDS, 60 s by default). A worker with a free slot knows
more: any claimable job of its queues queued for IDLE_REDISPATCH_SECONDS without a message sent
is not waiting behind anyone, its message is lost. So every couple of seconds, while this
process has no task running or reserved, it asks SQL for such jobs and sends their messages again
(marking ``dispatched_at``, so other idle workers wait another grace period). Requeue-to-claim
after a broker loss is then about IDLE_REDISPATCH_SECONDS plus a poll, not minutes.

A duplicate message is harmless (the claim drops it). The thread starts with the worker
(``worker_ready``) and stops at its shutdown.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any, Sequence

from celery import signals
from celery.worker import state as worker_state

from api.db.clock import utcnow
from api.db.redispatch import lost_messages
from api.db.session import sessions_for
from api.settings import Settings
from worker.celery_app import CONTROL_QUEUE, SHUTDOWN, app
from worker.reconciler import send_and_mark

log = logging.getLogger("pretextlab.worker")


def busy() -> bool:
    """This worker process runs or holds a task message (a free slot is what makes the poll right)."""
    return bool(len(worker_state.active_requests) or len(worker_state.reserved_requests))


def poll_once(sessions: Any, settings: Settings, queues: Sequence[str], limit: int = 1) -> list[int]:
    """Re-send the messages of up to ``limit`` claimable jobs whose message looks lost; their ids."""
    grace = timedelta(seconds=settings.idle_redispatch_seconds)
    with sessions() as s:
        ids = lost_messages(s, queues, utcnow() - grace, limit)
    sent = send_and_mark(sessions, ids, settings) if ids else []
    if sent:
        log.info("idle worker: jobs %s were queued with no message for %.0f s (broker lost them?): re-sent",
                 sent, settings.idle_redispatch_seconds)
    return sent


def poll_loop(settings: Settings, queues: Sequence[str], stop: threading.Event) -> None:
    sessions = sessions_for(settings.database_url)
    period = max(0.5, min(2.0, settings.idle_redispatch_seconds / 2))
    while not stop.wait(period):
        if busy():
            continue
        try:
            poll_once(sessions, settings, queues)
        except Exception as exc:  # noqa: BLE001 - database or broker down: the next poll retries
            log.warning("idle worker poll failed (%s); retrying", type(exc).__name__)


def consumed_queues(consumer: Any, settings: Settings) -> list[str]:
    """The job queues this worker consumes (its -Q list, less the control queue)."""
    try:
        names = [q.name for q in consumer.task_consumer.queues]
    except Exception:  # noqa: BLE001 - a consumer without task queues yet: the configured ones
        names = settings.queues()
    return [n for n in names if n != CONTROL_QUEUE]


@signals.worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    settings: Settings = app.conf.pretextlab_settings
    if settings.idle_redispatch_seconds <= 0 or settings.broker_url is None:
        return
    queues = consumed_queues(sender, settings)
    threading.Thread(target=poll_loop, args=(settings, queues, SHUTDOWN), name="idle-poll", daemon=True).start()
    log.info("idle poll on queues %s: a job queued %.0f s with no message is re-sent", queues,
             settings.idle_redispatch_seconds)
