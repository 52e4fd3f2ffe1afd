"""Backbone features for evaluation and the training loop's kNN monitor.

uint8 images are fed the way every method feeds its backbone (``to_float`` then the dataset's
mean/std), in batches, in eval mode without gradients. A stop request is honoured between batches
(:class:`StopRequested`), and each batch can be reported as a unit of work (``on_batch``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ssl_core.augment import normalize, to_float
from ssl_core.runtime import autocast

# a callback after each unit of work: (epoch, images in it) -> None
OnStep = Callable[[int, int], None]


class StopRequested(Exception):
    """Raised between units of work when ``should_stop`` fires; the protocol unwinds."""


def to_input(images_uint8: Tensor, mean, std) -> Tensor:
    """uint8 (B, C, H, W) -> normalised float, the way every method feeds its backbone."""
    return normalize(to_float(images_uint8), mean, std)


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / max(1, batch_size))


@torch.no_grad()
def extract_features(backbone: nn.Module, images_uint8: Tensor, mean, std, batch_size: int = 512,
                     device: torch.device | str | None = None, amp_dtype: torch.dtype | None = None, *,
                     should_stop: Callable[[], bool] | None = None, on_batch: OnStep | None = None,
                     epoch: int = 0) -> Tensor:
    """Backbone features (N, D) in fp32 on ``device`` (eval mode, no grad, autocast if amp_dtype).

    ``should_stop`` is asked before every batch (raises :class:`StopRequested`); ``on_batch(epoch,
    images)`` is called after each one (ceil(N / batch_size) calls).
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    feats = []
    try:
        for start in range(0, images_uint8.shape[0], batch_size):
            if should_stop is not None and should_stop():
                raise StopRequested
            x = to_input(images_uint8[start:start + batch_size].to(device, non_blocking=True), mean, std)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                feats.append(backbone(x).float())
            if on_batch is not None:
                on_batch(epoch, x.shape[0])
    finally:
        backbone.train(was_training)
    return torch.cat(feats)


def raw_pixel_features(images_uint8: Tensor, mean, std, device=None) -> Tensor:
    """The raw-pixels baseline: flattened normalised pixels (N, C*H*W)."""
    x = images_uint8.to(device) if device is not None else images_uint8
    return to_input(x, mean, std).flatten(1)
