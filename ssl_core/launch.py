"""Start a pretraining on N local rank processes with torch.distributed's own launcher.

    run_pretrain(spec, out_dir, nproc=N, devices=[...], sink=..., should_stop=...) -> PretrainResult
    launch_cli(argv, nproc) -> exit status            (``pretextlab train ... --nproc N``)

Both go through ``torch.distributed.launcher.api.elastic_launch`` (what ``torchrun --standalone``
runs: a c10d rendezvous on a free local port, one spawned process per rank, the group torn down
when any rank fails). Each rank joins the group (:func:`ssl_core.distributed.init_rank_process`;
NCCL on CUDA, gloo on CPU) and runs :func:`ssl_core.train.pretrain`.

:func:`run_pretrain` is what the service calls. The ranks live as children of the calling process:

* rank 0's :class:`~ssl_core.reporting.Sink` calls (metrics, progress, artifact, flush) travel over
  a multiprocessing queue and are made on ``sink`` in the calling thread;
* ``should_stop`` is polled in the caller; a stop sets an event every rank reads between steps
  (the ranks agree on the step, checkpoint there and exit);
* a rank's error is re-raised in the caller with its type name and message (a PermanentError stays
  one, so the job fails once instead of retrying);
* no orphans: every rank asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``)
  and also watches its parent's pid, so ``kill -9`` of the caller takes every rank with it. (The
  launcher runs in a thread of the caller, so torch warns that it cannot install its own signal
  handlers there; the parent-death signal is what covers that case.)
"""

from __future__ import annotations

import inspect
import os
import queue as queue_mod
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from ssl_core import errors
from ssl_core.errors import PermanentError
from ssl_core.lifeline import die_with_parent
from ssl_core.reporting import NullSink, Sink

_POLL_S = 0.1


# ---------------------------------------------------------------------------------------------
# In a rank
class QueueSink(NullSink):
    """Rank 0's sink in a child: every call becomes a message the caller replays on its own sink."""

    def __init__(self, q: Any):
        self.q = q

    def metrics(self, step, values, epoch=None):
        self.q.put(("metrics", (step, dict(values)), {"epoch": epoch}))

    def progress(self, **kw):
        self.q.put(("progress", (), kw))

    def artifact(self, name, path, kind):
        self.q.put(("artifact", (name, Path(path), kind), {}))

    def flush(self):
        self.q.put(("flush", (), {}))


def _service_rank(spec_json: str, out_dir: str, resume: bool, devices: list[int] | None, run_key: str | None,
                  q: Any, stop: Any, parent_pid: int) -> None:
    """One rank of :func:`run_pretrain` (module level: the spawn start method pickles it)."""
    die_with_parent(parent_pid)
    from ssl_core.distributed import close_rank_process, init_rank_process, stop_on_signals
    from ssl_core.specs import PretrainSpec

    signalled = stop_on_signals()
    rank = int(os.environ.get("RANK", 0))
    try:
        spec = PretrainSpec.model_validate_json(spec_json)
        init_rank_process(spec.device, devices)
        result = _pretrain(spec, Path(out_dir), QueueSink(q) if rank == 0 else None,
                           lambda: stop.is_set() or signalled(), resume, run_key)
        if rank == 0:
            q.put(("result", (result,), {}))
    except BaseException as e:
        q.put(("error", (rank, type(e).__name__, str(e), isinstance(e, PermanentError)), {}))
        raise
    finally:
        close_rank_process()


def _pretrain(spec, out_dir: Path, sink: Sink | None, should_stop: Callable[[], bool], resume: bool,
              run_key: str | None):
    from ssl_core.train import pretrain

    kw = {"run_key": run_key} if "run_key" in inspect.signature(pretrain).parameters else {}
    return pretrain(spec, out_dir, sink=sink, should_stop=should_stop, resume=resume, **kw)


def rebuild_error(name: str, message: str, permanent: bool) -> BaseException:
    """A rank's error in the caller: the engine's own error class by name, else a PermanentError
    subclass of that name (permanent) or a RuntimeError naming it."""
    from ssl_core import checkpoint

    for module in (errors, checkpoint):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls(message)
    if permanent:
        return type(name, (PermanentError,), {})(message)
    return RuntimeError(f"{name}: {message}")


# ---------------------------------------------------------------------------------------------
# The launcher
def _launch_config(nproc: int) -> Any:
    from torch.distributed.launcher.api import LaunchConfig

    # torchrun --standalone: a c10d rendezvous on a free local port; no restarts (a failed rank fails the
    # run; resuming is the job's business, from the last checkpoint)
    return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"pretextlab-{uuid.uuid4().hex}",
                        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                        monitor_interval=_POLL_S, start_method="spawn")


