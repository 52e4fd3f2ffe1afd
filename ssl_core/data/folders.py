"""Image folders: class sub-folders (or a flat folder, unlabeled), decoded once or streamed.

Layouts: ``root/<class>/*`` or ``root/{train,test}/<class>/*``; torchvision's ``ImageFolder``
finds the classes. Images are decoded in DataLoader workers and either resized (shorter side)
and centre-cropped, as evaluation reads them, or (``full_image``, pretraining with a storage
size) resized whole to a square, so the augmentation's crops can reach every part of the image
as torchvision's RandomResizedCrop on the full image does; only the aspect ratio is not kept.
A folder whose decoded tensor would exceed PRETEXTLAB_MAX_IN_MEMORY_BYTES is streamed instead:
:func:`streaming_samples` tells the trainer which files, :func:`stream_image_folder` is a
ready-made DataLoader.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssl_core.data.budget import check_dataset_budget
from ssl_core.data.dataset import SPLIT_SEED, Raw, subset_indices
from ssl_core.data.settings import DataSettings, resolve_path
from ssl_core.errors import DatasetError
from ssl_core.specs import DATASETS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def image_folder_files(root: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) pairs and class names of an image folder split.

    Layouts: ``root/<class>/*`` or ``root/{train,test}/<class>/*`` (split folders win when
    present; split "all" = every split folder). Without split folders, "train" / "test" are
    a fixed seeded 80/20 split of the files and "all" is everything. A folder holding
    images directly (no class folders) is unlabeled: every label is -1 and there are no classes.
    """
    from torchvision.datasets import ImageFolder

    split_dirs = [d for d in ("train", "test") if (root / d).is_dir()]
    if split_dirs:
        if split == "all":
            dirs = [root / d for d in split_dirs]
        elif (root / split).is_dir():
            dirs = [root / split]
        else:
            raise DatasetError(f"dataset image_folder: {root} has split folders {split_dirs} but no {split!r}")
        # classes from every split folder, so a class missing from one split keeps its index
        classes = sorted({c.name for d in split_dirs for c in (root / d).iterdir() if c.is_dir()})
        samples: list[tuple[str, int]] = []
        for d in dirs:
            samples += _folder_samples(d, classes)
        return samples, classes
    subdirs = [c for c in root.iterdir() if c.is_dir()] if root.is_dir() else []
    if subdirs:
        try:
            folder = ImageFolder(str(root), allow_empty=True)
        except (FileNotFoundError, OSError) as e:
            raise DatasetError(f"dataset image_folder: cannot read {root}: {e}") from None
        samples, classes = [(p, int(y)) for p, y in folder.samples], list(folder.classes)
    else:
        samples, classes = [(str(p), -1) for p in sorted(root.iterdir()) if _is_image(p)], []
    if not samples:
        raise DatasetError(folder_help(root, "no images found"))
    if split == "all":
        return samples, classes
    order = np.random.default_rng(SPLIT_SEED).permutation(len(samples))
    cut = max(1, int(round(0.8 * len(samples))))
    keep = np.sort(order[:cut] if split == "train" else order[cut:])
    return [samples[i] for i in keep], classes


def _folder_samples(d: Path, classes: list[str]) -> list[tuple[str, int]]:
    out = []
    for i, c in enumerate(classes):
        if (d / c).is_dir():
            out += [(str(p), i) for p in sorted((d / c).rglob("*")) if _is_image(p)]
    return out


def folder_help(root: Path, what: str) -> str:
    return (
        f"dataset image_folder: {what} in {root}. Layout: <folder>/<class>/<image>.png (one sub-folder per "
        "class), optionally inside <folder>/train/ and <folder>/test/; a folder of images without class "
        f"sub-folders is used unlabeled. Extensions: {', '.join(IMAGE_EXTENSIONS)}."
    )


class DecodedImages(torch.utils.data.Dataset):
    """Decodes files to uint8 (C, size, size): shorter side resized to `size` (anti-aliased) and
    centre-cropped, or with ``full_image`` the whole image resized to size x size (a non-square
    image is squeezed: a uint8 batch holds one shape, and no part of the image is cut away). Runs in
    DataLoader workers, once per image (load_dataset) or per epoch (stream_image_folder); PIL decodes
    (JPEG draft mode shrinks large photos while decoding)."""

    def __init__(self, samples: list[tuple[str, int]], size: int, channels: int, full_image: bool = False):
        self.samples, self.size, self.channels, self.full_image = samples, size, channels, full_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        import torchvision.transforms.v2.functional as TF
        from PIL import Image

        path, label = self.samples[i]
        mode = "RGB" if self.channels == 3 else "L"
        try:
            with Image.open(path) as im:
                im.draft(mode, (self.size, self.size))
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - any decoder failure names the file
            raise DatasetError(f"dataset image_folder: cannot decode {path}: {e}") from None
        img = torch.from_numpy(arr.copy()).view(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1)
        if self.full_image:
            img = TF.resize(img, [self.size, self.size], antialias=True)
        else:
            img = TF.resize(img, [self.size], antialias=True)
            img = TF.center_crop(img, [self.size, self.size])
        return img.contiguous(), label


