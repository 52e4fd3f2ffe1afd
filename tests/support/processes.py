"""Child processes of a test or benchmark: a logged process stopped by its own pid, a private
redis-server, the environment a service process (``pretextlab serve``/``worker``, uvicorn) gets, and
the process tree below a pid (to check that no rank process outlives its worker)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]


def service_env(**settings: Any) -> dict[str, str]:
    """This process's environment without any PRETEXTLAB_* variable, plus ``PRETEXTLAB_<NAME>`` for
    each keyword (None leaves it unset): a child service sees only the settings given here.
    Without ``api_tokens``, ``auth`` defaults to off (these services bind loopback, like `make run`)."""
    if settings.get("api_tokens") is None:
        settings.setdefault("auth", "off")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRETEXTLAB_")}
    env["PYTHONUNBUFFERED"] = "1"  # logs reach the file while the test still runs
    env.update({f"PRETEXTLAB_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    return env


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc: children, their children, ...)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Proc:
    """A child process we started (stopped by its own pid only), with its output in ``<name>.log``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._fh = open(self.log_path, "ab")
        self.popen = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=self._fh, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._fh.close()


class RedisServer:
    """A private redis-server on a free port, so FLUSHALL and restarts touch nobody else."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def installed() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10, f"redis-server to listen on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def restart_empty(self) -> None:
        """Stop and start again on the same port with nothing stored (no persistence is configured)."""
        self.stop()
        self.start()
