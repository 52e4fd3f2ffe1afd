"""The Celery app ``pretextlab``: Redis broker, settings for long GPU jobs, the reconciler beat.

    celery -A worker.celery_app worker -Q gpu,cpu -c 1 -P threads      # what `pretextlab worker` runs
    celery -A worker.celery_app beat                                    # or `pretextlab worker --beat`

The broker only carries "job N is ready"; SQL decides whether it runs (see ``worker.runner``).

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged when the task
  returns, so a worker killed mid-job leaves it unacknowledged and Redis redelivers it after the
  visibility timeout. Long before that the reconciler notices the expired lease and requeues the
  job; the late redelivery then finds it running or finished and is dropped.
* ``worker_prefetch_multiplier=1`` and concurrency = the worker's slots (its GPUs, or CPU slots):
  a worker reserves at most one message per slot. It registers in SQL (``workers``) when ready,
  heartbeats, and deregisters on shutdown (:class:`worker.slots.WorkerPresence`); a task takes
  the devices its job needs from the worker's :class:`worker.slots.SlotPool`, and a job that does
  not fit the free ones now stays queued in SQL, its message dropped and re-sent by the reconciler.
* Pool ``threads``: the task runs in the worker process itself, so the SIGTERM that starts
  Celery's warm shutdown reaches it (``worker_shutting_down`` sets :data:`SHUTDOWN`); the job then
  checkpoints at its next step boundary, is handed back to the queue (re-dispatched at once), and
  the task returns -- which is what the warm shutdown waits for. Celery's own signal handlers are
  untouched.
* A worker in warm shutdown takes no other message (:class:`ShutdownGate`). Celery's consumer loop
  only notices the shutdown when its poll next wakes (up to a second later), and a free slot has a
  Redis BRPOP pending all along: a job submitted or handed back in that gap -- often the running
  job's own hand-back -- used to be received and started there, then dropped. Now, from the
  signal on, the channel asks for no message, and one that still arrives is rejected with requeue
  (back in its Redis list at once, for the next worker) before any task starts.
* The visibility timeout (VISIBILITY_TIMEOUT) may be shorter than a job: a redelivery of a message
  whose job is running under a live lease is dropped by the claim.
* Beat runs ``pretextlab.reconcile`` every RECONCILE_SECONDS; the message expires after one period
  so beats never pile up behind long jobs on busy workers. ``pretextlab serve`` runs the same
  reconciler in a thread, so a deployment with the API process needs no beat at all.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from typing import Any

from celery import Celery, bootsteps, signals
from kombu import Queue

from api.db.session import sessions_for
from api.redact import install_log_redaction
from ssl_core.lifeline import die_with_parent
from api.settings import Settings, get_settings
from worker.slots import SlotPool, Slots, WorkerPresence, resolve_slots

QUEUES = ("gpu", "cpu")
CONTROL_QUEUE = "control"  # the reconcile beat; every worker listens to it as well

# Set when this worker process starts its warm shutdown (SIGTERM / SIGINT): running jobs hand back.
SHUTDOWN = threading.Event()
# This worker process's devices: "slots" (set by run_worker), then "name", "pool", "presence" once ready.
FLEET: dict[str, Any] = {}
log = logging.getLogger("pretextlab.worker")


def transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport: the visibility timeout, and how often unacked messages older than it are
    put back (kombu's default sweep is ~100 s; here a quarter of the timeout, 1 s to 60 s)."""
    vt = int(settings.visibility_timeout)
    return {"visibility_timeout": vt, "unacked_restore_interval": max(1, min(60, vt // 4)),
            "unacked_restore_throttle": 1}


def make_app(settings: Settings | None = None) -> Celery:
    """The Celery app, configured from :class:`api.settings.Settings` (read from the environment if None)."""
    settings = settings or get_settings()
    install_log_redaction()  # the worker logs connection errors that quote URLs
    broker = settings.broker_url or "redis://127.0.0.1:6379/0"
    app = Celery("pretextlab", broker=broker, include=["worker.tasks"])
    app.conf.update(
        task_ignore_result=True,  # results live in SQL; no result backend
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,  # a task that raised is done: the reconciler covers the job
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="threads",
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # No remote control: whoever reaches Redis could otherwise shut every worker down or
        # change its queues (`celery control shutdown`). Nothing here uses it (gossip and mingle
        # are off too); workers are managed by their process supervisor.
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        task_queues=[Queue(q) for q in (*QUEUES, CONTROL_QUEUE)],
        task_default_queue="gpu",
        task_routes={"pretextlab.reconcile": {"queue": CONTROL_QUEUE}, "pretextlab.prune": {"queue": CONTROL_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        beat_schedule={
            "reconcile": {
                "task": "pretextlab.reconcile",
                "schedule": float(settings.reconcile_seconds),
                "options": {"queue": CONTROL_QUEUE, "expires": float(settings.reconcile_seconds)},
            },
            "prune": {  # retention and deleted jobs' folders (api.db.retention.prune)
                "task": "pretextlab.prune",
                "schedule": float(settings.prune_seconds),
                "options": {"queue": CONTROL_QUEUE, "expires": float(settings.prune_seconds)},
            },
        },
        timezone="UTC",
    )
    app.conf.pretextlab_settings = settings
    return app


class ShutdownGate(bootsteps.StartStopStep):
    """Consumer step: once :data:`SHUTDOWN` is set, ask the broker for nothing more and put back,
    unstarted, any message that still arrives. It runs after Celery's task consumer step on every
    (re)start of the consumer, so a reconnect keeps it."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        qos = c.task_consumer.channel.qos
        can_consume = qos.can_consume  # Celery's own (prefetch and slot limits), wrapped

        def gated_can_consume() -> bool:
            return not SHUTDOWN.is_set() and can_consume()

        qos.can_consume = gated_can_consume  # kombu's Redis poller issues no BRPOP without it
        for name, strategy in list(c.strategies.items()):
            c.strategies[name] = _gate(strategy, c.connection_errors)

    def stop(self, c: Any) -> None:
        # Runs when the warm shutdown stops the consumer, before the pool waits for running jobs. A
        # free slot's BRPOP sent before the signal may hold a message Redis has already popped;
        # kombu would read it only when it closes the channel, after those jobs end (a killed
        # worker would lose it). Read it now (within the 1 s BRPOP timeout): the gated handler
        # puts it back at once.
        channel = getattr(c.task_consumer, "channel", None)
        if channel is None or not getattr(channel, "_in_poll", None):  # not Redis, or nothing in flight
            return
        try:
            channel._brpop_read()
        except Exception as exc:  # noqa: BLE001 - Empty, or the broker gone: kombu's close restores
            log.debug("warm shutdown: no message in flight (%s)", type(exc).__name__)


def _gate(strategy: Any, errors: tuple) -> Any:
    """A message handler that, during warm shutdown, requeues instead of handing to ``strategy``."""

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        if not SHUTDOWN.is_set():
            return strategy(message, body, ack, reject, callbacks, **kwargs)
        # Before the Request exists: nothing is reserved or run, and the message goes back to its
        # Redis list now, not after the visibility timeout -- and is not acknowledged unused.
        message.reject_log_error(log, errors, requeue=True)
        headers = message.headers or {}
        log.info("worker shutting down: %s%s put back in the queue for another worker",
                 headers.get("task", "a message"), headers.get("argsrepr", ""))
        return None

    return handle


app = make_app()
app.steps["consumer"].add(ShutdownGate)


@signals.worker_process_init.connect
def _die_with_the_worker(**_: Any) -> None:
    # A pool process runs the job, and a multi-GPU job's rank processes are its children: if the
    # main worker process is killed (kill -9), the pool process must not run on (its ranks die with
    # it in turn), or a requeued job could run twice.
    die_with_parent(os.getppid())


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    # Called by Celery's own SIGTERM/SIGINT handler in the main process: flag the running job and
    # return; Celery then carries on with its warm shutdown (waits for the task, acks, exits).
    SHUTDOWN.set()


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    """Own the devices and register in SQL (also for a worker started with the `celery` command)."""
    settings = app.conf.pretextlab_settings
    slots: Slots = FLEET.get("slots") or resolve_slots(
        settings.worker_gpus or None,
        default_slots=int(getattr(getattr(sender, "controller", None), "concurrency", 1) or 1))
    name = worker_id(getattr(sender, "hostname", None))
    queues = [q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", []) or []
              if q.name != CONTROL_QUEUE] or list(QUEUES)
    presence = WorkerPresence(sessions_for(settings.database_url), name, slots, queues, settings.heartbeat_seconds)
    FLEET.update(name=name, pool=SlotPool(slots), presence=presence.start())


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    presence = FLEET.pop("presence", None)
    if presence is not None:
        presence.stop()


def worker_id(hostname: str | None = None) -> str:
    """Owner string for leases: node name + pid, unique even when a restarted node reuses its name."""
    return f"{hostname or socket.gethostname()}:{os.getpid()}"


def run_worker(queues: list[str] | tuple[str, ...] | str = QUEUES, concurrency: int = 1,
               hostname: str | None = None, beat: bool = False, loglevel: str | None = None,
               slots: Slots | None = None) -> None:
    """Start a Celery worker in this process (blocks until it shuts down).

    ``queues``: the job queues to consume (the control queue is always added); ``slots``: the
    devices it owns (default: WORKER_GPUS, else every visible GPU, else ``concurrency`` CPU
    slots), one task thread per slot; ``beat=True`` embeds the reconciler beat (``-B``) with its schedule
    file in a private temp folder -- run it on one worker per deployment (or use ``run_beat``);
    extra beats are harmless, only wasteful.
    """
    if isinstance(queues, str):
        queues = [q.strip() for q in queues.split(",") if q.strip()]
    qs = list(dict.fromkeys([*queues, CONTROL_QUEUE]))
    settings = app.conf.pretextlab_settings
    slots = slots or resolve_slots(settings.worker_gpus or None, default_slots=concurrency)
    FLEET["slots"] = slots
    argv = ["worker", "-Q", ",".join(qs), "-c", str(len(slots.ids)), "-P", "threads",
            "--loglevel", loglevel or settings.log_level, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["-n", hostname]
    if beat:
        argv += ["-B", "-s", os.path.join(tempfile.mkdtemp(prefix="pretextlab-beat-"), "schedule")]
    app.worker_main(argv)


def run_beat(loglevel: str | None = None) -> None:
    """Run the reconciler beat alone (``celery -A worker.celery_app beat``)."""
    settings = app.conf.pretextlab_settings
    app.start(["beat", "--loglevel", loglevel or settings.log_level,
               "-s", os.path.join(tempfile.mkdtemp(prefix="pretextlab-beat-"), "schedule")])


if __name__ == "__main__":  # python -m worker.celery_app [queues] [hostname]
    import sys

    # Use the importable module's app (the one worker.tasks registers on), not this __main__ copy.
    from worker.celery_app import run_worker as _run_worker

    _run_worker(sys.argv[1] if len(sys.argv) > 1 else ",".join(QUEUES),
               hostname=sys.argv[2] if len(sys.argv) > 2 else None)
