"""A child process that dies with its parent: no rank, no pool process outlives a killed worker.

Torch-free, so the Celery worker can arm its pool processes with it at start, and the launcher its
rank processes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when ``parent_pid`` (its parent) dies: the kernel's parent-death signal
    (Linux) plus a watcher thread (any POSIX; also covers a parent that died before prctl ran)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watcher alone
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(137)

    if os.getppid() != parent_pid:
        os._exit(137)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