def run_pretrain(spec, out_dir, *, nproc: int, devices: list[int] | None = None, sink=None, should_stop=None,
                 resume=True, run_key: str | None = None):
    """Run ``spec`` on ``nproc`` local ranks (``devices``: one CUDA device id per rank; None on CPU) and
    return rank 0's PretrainResult. Sink calls and the stop request cross over as described above."""
    if nproc < 1 or (devices is not None and len(devices) != nproc):
        raise ValueError(f"run_pretrain: nproc {nproc} needs as many devices (got {devices})")
    sink = sink or NullSink()
    should_stop = should_stop or sink.should_stop
    if nproc == 1:
        return _run_in_process(spec, Path(out_dir), devices, sink, should_stop, resume, run_key)
    return run_ranks(spec, out_dir, nproc, devices, sink, should_stop, resume, run_key)


def run_ranks(spec, out_dir, nproc: int, devices: list[int] | None, sink: Sink, should_stop: Callable[[], bool],
              resume: bool = True, run_key: str | None = None):
    """:func:`run_pretrain` through the launcher for any ``nproc``, 1 included (benchmarks compare like with like)."""
    import torch.multiprocessing as mp
    from torch.distributed.launcher.api import elastic_launch

    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    outcome: dict[str, Any] = {}

    def launch() -> None:
        try:
            elastic_launch(_launch_config(nproc), _service_rank)(
                spec.model_dump_json(), str(out_dir), resume, devices, run_key, q, stop, os.getpid())
        except BaseException as e:  # re-raised in the caller below
            outcome["launch_error"] = e

    launcher = threading.Thread(target=launch, name="pretrain-launcher", daemon=True)
    launcher.start()
    try:
        _relay(q, sink, should_stop, stop, launcher, outcome)
    except BaseException:  # the caller's sink failed (or the caller was interrupted): stop the ranks first
        stop.set()
        while launcher.is_alive():  # keep draining: a rank exits only once its queue is flushed
            try:
                q.get(timeout=_POLL_S)
            except queue_mod.Empty:
                pass
        raise
    return _result(outcome)


def _run_in_process(spec, out_dir: Path, devices, sink, should_stop, resume, run_key):
    if devices:
        import torch

        with torch.cuda.device(devices[0]):  # this thread's current device: the job's GPU
            return _pretrain(spec, out_dir, sink, should_stop, resume, run_key)
    return _pretrain(spec, out_dir, sink, should_stop, resume, run_key)


def _relay(q: Any, sink: Sink, should_stop: Callable[[], bool], stop: Any, launcher: threading.Thread,
           outcome: dict[str, Any]) -> None:
    """Until the launcher returns and the queue is empty: replay rank 0's messages on ``sink`` (in this
    thread), pass a stop request on, keep a result or the first error."""
    idle_after_exit, next_poll = 0, 0.0
    while True:
        try:
            kind, args, kw = q.get(timeout=_POLL_S)
        except queue_mod.Empty:
            if not launcher.is_alive():
                idle_after_exit += 1
                if idle_after_exit > 3:  # the ranks' queue feeders flush before their processes exit
                    return
            if not stop.is_set() and should_stop():
                stop.set()
            continue
        if kind == "result":
            outcome["result"] = args[0]
        elif kind == "error":  # the first error, a permanent one before the others it caused
            if "error" not in outcome or (args[3] and not outcome["error"][3]):
                outcome["error"] = args
        else:
            getattr(sink, kind)(*args, **kw)
        if not stop.is_set() and time.monotonic() >= next_poll:
            # polled on a clock, not per message: a should_stop that costs time (a database read)
            # must not let the replay fall behind the ranks
            next_poll = time.monotonic() + _POLL_S
            if should_stop():
                stop.set()


def _result(outcome: dict[str, Any]):
    if "error" in outcome:
        rank, name, message, permanent = outcome["error"]
        raise rebuild_error(name, message, permanent)
    if "launch_error" in outcome:
        raise RuntimeError(f"distributed pretraining failed: {outcome['launch_error']}") from outcome["launch_error"]
    if "result" not in outcome:
        raise RuntimeError("distributed pretraining ended without a result from rank 0")
    return outcome["result"]


# ---------------------------------------------------------------------------------------------
# The CLI: pretextlab train ... --nproc N
def _cli_rank(argv: list[str], parent_pid: int) -> int:
    """One rank of ``pretextlab train --nproc N``: the same command, run as a torchrun rank."""
    die_with_parent(parent_pid)
    from ssl_core.cli import train_main

    code = train_main(argv)
    if code:  # a failed rank must exit non-zero, so the launcher tears the others down
        raise SystemExit(code)
    return code


def launch_cli(argv: list[str], nproc: int) -> int:
    """Run ``pretextlab train argv`` on ``nproc`` local ranks; the exit status of the run."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    try:
        elastic_launch(_launch_config(nproc), _cli_rank)(argv, os.getpid())
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        print(f"the run failed on rank(s) {sorted(e.failures)} (exit status {codes}); see the messages above",
              file=sys.stderr)
        return next((c for c in codes if c and c > 0), 1)
    return 0
