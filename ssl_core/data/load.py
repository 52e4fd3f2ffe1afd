"""One entry point per task: :func:`load_dataset` (cached in-process) and :func:`prepare`.

Order of work, so memory follows the request and not the dataset: the budget is checked first
(:mod:`ssl_core.data.budget`: N after ``subset`` x C x S x S bytes, before any file is read or
decoded), then the subset is taken, and only then are channels converted and images resized.

Decoded tensors are memoised on (data root, name, split, path, size, channels, subset, seed), so
the trainer's kNN monitor and a following evaluation do not read files again; the cache holds at
most :data:`CACHE_SIZE` entries and ``PRETEXTLAB_MAX_CACHE_BYTES`` bytes (least recently used
dropped first; a larger set is returned but not kept). The settings do not select a cache entry
beyond the data root: a changed memory limit, for instance, does not reload a set already decoded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ssl_core.data.archives import archive_dir, load_cifar10, load_cifar100, load_stl10, torchvision_set
from ssl_core.data.budget import SPLIT_SIZES, check_dataset_budget, kept
from ssl_core.data.bundled import load_digits, load_synthetic
from ssl_core.data.dataset import ImageTensorDataset, Raw, RawLoader, convert_channels, resize_images, subset_indices
from ssl_core.data.fashion_mnist import load_fashion_mnist, prepare_fashion_mnist
from ssl_core.data.folders import folder_help, load_image_folder
from ssl_core.data.settings import DataSettings, resolve_path
from ssl_core.errors import DatasetError
from ssl_core.specs import DATASETS

DATASET_LOADERS: dict[str, RawLoader] = {
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "image_folder": load_image_folder,
    "synthetic": load_synthetic,
}

CACHE_SIZE = 8
_cache: OrderedDict[tuple[Any, ...], Raw] = OrderedDict()
_cache_lock = threading.Lock()  # local workers may load from several threads


def _decode(settings: DataSettings, name: str, split: str, path: str | None, size: int | None,
            channels: int | None, subset: int | None, seed: int, full_image: bool = False) -> Raw:
    """The loader's tensors: budget checked, subset taken, then converted to ``channels`` and resized
    to ``size`` (None = native)."""
    if name == "image_folder":  # lists its files, checks the budget and decodes only the kept ones
        return load_image_folder(settings, split, Path(path) if path else None, size, channels,
                                 subset=subset, seed=seed, full_image=full_image)
    info = DATASETS[name]
    out_channels, out_size = channels or info.channels, size or int(info.image_size or 0)
    check_dataset_budget(settings, name, split, kept(SPLIT_SIZES[name][split], subset), out_channels, out_size)
    x, y, k = DATASET_LOADERS[name](settings, split, None, size, channels)
    idx = subset_indices(int(x.shape[0]), subset, seed)
    if idx is not None:
        x = x[idx]  # STL-10's memory-mapped split: only these rows are read
        y = y[idx] if y is not None else None
    check_dataset_budget(settings, name, split, int(x.shape[0]), out_channels, out_size)  # files may differ
    if channels is not None:
        x = convert_channels(x, channels)
    if size is not None and size != x.shape[-1]:
        x = resize_images(x, size)
    return x, y, k


def _nbytes(value: Raw) -> int:
    x, y, _ = value
    return x.nbytes + (y.nbytes if y is not None else 0)


def _cached(settings: DataSettings, name: str, split: str, path: str | None, size: int | None,
            channels: int | None, subset: int | None, seed: int, full_image: bool = False) -> Raw:
    """:func:`_decode`, memoised (see the module docstring for the cache's bounds)."""
    key = (str(settings.data_root), name, split, path, size, channels, subset, seed if subset is not None else None,
           full_image)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = _decode(settings, name, split, path, size, channels, subset, seed, full_image)
    if _nbytes(value) > settings.max_cache_bytes:
        return value  # larger than the whole cache: used once, not kept
    with _cache_lock:
        _cache[key] = value
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE or sum(_nbytes(v) for v in _cache.values()) > settings.max_cache_bytes:
            _cache.popitem(last=False)
    return value


def load_dataset(
    name: str, split: str, *, path: str | None = None, image_size: int | None = None,
    channels: int | None = None, subset: int | None = None, seed: int = 0, settings: DataSettings | None = None,
    full_image: bool = False,
) -> ImageTensorDataset:
    """Load a dataset split as uint8 tensors (cached in-process).

    path: image_folder only (see :func:`~ssl_core.data.settings.resolve_path`); image_size: resize
    side (None = native); channels: 1 or 3 (None = native; 3 on a gray set repeats it); subset: a
    seeded random subset of that many images (in their original order), taken before resizing;
    settings: default read from the environment, once, here; full_image: an image folder's whole
    images resized to image_size x image_size instead of a centre crop (pretraining with
    ``data.storage_size``, :class:`~ssl_core.data.folders.DecodedImages`). DatasetError when the
    decoded set would exceed PRETEXTLAB_MAX_DATASET_BYTES (checked before anything is decoded).
    """
    if name not in DATASET_LOADERS:
        raise DatasetError(f"unknown dataset {name!r} (one of {sorted(DATASET_LOADERS)})")
    info = DATASETS[name]
    if split not in info.splits:
        raise DatasetError(f"dataset {name}: no split {split!r} (one of {list(info.splits)})")
    if (path is not None or full_image) and name != "image_folder":
        raise DatasetError(f"dataset {name}: only image_folder takes a path or a storage size")
    settings = settings or DataSettings.from_env()
    resolved = str(resolve_path(path, settings)) if path is not None else None
    if name == "image_folder" and resolved is None:
        raise DatasetError("dataset image_folder: needs data.path (a folder inside the allowed data roots)")
    # native size / channels asked explicitly: the same cache entry as None
    size = image_size if (image_size != info.image_size or name == "image_folder") else None
    if channels == info.channels:
        channels = None
    x, y, k = _cached(settings, name, split, resolved, size, channels, subset, seed, full_image)
    return ImageTensorDataset(images=x, labels=y, num_classes=k, name=name, split=split)


def load_from_spec(data: Any, seed: int = 0, settings: DataSettings | None = None) -> ImageTensorDataset:
    """load_dataset for a specs.DataSpec (the pretraining data)."""
    return load_dataset(
        data.dataset, data.resolved_split, path=data.path, image_size=data.image_size,
        channels=data.channels, subset=data.subset, seed=seed, settings=settings,
    )


dataset_spec_loader = load_from_spec


def prepare(name: str, settings: DataSettings | None = None) -> Path:
    """Make a dataset available under the data root without the network where possible
    (`pretextlab data prepare NAME`). Returns the folder that holds it."""
    settings = settings or DataSettings.from_env()
    if name == "fashion_mnist":
        return prepare_fashion_mnist(settings)
    if name in ("digits", "synthetic"):
        return settings.data_root  # bundled with scikit-learn / generated: nothing to fetch
    if name in ("cifar10", "cifar100"):
        torchvision_set(name, settings, train=True)
        torchvision_set(name, settings, train=False)
        return archive_dir(name, settings)
    if name == "stl10":
        torchvision_set("stl10", settings, split="train")
        return archive_dir(name, settings)
    if name == "image_folder":
        raise DatasetError(
            "dataset image_folder: nothing to prepare; " + folder_help(settings.data_root / "<folder>", "place the images")
        )
    raise DatasetError(f"unknown dataset {name!r} (one of {sorted(DATASET_LOADERS)})")


def clear_cache() -> None:
    """Forget the decoded tensors (tests; a long-lived worker after a dataset changed on disk)."""
    with _cache_lock:
        _cache.clear()
