"""The devices a worker owns, how it shares them out, and its presence in SQL.

* :func:`resolve_slots`: ``--gpus 0,1,2,3`` (or ``all``), ``--slots N`` (CPU slots, a host without
  GPUs or the tests), or the default: every visible GPU, else N CPU slots. GPU ids are device
  ordinals as this process sees them (after ``CUDA_VISIBLE_DEVICES``). Found without torch
  (``CUDA_VISIBLE_DEVICES``, then ``nvidia-smi -L``): this runs when the worker starts, not in a task.
* :class:`SlotPool`: which of those devices are free; a job takes ``gpus`` of them for its run.
  Only this process hands out its devices, so a lock in memory is all the allocation needs; the
  claim writes the choice to SQL (``jobs.devices``) for the fleet listing.
* :class:`Placement`: what one job was given; :func:`pin_thread` makes a one-GPU job in a worker
  thread use its own device (CUDA's current device is per thread). A multi-GPU job's ranks are
  started by ``ssl_core.launch.run_pretrain`` with the devices.
* :class:`WorkerPresence`: registers the worker in ``workers``, heartbeats every
  HEARTBEAT_SECONDS from a thread, deletes the row on a clean stop.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Sequence

from sqlalchemy.orm import Session, sessionmaker

from api.db.workers import deregister_worker, heartbeat_worker, register_worker

log = logging.getLogger("pretextlab.worker")

CUDA, CPU = "cuda", "cpu"


@dataclass(frozen=True)
class Slots:
    """The devices a worker owns: GPU ordinals (``cuda``) or CPU slot numbers (``cpu``)."""

    kind: str
    ids: tuple[int, ...]


def visible_gpus() -> list[int]:
    """Ordinals of the GPUs this process can use, found without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        names = [d.strip() for d in env.split(",") if d.strip()]
        # CUDA stops at the first invalid entry (e.g. "-1" hides every device)
        valid = []
        for d in names:
            if d.startswith("-"):
                break
            valid.append(d)
        return list(range(len(valid)))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return list(range(sum(1 for line in out.splitlines() if line.startswith("GPU "))))


def parse_gpus(text: str) -> list[int]:
    """``"0,1,3"`` -> [0, 1, 3]; ``"all"`` -> every visible GPU. ValueError naming the option otherwise."""
    if text.strip().lower() == "all":
        found = visible_gpus()
        if not found:
            raise ValueError("--gpus all: no GPU is visible on this host (use --slots N for CPU slots)")
        return found
    try:
        ids = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--gpus: expected comma-separated device numbers such as 0,1,2,3, got {text!r}") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus: expected distinct device numbers >= 0, got {text!r}")
    return ids


def resolve_slots(gpus: str | None = None, slots: int | None = None, *, default_slots: int = 1,
                  detect: bool = True) -> Slots:
    """The worker's devices: ``gpus`` ("0,1" or "all"), else ``slots`` CPU slots, else every
    visible GPU (when ``detect``), else ``default_slots`` CPU slots."""
    if gpus and slots:
        raise ValueError("--gpus and --slots: give one of them (GPUs on a GPU host, CPU slots elsewhere)")
    if gpus:
        return Slots(CUDA, tuple(parse_gpus(gpus)))
    if slots is not None:
        if slots < 1:
            raise ValueError(f"--slots: must be at least 1, got {slots}")
        return Slots(CPU, tuple(range(slots)))
    found = visible_gpus() if detect else []
    if found:
        return Slots(CUDA, tuple(found))
    return Slots(CPU, tuple(range(max(1, default_slots))))


class SlotPool:
    """The free devices of one worker, shared out under a lock."""

    def __init__(self, slots: Slots):
        self.slots = slots
        self._free = list(slots.ids)
        self._lock = threading.Lock()

    def free_count(self) -> int:
        with self._lock:
            return len(self._free)

    def acquire(self, n: int) -> tuple[int, ...] | None:
        """Take ``n`` free devices (lowest ids first), or None when fewer are free."""
        with self._lock:
            if n < 1 or n > len(self._free):
                return None
            taken, self._free = self._free[:n], self._free[n:]
            return tuple(taken)

    def release(self, devices: Sequence[int]) -> None:
        with self._lock:
            self._free = sorted({*self._free, *devices})


@dataclass(frozen=True)
class Placement:
    """The devices one job runs on, and the worker (its registered name) that gave them."""

    worker: str
    kind: str
    devices: tuple[int, ...]

    def cuda_devices(self) -> list[int] | None:
        """The GPU ordinals for the engine, or None for CPU slots (nothing to pin)."""
        return list(self.devices) if self.kind == CUDA else None


def pin_thread(placement: Placement | None) -> None:
    """Make CUDA's current device of this (task) thread the job's one GPU, so ``cuda`` means it."""
    if placement is None or placement.kind != CUDA or len(placement.devices) != 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(placement.devices[0])


class WorkerPresence:
    """This worker's row in ``workers``: registered on :meth:`start`, heartbeating from a daemon
    thread, deleted on :meth:`stop`. A database outage only delays heartbeats (logged); a row
    that disappeared (cleaned up while this worker was cut off) is registered again."""

    def __init__(self, sessions: sessionmaker[Session], name: str, slots: Slots, queues: Sequence[str],
                 every_s: float):
        self.sessions = sessions
        self.name = name
        self.slots = slots
        self.queues = list(queues)
        self.every_s = float(every_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _register(self) -> None:
        with self.sessions() as s, s.begin():
            register_worker(s, self.name, host=socket.gethostname(), device_kind=self.slots.kind,
                            gpus=self.slots.ids, queues=self.queues)

    def start(self) -> "WorkerPresence":
        try:
            self._register()
        except Exception:
            log.exception("worker %s: registration failed; retrying with the heartbeat", self.name)
        self._thread = threading.Thread(target=self._beat, name=f"presence-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.sessions() as s, s.begin():
                    present = heartbeat_worker(s, self.name)
                if not present:
                    self._register()
            except Exception:
                log.warning("worker %s: heartbeat failed (database unreachable?)", self.name, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.every_s + 5)
        try:
            with self.sessions() as s, s.begin():
                deregister_worker(s, self.name)
        except Exception:
            log.warning("worker %s: could not deregister (it will show as dead)", self.name, exc_info=True)
