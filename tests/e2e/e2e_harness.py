"""The end-to-end harness: real processes -- `pretextlab serve` (API + reconciler [+ local worker]),
`pretextlab worker` (Celery), a private redis-server, a fresh database. Logs go to tmp_path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))  # worker_testlib

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
             on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll ``cond`` until it returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{extra}")
        time.sleep(interval)


class Proc:
    """A child process we started (stopped by its own pid only), with its log in a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
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
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._fh.close()


class Cluster:
    """Settings shared by every process of one test, and the processes themselves."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str | None, **env: Any):
        from api.db.session import upgrade

        self.tmp = tmp_path
        self.database_url = database_url
        self.port = free_port()
        self.procs: list[Proc] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PRETEXTLAB_")}
        self.env.update({
            "PYTHONUNBUFFERED": "1",
            "PRETEXTLAB_DATABASE_URL": database_url,
            "PRETEXTLAB_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
            "PRETEXTLAB_DATA_ROOT": str(tmp_path / "data"),
            "PRETEXTLAB_PORT": str(self.port),
            "PRETEXTLAB_LEASE_SECONDS": "3",
            "PRETEXTLAB_HEARTBEAT_SECONDS": "0.5",
            "PRETEXTLAB_RECONCILE_SECONDS": "1",
            "PRETEXTLAB_REDISPATCH_AFTER_SECONDS": "3",
            "PRETEXTLAB_METRIC_FLUSH_SECONDS": "0.2",
            "PRETEXTLAB_LOG_LEVEL": "INFO",
        })
        if broker_url:
            self.env["PRETEXTLAB_BROKER_URL"] = broker_url
        self.env.update({f"PRETEXTLAB_{k.upper()}": str(v) for k, v in env.items()})
        upgrade(database_url)
        from api.db.session import make_engine, session_factory

        self.engine = make_engine(database_url)
        self.sessions = session_factory(self.engine)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import httpx

        return httpx.Client(base_url=self.base_url, timeout=10)

    def serve(self, name: str = "serve") -> Proc:
        p = Proc(name, [sys.executable, "-m", "worker.cli", "serve"], self.env, self.tmp)
        self.procs.append(p)

        def up() -> bool:
            import httpx

            assert p.alive(), f"{name} exited:\n{p.log()[-3000:]}"
            try:
                return httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, f"{name} to answer /healthz", on_timeout=lambda: p.log()[-3000:])
        return p

    def start(self, *workers: str) -> list[Proc]:
        """The API process and Celery workers, started together (start-up is the slow part)."""
        procs = [self.worker(n, wait_ready=False) for n in workers]
        self.serve()
        for p in procs:
            self.wait_ready(p)
        return procs

    def wait_ready(self, p: Proc) -> Proc:
        wait_for(lambda: " ready." in p.log() or not p.alive(), 60, f"{p.name} to be ready",
                 on_timeout=lambda: p.log()[-3000:])
        assert p.alive(), p.log()[-3000:]
        return p

    def worker(self, name: str, wait_ready: bool = True) -> Proc:
        p = Proc(name, [sys.executable, "-m", "worker.cli", "worker", "--hostname", f"{name}@%h"],
                 self.env, self.tmp)
        self.procs.append(p)
        return self.wait_ready(p) if wait_ready else p

    def submit(self, spec: dict[str, Any], **body: Any) -> int:
        with self.client() as c:
            r = c.post("/v1/jobs", json={"spec": spec, **body})
            assert r.status_code == 201, r.text
            return r.json()["id"]

    def get(self, job_id: int) -> dict[str, Any]:
        with self.client() as c:
            r = c.get(f"/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
            return r.json()

    def wait_status(self, job_id: int, statuses: set[str] | str, timeout: float = 120) -> dict[str, Any]:
        want = {statuses} if isinstance(statuses, str) else statuses
        return wait_for(lambda: (j := self.get(job_id))["status"] in want and j, timeout,
                        f"job {job_id} to be {sorted(want)}", interval=0.2, on_timeout=self.logs)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()[-2500:]}" for p in self.procs)

    def close(self) -> None:
        for p in self.procs:  # all at once: each warm shutdown takes a moment
            p.signal(signal.SIGTERM)
        for p in self.procs:
            p.stop()
        self.engine.dispose()
