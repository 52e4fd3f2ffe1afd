"""Fixtures for the end-to-end tests (the harness lives in e2e_harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2e_harness import Cluster


@pytest.fixture
def make_cluster(tmp_path: Path):
    made: list[Cluster] = []

    def make(database_url: str, broker_url: str | None = None, **env: Any) -> Cluster:
        c = Cluster(tmp_path, database_url, broker_url, **env)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
