"""Fixtures for the worker tests: a migrated database (SQLite and PostgreSQL) and settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Store:
    url: str
    sessions: Any
    settings: Any
    engine: Any


def make_store(url: str, tmp_path: Path, **overrides: Any) -> Store:
    from api.db.session import make_engine, session_factory, upgrade
    from api.settings import Settings

    upgrade(url)
    engine = make_engine(url)
    settings = Settings(database_url=url, artifact_root=tmp_path / "artifacts", broker_url=None,
                        lease_seconds=30, heartbeat_seconds=0.2, metric_flush_seconds=0.1,
                        reconcile_seconds=0.5, redispatch_after_seconds=60, **overrides)
    return Store(url, session_factory(engine), settings, engine)


@pytest.fixture
def store(database_url: str, tmp_path: Path):
    s = make_store(database_url, tmp_path)
    yield s
    s.engine.dispose()


@pytest.fixture
def sqlite_store(sqlite_url: str, tmp_path: Path):
    s = make_store(sqlite_url, tmp_path)
    yield s
    s.engine.dispose()
