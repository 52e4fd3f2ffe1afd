"""Batched patch extraction shared by relative position and jigsaw (no loop over samples)."""

from __future__ import annotations

import torch
from torch import Tensor


def extract_patches(x: Tensor, tops: Tensor, lefts: Tensor, size: int) -> Tensor:
    """Gather square patches from a batch with one advanced-indexing call.

    x: (B, C, H, W); tops, lefts: (B, K) or (B, K, C) integer top-left corners (per patch,
    or per patch and channel for channel-wise jitter), already inside the image.
    Returns (B, K, C, size, size).
    """
    b, c = x.shape[:2]
    if tops.dim() == 2:
        tops, lefts = tops[..., None], lefts[..., None]
    tops, lefts = tops.expand(-1, -1, c), lefts.expand(-1, -1, c)  # (B, K, C)
    ar = torch.arange(size, device=x.device)
    rows = (tops[..., None] + ar)[..., :, None]  # (B, K, C, size, 1)
    cols = (lefts[..., None] + ar)[..., None, :]  # (B, K, C, 1, size)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, 1, c, 1, 1)
    return x[bi, ci, rows, cols]
