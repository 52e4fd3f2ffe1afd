"""A real embedded server for the client and remote-CLI tests: `pretextlab serve` on SQLite with
its local worker, on a free port, one per module (start-up is the slow part); and one with API
tokens configured."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.databases import sqlite_file_url
from tests.support.net import free_port, wait_for_http
from tests.support.processes import Proc, service_env

TOKEN = "client-test-token-" + "k" * 32  # the API refuses tokens under 32 characters


class Server:
    """`pretextlab serve` in a child process; ``artifact_root`` is where its jobs' files land."""

    def __init__(self, tmp: Path, **settings: Any):
        from api.db.session import upgrade

        self.tmp = tmp
        self.port = free_port()
        self.artifact_root = tmp / "artifacts"
        database_url = sqlite_file_url(tmp)
        upgrade(database_url)
        env = service_env(database_url=database_url, artifact_root=self.artifact_root, data_root=tmp / "data",
                          port=self.port, lease_seconds=5, heartbeat_seconds=0.5, metric_flush_seconds=0.2,
                          log_level="INFO", test_step_delay="0.05", **settings)
        self.proc = Proc("serve", [sys.executable, "-m", "worker.cli", "serve"], env, tmp)
        wait_for_http(self.url + "/healthz", 90, "pretextlab serve to answer", alive=self.proc.alive,
                      on_timeout=lambda: self.proc.log()[-3000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def job_file(self, job_id: int, name: str) -> Path:
        return self.artifact_root / "jobs" / str(job_id) / name

    def log(self) -> str:
        return self.proc.log()[-3000:]

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("serve"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("serve-tokens"), api_tokens=TOKEN)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(server: Server):
    from pretextlab.client import Client

    with Client(server.url, timeout=30) as c:
        yield c
