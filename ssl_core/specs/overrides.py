"""Dotted-path overrides of a spec dict: how a suite's variants and a sweep's trials are made from
one base spec (shared by the API, which validates them, and the worker's sweep driver)."""

from __future__ import annotations

import json
from typing import Any


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """spec[a][b][c] = value for 'a.b.c', making the sections on the way."""
    *parents, leaf = path.split(".")
    node = spec
    for p in parents:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[leaf] = value


def get_path(spec: dict[str, Any], path: str) -> Any:
    """spec[a][b][c] for 'a.b.c', None where a section is missing."""
    node: Any = spec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def child_spec(base: dict[str, Any], overrides: dict[str, Any], seed: int,
               evaluations: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A pretraining spec dict: ``base`` with each override set, the seed, and the evaluations to
    run after it (``eval.after``; None keeps the base's)."""
    spec = json.loads(json.dumps(base))  # a deep copy of plain JSON
    for path, value in overrides.items():
        set_path(spec, path, value)
    spec["kind"], spec["seed"] = "pretrain", seed
    if evaluations is not None:
        set_path(spec, "eval.after", evaluations)
    return spec
