"""``pretextlab serve``: the API, the reconciler and (with no broker) local workers, in one process.

    embedded (no PRETEXTLAB_BROKER_URL): uvicorn + LOCAL_WORKERS local workers polling SQL + reconciler
    with a broker:                        uvicorn + reconciler (Celery workers run jobs elsewhere)

It binds 127.0.0.1 by default and refuses to start without an API token (``pretextlab token
create``, ``PRETEXTLAB_API_TOKENS``) unless ``PRETEXTLAB_AUTH=off`` on a loopback address (what
``make run`` sets): never an unauthenticated API on the network (``Settings.auth_refusal``).

SIGINT/SIGTERM: the API stops accepting requests, each local worker checkpoints its running job at
the next step boundary and hands it back to the queue (``running -> queued``), then the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from typing import Any, Iterator

import uvicorn

from api.db.session import SchemaOutOfDate, check_schema_current, make_engine, session_factory, sessions_for
from api.main import AuthRefused, check_auth, close_streams, create_app
from api.settings import Settings, is_loopback  # noqa: F401 - is_loopback: part of this module's API
from worker.local import LocalWorker
from worker.reconciler import reconcile_loop
from worker.slots import resolve_slots

log = logging.getLogger("pretextlab.serve")
JOIN_TIMEOUT_S = 120.0  # a job checkpoints at its next step boundary; this is only a safety net


class SchemaNotReady(SystemExit):
    pass


class UnsafeBind(SystemExit):
    pass


def check_bind(settings: Settings) -> None:
    """Refuse to serve without sound authentication (see ``Settings.auth_refusal``): no token at
    all, a short or empty one, or PRETEXTLAB_AUTH=off on a non-loopback address."""
    engine = make_engine(settings.database_url)
    try:
        check_auth(settings, session_factory(engine))
    except AuthRefused as exc:
        raise UnsafeBind(f"{exc} (serving on {settings.host}:{settings.port})") from None
    finally:
        engine.dispose()


def check_schema(settings: Settings) -> None:
    """Refuse to start on an out-of-date schema, saying what to run."""
    engine = make_engine(settings.database_url)
    try:
        check_schema_current(engine)
    except SchemaOutOfDate as exc:
        raise SchemaNotReady(f"pretextlab: {exc}") from None
    finally:
        engine.dispose()


def start_background(settings: Settings, stop_event: threading.Event) -> list[threading.Thread]:
    """Local workers (embedded mode only) and the reconciler loop, as daemon threads."""
    sessions = sessions_for(settings.database_url)
    threads: list[threading.Thread] = []
    if settings.broker_url is None and settings.local_workers > 0:
        # One worker owning WORKER_GPUS (or LOCAL_WORKERS CPU slots): it runs that many jobs at once.
        slots = resolve_slots(settings.worker_gpus or None, default_slots=settings.local_workers, detect=False)
        name = f"local@{socket.gethostname()}:{os.getpid()}"
        threads.append(LocalWorker(settings, name, stop_event, session_factory=sessions, slots=slots))
    threads.append(threading.Thread(target=reconcile_loop, args=(sessions, settings, stop_event),
                                    name="reconciler", daemon=True))
    for t in threads:
        t.start()
    log.info("started %d local worker(s) and the reconciler", len(threads) - 1)
    return threads


@contextlib.contextmanager
def _no_capture() -> Iterator[None]:
    yield


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then hand running jobs back and exit."""
    logging.basicConfig(level=getattr(logging, str(settings.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_schema(settings)
    check_bind(settings)
    stop_event = threading.Event()
    config = uvicorn.Config(create_app(settings), host=settings.host, port=int(settings.port),
                            log_level=str(settings.log_level).lower(), lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn would re-raise the captured signal after its shutdown, killing the process before the
    # workers have handed their jobs back: take the signals ourselves and stop both.
    server.capture_signals = _no_capture  # type: ignore[method-assign]

    def _stop(signum: int, _frame: Any) -> None:
        if stop_event.is_set():
            # A second Ctrl-C: quit now. A running job keeps its lease until it expires, then the
            # reconciler requeues it (attempt + 1) and it resumes from its last checkpoint.
            log.warning("signal %s again: exiting without waiting for running jobs", signum)
            os._exit(1)
        log.info("signal %s: shutting down (running jobs are handed back to the queue; again to force)",
                 signum)
        stop_event.set()
        server.should_exit = True
        close_streams(config.app)  # open event streams end, or uvicorn would wait for them

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = start_background(settings, stop_event)
    try:
        server.run()
    finally:
        stop_event.set()
        for t in threads:
            t.join(JOIN_TIMEOUT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")
