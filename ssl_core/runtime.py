"""Device, precision, seeding and atomic file writes shared by training and evaluation."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ssl_core.errors import PermanentError


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without a GPU is a permanent error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PermanentError("device: cuda was requested but no CUDA device is available")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed).

    ``auto``: bf16 autocast on a CUDA device that supports it, fp32 otherwise (CPU autocast is
    slower than fp32 on most CPUs). fp16 needs CUDA and a GradScaler.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return None, False
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise PermanentError("precision: fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return torch.float16, True


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write through ``write(tmp_path)`` then ``os.replace``: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
