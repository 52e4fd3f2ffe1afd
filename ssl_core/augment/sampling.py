"""Random draws from an explicit generator, returned on the batch's device.

The augmentation ops and the methods (patch positions, permutations, channel dropping) draw
all their randomness here, so a seeded generator reproduces a run on any device. A generator
can only draw on its own device: with a CPU generator and CUDA data the draw happens on the
CPU and is copied over (correct, but a host-to-device copy per draw; pass a generator on the
batch's device for speed).

Every helper takes ``device, generator`` last, in that order (``rand(shape, device, generator)``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _source(device: torch.device | str, generator: torch.Generator | None) -> torch.device:
    """Where the draw happens: the generator's device when it differs from ``device``."""
    device = torch.device(device)
    if generator is not None and generator.device != device:
        return generator.device
    return device


def rand(shape: Sequence[int], device: torch.device | str, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) of ``shape`` on ``device``."""
    out = torch.rand(tuple(shape), generator=generator, device=_source(device, generator))
    return out.to(device, non_blocking=True)


def uniform(shape: Sequence[int], lo: float, hi: float, device: torch.device | str,
            generator: torch.Generator | None) -> Tensor:
    """U[lo, hi) of ``shape`` on ``device``."""
    return lo + (hi - lo) * rand(shape, device, generator)


def bernoulli(batch: int, p: float, device: torch.device | str, generator: torch.Generator | None) -> Tensor:
    """(B,) bool mask, True with probability p (p=0: never, p=1: always)."""
    return rand((batch,), device, generator) < p


def randint(high: int | Tensor, shape: Sequence[int], device: torch.device | str,
            generator: torch.Generator | None) -> Tensor:
    """Integers in [0, high) of ``shape`` on ``device``; ``high`` may be a tensor broadcast
    against ``shape`` (per-sample ranges)."""
    u = rand(shape, device, generator)
    if isinstance(high, Tensor):
        return torch.minimum((u * high).long(), high.long() - 1)
    return (u * high).long().clamp_(max=high - 1)


def randn(shape: Sequence[int], device: torch.device | str, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) of ``shape`` on ``device``."""
    out = torch.randn(tuple(shape), generator=generator, device=_source(device, generator))
    return out.to(device, non_blocking=True)


def randperm(n: int, device: torch.device | str, generator: torch.Generator | None) -> Tensor:
    """A random permutation of range(n) on ``device``."""
    return torch.randperm(n, generator=generator, device=_source(device, generator)).to(device, non_blocking=True)
