"""API test fixtures: a migrated database (SQLite and PostgreSQL), an app built on it, a client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.db.session import make_engine, session_factory, upgrade
from api.main import create_app
from api.settings import Settings


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(url: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(database_url=url, artifact_root=tmp_path / "artifacts",
                                      data_root=tmp_path / "data", broker_url=None, api_tokens=None,
                                      auth="off")
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(database_url: str, make_settings: Callable[..., Settings]) -> Settings:
    upgrade(database_url)
    return make_settings(database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def db(settings: Settings) -> Iterator[Callable[[], Any]]:
    """A session factory on the test database, for arranging states the API cannot create."""
    engine = make_engine(settings.database_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()
