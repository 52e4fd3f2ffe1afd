"""Fixtures for the dashboard tests: a served store and a headless browser (tests/ui/ui_harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from ui_harness import Server, chrome


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.close()


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path, tokens="ui-secret-token-" + "s" * 32 + ",second-token-" + "t" * 32)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    driver = chrome()
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
