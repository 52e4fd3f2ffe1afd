"""Nested training state as flat named tensors plus a JSON skeleton: a file format that holds no code.

A checkpoint's state is a tree of dicts, lists and tuples whose leaves are tensors or plain values
(an optimizer's ``state_dict`` has int keys and tuples; Python's RNG state is a tuple of ints).
safetensors stores only named tensors and string metadata, and reading it never unpickles, so
:func:`flatten` splits a tree into ``{path: tensor}`` and a JSON-able skeleton where each tensor is
``{"__tensor__": path}``, a tuple ``{"__tuple__": [...]}`` and a dict with keys other than strings
``{"__dict__": [[key, value], ...]}``; :func:`unflatten` puts it back. Anything else (an object, a
NumPy scalar, a function) is refused when writing, and a skeleton naming anything else is refused
when reading, so a stored file can only ever produce tensors and plain values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

TENSOR, TUPLE, DICT = "__tensor__", "__tuple__", "__dict__"
_MARKERS = {TENSOR, TUPLE, DICT}
_PLAIN = (bool, int, float, str)


class TreeFormatError(ValueError):
    """A skeleton that :func:`flatten` could not have written (tampered with, or another format)."""


def flatten(tree: Any) -> tuple[dict[str, Tensor], Any]:
    """``({path: tensor}, skeleton)`` of a nested state; paths are '/'-joined keys. The tensors are
    CPU, contiguous and never share storage (safetensors refuses shared tensors)."""
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            if path in tensors:
                raise ValueError(f"{path}: two tensors would share this name")
            t = x.detach().to("cpu")
            ptr = t.untyped_storage().data_ptr()
            if not t.is_contiguous():  # e.g. channels_last weights: stored row-major, load_state_dict restores the layout
                t = t.contiguous()
            elif t.numel() and ptr in storages:
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            tensors[path] = t
            return {TENSOR: path}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not x.keys() & _MARKERS:
                return {k: walk(v, f"{path}/{k}") for k, v in x.items()}
            for k in x:
                if k is not None and not isinstance(k, _PLAIN):
                    raise TypeError(f"{path}: a dict key of type {type(k).__name__} cannot be stored")
            return {DICT: [[k, walk(v, f"{path}/{k}")] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {TUPLE: [walk(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
        if x is None or type(x) in _PLAIN:  # exact types: a NumPy scalar or an enum is not plain
            return x
        raise TypeError(f"{path or 'state'}: a {type(x).__name__} cannot be stored (tensors and plain values only)")

    return tensors, walk(tree, "")


def unflatten(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """The tree :func:`flatten` split; TreeFormatError on anything it could not have written."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if len(x) == 1 and next(iter(x)) in _MARKERS:
                (marker, value), = x.items()
                if marker == TENSOR:
                    if not isinstance(value, str) or value not in tensors:
                        raise TreeFormatError(f"the state names a tensor {value!r} the file does not hold")
                    return tensors[value]
                if not isinstance(value, list):
                    raise TreeFormatError(f"{marker} must hold a list")
                if marker == TUPLE:
                    return tuple(walk(v) for v in value)
                if not all(isinstance(kv, list) and len(kv) == 2 for kv in value):
                    raise TreeFormatError(f"{DICT} must hold [key, value] pairs")
                return {k: walk(v) for k, v in value}
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if x is None or isinstance(x, _PLAIN):
            return x
        raise TreeFormatError(f"unexpected {type(x).__name__} in the state")

    return walk(skeleton)


def same_tree(a: Any, b: Any) -> bool:
    """Whether two trees are equal (tensors by value and dtype): a test and debugging aid."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
