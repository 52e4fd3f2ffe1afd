"""What every augmentation op shares: the op protocol and the small tensor helpers.

An op (:class:`AugmentOpImpl`) has two halves: ``sample`` draws the per-sample random
parameters (always including ``apply``, the (B,) bool mask of samples it acts on, drawn with
the op's probability ``p``), and ``apply`` transforms a float batch in [0, 1] with them.
Keeping the draws apart is what lets the Pipeline compile ``apply`` while the generator stays
eager, and fuse a flip into a crop while drawing in the same order.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.augment.sampling import bernoulli

Params = dict[str, Tensor]

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
LUMA = (0.2989, 0.587, 0.114)


def to_float(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; a floating tensor is returned as float32 unchanged."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise TypeError(f"to_float: expected uint8 or floating images, got {x.dtype}")
    return x.float()


_STATS_CACHE: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel. x: (B, C, H, W) float.

    A 1-value mean/std (a grayscale dataset) is repeated to the image's C channels, so
    ``data.channels=3`` on Fashion-MNIST uses its own statistics on every channel. The
    statistics tensors are cached per device so a training step does no host-to-device copy.
    """
    c = x.shape[1]
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean_t) == 1 and c != 1:
        mean_t, std_t = mean_t * c, std_t * c
    if len(mean_t) != c or len(std_t) != c:
        raise ValueError(f"normalize: {len(mean_t)} mean values for {c} channels")
    key = (mean_t, std_t, x.device, x.dtype)
    if key not in _STATS_CACHE:
        m = torch.tensor(mean_t, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        s = torch.tensor(std_t, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        _STATS_CACHE[key] = (m, s)
    m, s = _STATS_CACHE[key]
    return (x - m) / s


_CONSTS: dict[tuple[Any, ...], Tensor] = {}


def const(values: Any, like: Tensor) -> Tensor:
    """A small constant tensor on like's device and dtype, built once per device: creating it
    from Python on every call would be a pageable host-to-device copy, which blocks the host
    until the GPU has caught up."""
    if torch.compiler.is_compiling():
        # inside Pipeline.compile()'s graphs: a graph constant (built once, at compile time);
        # reading the global cache would guard on its contents and recompile once it fills
        return torch.tensor(values, dtype=like.dtype, device=like.device)
    key = (values, like.device, like.dtype)
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t


def select_samples(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample select: mask (B,) bool; a, b (B, C, H, W)."""
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def luma(x: Tensor) -> Tensor:
    """(B, 1, H, W) grayscale; a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).unsqueeze(1)


def resize(x: Tensor, size: int) -> Tensor:
    """Bilinear, anti-aliased resize of a float batch to size x size."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)


class AugmentOpImpl:
    """Base: ``sample`` draws per-sample parameters, ``apply`` uses them. Size-preserving
    unless ``resizes`` (then the output side is ``out_size``)."""

    resizes = False
    # Pipeline.compile() compiles this op's ``apply``: pointwise ops, which the compiler fuses
    # into a few loops. Ops built on grid_sample / convolutions / the Jacobi solver stay eager
    # (measured on CPU: a compiled grid_sample crop is several times slower than ATen's).
    compilable = False
    # a horizontal mirror commutes with this op (pixel-wise colour ops; a symmetric blur kernel
    # with reflect padding), so a flip after it can be fused into a preceding crop
    commutes_with_flip = False

    def __init__(self, spec: Any, out_size: int):
        self.spec = spec
        self.out_size = out_size

    @property
    def p(self) -> float:
        return float(self.spec.p)

    def sample(self, batch: int, height: int, width: int, channels: int, device, generator) -> Params:
        return {"apply": bernoulli(batch, self.p, device, generator)}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, c, h, w = x.shape
        return self.apply(x, self.sample(b, h, w, c, x.device, generator))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