def _decode_workers(n: int) -> int:
    return 0 if n < 512 else min(8, os.cpu_count() or 1)


def streaming_samples(
    name: str, split: str, *, path: str | None, image_size: int, channels: int,
    subset: int | None = None, seed: int = 0, settings: DataSettings | None = None,
) -> list[tuple[str, int]] | None:
    """The (file, label) pairs to stream when an image folder is too big for memory, else None.

    An image folder whose decoded uint8 tensor (the files kept after ``subset``, C x S x S bytes
    each) exceeds PRETEXTLAB_MAX_IN_MEMORY_BYTES is refused by ``load_dataset``; the trainer streams
    it instead (DataLoader workers decode each batch, :class:`DecodedImages`). ``subset`` selects the
    same files ``load_dataset`` would keep. Other datasets are never streamed: they need no
    decoding (STL-10's unlabeled split is a memory-mapped uint8 view that is sliced per batch).
    """
    if name != "image_folder":
        return None
    if path is None:
        raise DatasetError("dataset image_folder: needs data.path (a folder inside the allowed data roots)")
    settings = settings or DataSettings.from_env()
    samples, _ = image_folder_files(resolve_path(path, settings), split)
    keep = subset_indices(len(samples), subset, seed)
    samples = samples if keep is None else [samples[i] for i in keep.tolist()]
    if len(samples) * channels * image_size * image_size <= settings.max_in_memory_bytes:
        return None
    return samples


def load_image_folder(settings: DataSettings, split: str, path: Path | None, size: int | None,
                      channels: int | None, subset: int | None = None, seed: int = 0, full_image: bool = False) -> Raw:
    """The folder's images decoded to (N, C, size, size): only the ``subset`` kept (the files are
    listed, the subset drawn, the budget checked at ``size``, then those files decoded); ``full_image``:
    see :class:`DecodedImages`."""
    if path is None or size is None:
        raise DatasetError("dataset image_folder: needs data.path and data.image_size")
    channels = channels or DATASETS["image_folder"].channels
    samples, classes = image_folder_files(path, split)
    keep = subset_indices(len(samples), subset, seed)
    if keep is not None:
        samples = [samples[i] for i in keep.tolist()]
    check_dataset_budget(settings, "image_folder", split, len(samples), channels, size)
    need = len(samples) * channels * size * size
    limit = settings.max_in_memory_bytes
    if need > limit:
        raise DatasetError(
            f"dataset image_folder: {len(samples)} images at {size} px need {need / 2**30:.1f} GiB decoded, more "
            f"than PRETEXTLAB_MAX_IN_MEMORY_BYTES ({limit / 2**30:.1f} GiB); use a smaller image_size, "
            "raise the limit, or stream it with ssl_core.data.stream_image_folder() (pretraining streams "
            "such folders by itself)"
        )
    images = torch.empty((len(samples), channels, size, size), dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.long)
    loader = torch.utils.data.DataLoader(
        DecodedImages(samples, size, channels, full_image), batch_size=256, num_workers=_decode_workers(len(samples)),
    )
    at = 0
    for x, y in loader:
        images[at : at + len(x)] = x
        labels[at : at + len(x)] = y
        at += len(x)
    if not classes:
        return images, None, None
    return images, labels, len(classes)


def stream_image_folder(
    path: str, split: str = "train", *, image_size: int, channels: int = 3, batch_size: int = 256,
    shuffle: bool = True, seed: int = 0, num_workers: int | None = None, pin_memory: bool | None = None,
    drop_last: bool = True, settings: DataSettings | None = None,
) -> torch.utils.data.DataLoader:
    """The streaming path for image folders too big to hold decoded in memory: a DataLoader
    whose workers decode files to uint8 (C, size, size), yielding (uint8 (B, C, S, S), int64 (B,)
    labels, -1 when unlabeled) in pinned memory, ready for ``.to(device, non_blocking=True)``
    and device-side augmentation. ``load_dataset`` refuses folders larger than
    PRETEXTLAB_MAX_IN_MEMORY_BYTES and points here."""
    root = resolve_path(path, settings)
    samples, _ = image_folder_files(root, split)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        DecodedImages(samples, image_size, channels), batch_size=batch_size, shuffle=shuffle, generator=g,
        num_workers=min(8, os.cpu_count() or 1) if num_workers is None else num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last, persistent_workers=False,
    )
