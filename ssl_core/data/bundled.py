"""Sets with nothing to fetch: scikit-learn's bundled 8x8 digits and procedurally generated shapes.

* digits -- 0..16 scaled to 0..255, a fixed seeded 80/20 split.
* synthetic -- 32x32 shapes of 4 classes, for tests and demos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssl_core.data.dataset import SPLIT_SEED, Raw
from ssl_core.data.settings import DataSettings
from ssl_core.specs.data import SPLIT_SIZES

SYNTHETIC_SIZES = SPLIT_SIZES["synthetic"]  # the same dict: a benchmark that resizes the set is budgeted right
SYNTHETIC_SEEDS = {"train": 1234, "test": 5678}
SHAPES = ("circle", "square", "triangle", "cross")


def load_digits(settings: DataSettings, split: str, path: Path | None, size: int | None,
                channels: int | None) -> Raw:
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    cut = int(round(0.8 * len(images)))
    idx = np.sort(order[:cut] if split == "train" else order[cut:])
    x = torch.from_numpy(images[idx]).unsqueeze(1).contiguous()
    y = torch.from_numpy(d.target[idx]).long()
    return x, y, 10


def make_synthetic(n: int, seed: int, size: int = 32) -> tuple[Tensor, Tensor]:
    """n RGB images (n, 3, size, size) uint8 of 4 shape classes (circle, square, triangle,
    cross) with random foreground/background colours, position, size and pixel noise; labels
    (n,) int64. Deterministic for a seed; the class is the shape only, so a model that learns
    shapes beats chance (25%) while colour alone carries no label information."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    r = (0.18 + 0.14 * torch.rand(n, generator=g)) * size  # half-extent in pixels
    cx = r + (size - 2 * r) * torch.rand(n, generator=g)
    cy = r + (size - 2 * r) * torch.rand(n, generator=g)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, size) - cx.view(n, 1, 1)
    dy = coords.view(1, size, 1) - cy.view(n, 1, 1)
    rr = r.view(n, 1, 1)
    circle = dx**2 + dy**2 <= rr**2
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.8 * rr
    triangle = (dy <= 0.8 * rr) & (dx.abs() <= 0.55 * (dy + rr)) & (dy >= -rr)
    cross = ((dx.abs() <= rr / 3) & (dy.abs() <= rr)) | ((dy.abs() <= rr / 3) & (dx.abs() <= rr))
    masks = torch.stack((circle, square, triangle, cross), 1)  # (n, 4, S, S)
    mask = masks[torch.arange(n), labels].unsqueeze(1).float()  # (n, 1, S, S)
    # a light shape on a darker ground, hues independent of the class
    fg = 0.55 + 0.45 * torch.rand(n, 3, 1, 1, generator=g)
    bg = 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    img = mask * fg + (1 - mask) * bg + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels.long()


def load_synthetic(settings: DataSettings, split: str, path: Path | None, size: int | None,
                   channels: int | None) -> Raw:
    x, y = make_synthetic(SYNTHETIC_SIZES[split], SYNTHETIC_SEEDS[split])
    return x, y, 4
