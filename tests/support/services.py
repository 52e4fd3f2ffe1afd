"""The rule for a service or dataset a test needs but cannot find: skip locally, fail in CI."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when CI=true: there, a missing service must never pass silently."""
    if IN_CI:
        pytest.fail(f"{reason}, and CI=true: .ci/run should have provided it")
    pytest.skip(reason)
