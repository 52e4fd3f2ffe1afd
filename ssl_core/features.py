"""Backbone features for evaluation and the training loop's kNN monitor.

uint8 images are fed the way every method feeds its backbone (``to_float`` then the dataset's
mean/std), in batches, in eval mode without gradients. A stop request is honoured between batches
(:class:`StopRequested`), and each batch can be reported as a unit of work (``on_batch``).

Intermediate layers: :class:`LayerTap` wraps a backbone so that one forward pass gives every requested
layer's features, each conv map adaptively pooled to a grid and flattened (:func:`pool_map`) as the batch
goes, so only pooled features are kept; :func:`extract_features` then returns one (N, D) tensor per probe.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.augment import normalize, to_float
from ssl_core.runtime import autocast
from ssl_core.specs.evaluation import LayerPooling

# a callback after each unit of work: (epoch, images in it) -> None
OnStep = Callable[[int, int], None]


class StopRequested(Exception):
    """Raised between units of work when ``should_stop`` fires; the protocol unwinds."""


def to_input(images_uint8: Tensor, mean, std) -> Tensor:
    """uint8 (B, C, H, W) -> normalised float, the way every method feeds its backbone."""
    return normalize(to_float(images_uint8), mean, std)


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / max(1, batch_size))


def grid_for(channels: int, side: int, pooling: LayerPooling) -> int:
    """Cells per side for a (channels, side, side) map: the pooling's grid, or the largest one (never above
    the map's side: pooling only shrinks) with channels x grid^2 <= max_dims, at least 1."""
    if pooling.grid is not None:
        return pooling.grid
    return max(1, min(side, math.isqrt(pooling.max_dims // max(1, channels))))


def pool_map(fmap: Tensor, pooling: LayerPooling) -> Tensor:
    """(B, C, H, W) -> (B, C * g * g) by adaptive average or max pooling to g x g; (B, D) passes through."""
    if fmap.dim() == 2:
        return fmap
    g = grid_for(fmap.shape[1], min(fmap.shape[-2:]), pooling)
    pool = F.adaptive_max_pool2d if pooling.mode == "max" else F.adaptive_avg_pool2d
    return torch.flatten(pool(fmap, g), 1)


class LayerTap(nn.Module):
    """A backbone seen through some of its layers: forward(x) -> {probe: (B, D)} from one pass.

    ``probes`` are the layer names, or one name ``"a+b+..."`` for their concatenation (``pooling.concat``).
    ``only(probe)`` is the same tap giving that one probe's tensor (the augmented linear probe's input).
    """

    def __init__(self, backbone: nn.Module, names: list[str], pooling: LayerPooling, single: str | None = None):
        super().__init__()
        self.backbone, self.names, self.pooling, self.single = backbone, list(names), pooling, single
        self.probes = ["+".join(self.names)] if pooling.concat else list(self.names)

    def forward(self, x: Tensor) -> dict[str, Tensor] | Tensor:
        maps = self.backbone.forward_layers(x, self.names)
        vecs = {n: pool_map(maps[n], self.pooling) for n in self.names}
        out = {self.probes[0]: torch.cat([vecs[n] for n in self.names], 1)} if self.pooling.concat else vecs
        return out[self.single] if self.single is not None else out

    def only(self, probe: str) -> "LayerTap":
        names = self.names if self.pooling.concat else [probe]
        return LayerTap(self.backbone, names, self.pooling, single=probe)


@torch.no_grad()
def extract_features(backbone: nn.Module, images_uint8: Tensor, mean, std, batch_size: int = 512,
                     device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None, *,
                     should_stop: Callable[[], bool] | None = None, on_batch: OnStep | None = None,
                     epoch: int = 0) -> Tensor | dict[str, Tensor]:
    """Backbone features (N, D) in fp32 on ``device`` (eval mode, no grad, autocast if amp_dtype);
    a :class:`LayerTap` gives {probe: (N, D_probe)} from the same single pass.

    ``should_stop`` is asked before every batch (raises :class:`StopRequested`); ``on_batch(epoch,
    images)`` is called after each one (ceil(N / batch_size) calls).
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    feats: dict[str | None, list[Tensor]] = {}
    try:
        for start in range(0, images_uint8.shape[0], batch_size):
            if should_stop is not None and should_stop():
                raise StopRequested
            x = to_input(images_uint8[start:start + batch_size].to(device, non_blocking=True), mean, std)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                out = backbone(x)
            for name, value in (out.items() if isinstance(out, dict) else [(None, out)]):
                feats.setdefault(name, []).append(value.float())
            if on_batch is not None:
                on_batch(epoch, x.shape[0])
    finally:
        backbone.train(was_training)
    if list(feats) == [None]:
        return torch.cat(feats[None])
    return {name: torch.cat(parts) for name, parts in feats.items()}


def raw_pixel_features(images_uint8: Tensor, mean, std, device=None) -> Tensor:
    """The raw-pixels baseline: flattened normalised pixels (N, C*H*W)."""
    x = images_uint8.to(device) if device is not None else images_uint8
    return to_input(x, mean, std).flatten(1)
