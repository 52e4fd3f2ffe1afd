"""Where a user-given path may point: the one containment check the API and the engine share.

Torch-free on purpose: the API validates dataset and weights paths with it before queueing a job,
and the worker resolves the same paths with it before reading a byte, so the two cannot disagree.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")  # NUL and the other control characters


class PathOutsideRoots(ValueError):
    """A user-given path that is malformed or resolves outside every allowed root."""


def resolve_inside(path: str | os.PathLike[str], roots: list[Path], *, field: str = "data.path",
                   base: Path | None = None) -> Path:
    """``path`` resolved (symlinks followed, ``~`` not expanded) and checked to lie inside one of ``roots``.

    A relative path is taken under ``base`` (default: the first root). ``..`` components,
    backslashes, NUL and control characters are refused outright, so no spelling can climb out
    before resolution; symlinks that lead out are caught by the containment check after it.
    Existence is not checked here: the API may not see the workers' mounts.
    """
    text = os.fspath(path)
    if not text or CONTROL_CHARS.search(text):
        raise PathOutsideRoots(f"{field}: empty path or control characters")
    if "\\" in text or any(p == ".." for p in text.split("/")):
        raise PathOutsideRoots(f"{field}: '..' and backslashes are not allowed")
    resolved_roots = [Path(r).resolve() for r in roots]
    if not resolved_roots:
        raise PathOutsideRoots(f"{field}: no data root is configured")
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = (Path(base).resolve() if base is not None else resolved_roots[0]) / candidate
    resolved = candidate.resolve()
    if any(resolved.is_relative_to(r) for r in resolved_roots):
        return resolved
    raise PathOutsideRoots(
        f"{field}: {text!r} resolves to {resolved}, outside the allowed data roots "
        f"({', '.join(str(r) for r in resolved_roots)}); put the data under PRETEXTLAB_DATA_ROOT or add "
        "its folder to PRETEXTLAB_ALLOWED_DATA_ROOTS"
    )
