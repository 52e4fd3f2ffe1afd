"""The end-to-end harness: real processes -- `pretextlab serve` (API + reconciler [+ local worker]),
`pretextlab worker` (Celery), a private redis-server, a fresh database. Logs go to tmp_path."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_for, wait_for_http
from tests.support.processes import Proc, service_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))  # worker_testlib


class Cluster:
    """Settings shared by every process of one test, and the processes themselves."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str | None, **env: Any):
        from api.db.session import upgrade

        self.tmp = tmp_path
        self.database_url = database_url
        self.port = free_port()
        self.procs: list[Proc] = []
        settings: dict[str, Any] = dict(
            database_url=database_url, broker_url=broker_url, artifact_root=tmp_path / "artifacts",
            data_root=tmp_path / "data", port=self.port, lease_seconds=3, heartbeat_seconds=0.5,
            reconcile_seconds=1, redispatch_after_seconds=3, metric_flush_seconds=0.2, log_level="INFO")
        self.env = service_env(**{**settings, **env})
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

        wait_for_http(self.base_url + "/healthz", 60, f"{name} to answer /healthz", alive=p.alive,
                      on_timeout=lambda: p.log()[-3000:])
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

    def worker(self, name: str, wait_ready: bool = True, extra: tuple[str, ...] = ()) -> Proc:
        p = Proc(name, [sys.executable, "-m", "worker.cli", "worker", "--hostname", f"{name}@%h", *extra],
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
