"""The one containment check shared by the API (before queueing) and the engine (before reading)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_core.paths import PathOutsideRoots, resolve_inside


def test_relative_paths_resolve_under_the_first_root(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert resolve_inside("imgs", [a, b]) == (a / "imgs").resolve()
    assert resolve_inside(b / "x", [a, b]) == (b / "x").resolve()


@pytest.mark.parametrize("bad, why", [("", "empty"), ("a\x00b", "control"), ("x/../../etc", r"'\.\.'"),
                                      ("a\\b", "backslash"), ("/etc", "outside the allowed data roots")])
def test_malformed_or_outside_paths_are_refused_naming_the_field(tmp_path: Path, bad: str, why: str) -> None:
    with pytest.raises(PathOutsideRoots, match=f"^eval.data.path: .*{why}"):
        resolve_inside(bad, [tmp_path], field="eval.data.path")


def test_a_symlink_leading_out_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(PathOutsideRoots, match="outside"):
        resolve_inside("link", [root])


def test_api_and_engine_refuse_the_same_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.security import UnsafePath, resolve_data_path
    from ssl_core.data import resolve_path
    from ssl_core.errors import DatasetError

    monkeypatch.setenv("PRETEXTLAB_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("PRETEXTLAB_ALLOWED_DATA_ROOTS", raising=False)
    (tmp_path / "ok").mkdir()
    assert resolve_data_path("ok", [tmp_path]) == resolve_path("ok")
    for bad in ("/etc", "../x", "ok/../../y"):
        with pytest.raises(UnsafePath):
            resolve_data_path(bad, [tmp_path])
        with pytest.raises(DatasetError):
            resolve_path(bad)
