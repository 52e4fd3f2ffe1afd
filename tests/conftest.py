"""Shared fixtures: real PostgreSQL, real Redis, isolated per test.

The helpers behind them live in tests/support (the benchmarks use them too). In CI (CI=true) a
missing service fails the test instead of skipping it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.databases import postgres_reachable, sqlite_file_url, throwaway_database
from tests.support.objstore import MotoS3
from tests.support.processes import RedisServer
from tests.support.services import unavailable


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return sqlite_file_url(tmp_path)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_reachable():
        unavailable("PostgreSQL (PRETEXTLAB_TEST_PG_URL) is not reachable")
    with throwaway_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test on both stores."""
    if request.param == "sqlite":
        return sqlite_file_url(tmp_path)
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test (its own port and directory)."""
    if not RedisServer.installed():
        unavailable("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A real S3-compatible server (moto_server) shared by the session; each test takes its own bucket."""
    if not MotoS3.installed():
        unavailable("moto_server is not installed (pip install 'moto[server]')")
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the session's moto server, with this process's AWS_* variables pointing at it."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server.create_bucket(f"pretextlab-{uuid.uuid4().hex[:12]}")
