"""The in-memory dataset object, the loader contract, and the tensor conversions between them.

Every dataset is held as a uint8 tensor (N, C, H, W) on the CPU, so the training loop indexes a
tensor and augments on the device (ssl_core.augment) -- no per-image PIL decode per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.augment.base import LUMA
from ssl_core.data.settings import DataSettings
from ssl_core.errors import DatasetError

# the seed of the fixed 80/20 train/test split of sets that come without one (digits, image folders)
SPLIT_SEED = 0

# What a loader returns: uint8 images (N, C, H, W), int64 labels (N,) or None, num_classes or None.
Raw = tuple[Tensor, "Tensor | None", "int | None"]
# A loader: (settings, split, path | None, image_size | None, channels | None) -> Raw. Loaders of
# fixed-size sets return their native size and channels (load_dataset converts); the image-folder
# loader decodes straight to the target.
RawLoader = Callable[[DataSettings, str, "Path | None", "int | None", "int | None"], Raw]


@dataclass
class ImageTensorDataset(torch.utils.data.Dataset):
    """A labelled (or unlabeled) image set held as tensors.

    images: uint8 (N, C, H, W) on the CPU; labels: int64 (N,) or None; num_classes: None when
    unlabeled. Shared with the in-process cache: treat the tensors as read-only.
    """

    images: Tensor
    labels: Tensor | None
    num_classes: int | None
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], (int(self.labels[i]) if self.labels is not None else -1)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __repr__(self) -> str:
        return (f"ImageTensorDataset({self.name}/{self.split}: {tuple(self.images.shape)} uint8, "
                f"{'labels ' + str(self.num_classes) if self.labels is not None else 'unlabeled'})")


def subset_indices(n: int, subset: int | None, seed: int) -> Tensor | None:
    """The seeded random subset of ``subset`` of ``n`` items, in their original order (None: all)."""
    if subset is None or subset >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:subset].sort().values


def resize_images(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), bilinear with anti-aliasing, in chunks."""
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """1 -> 3 repeats the gray plane; 3 -> 1 takes the ITU-R 601 luma."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DatasetError(f"cannot convert {c}-channel images to {channels} channels")
