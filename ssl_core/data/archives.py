"""CIFAR-10, CIFAR-100 and STL-10: torchvision's dataset classes over the extracted archives.

Always ``download=False`` first; a missing archive raises DatasetError naming the folder, the
archive and where to get it, unless downloads are allowed. STL-10's 100k unlabeled images
(2.7 GB) are memory-mapped from ``stl10_binary/unlabeled_X.bin`` instead of read into RAM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssl_core.data.dataset import Raw
from ssl_core.data.settings import DataSettings
from ssl_core.errors import DatasetError
from ssl_core.specs import DATASET_FOLDERS

# the archive each set is extracted from, and where to get it
ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "cifar100": ("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "stl10": ("stl10_binary.tar.gz", "https://cs.stanford.edu/~acoates/stl10/"),
}


def archive_dir(name: str, settings: DataSettings) -> Path:
    """The folder under the data root that holds an extracted archive's files."""
    return settings.data_root / DATASET_FOLDERS[name]


def _missing_archive(name: str, settings: DataSettings, err: Exception | None = None) -> DatasetError:
    archive, url = ARCHIVES[name]
    where = archive_dir(name, settings)
    detail = f" ({err})" if err else ""
    return DatasetError(
        f"dataset {name}: not found or incomplete in {where}{detail}. Fix: download {archive} from {url} and "
        f"extract it into {settings.data_root} (so that {where}/ holds its files), or set "
        f"PRETEXTLAB_ALLOW_DOWNLOAD=1 and run `pretextlab data prepare {name}` to let torchvision download it."
    )


def torchvision_set(name: str, settings: DataSettings, **kw: Any) -> Any:
    """torchvision's dataset object for ``name`` (kw: ``train=`` or ``split=``), downloading only if allowed."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "stl10": datasets.STL10}[name]
    try:
        return cls(str(settings.data_root), download=False, **kw)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        if settings.allow_download:
            return cls(str(settings.data_root), download=True, **kw)
        raise _missing_archive(name, settings, e) from None


def _load_cifar(name: str, settings: DataSettings, split: str) -> Raw:
    ds = torchvision_set(name, settings, train=(split == "train"))
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return x, torch.as_tensor(ds.targets, dtype=torch.long), 100 if name == "cifar100" else 10


def load_cifar10(settings: DataSettings, split: str, path: Path | None, size: int | None,
                 channels: int | None) -> Raw:
    return _load_cifar("cifar10", settings, split)


def load_cifar100(settings: DataSettings, split: str, path: Path | None, size: int | None,
                  channels: int | None) -> Raw:
    return _load_cifar("cifar100", settings, split)


def _stl10_unlabeled(settings: DataSettings) -> Tensor:
    """The 100k unlabeled STL-10 images, memory-mapped (not read into RAM): (N, 3, 96, 96) uint8.

    The binary stores each image column-major; the transpose is a view."""
    f = archive_dir("stl10", settings) / "unlabeled_X.bin"
    if not f.is_file():
        if settings.allow_download:
            torchvision_set("stl10", settings, split="unlabeled")
        else:
            raise _missing_archive("stl10", settings)
    mm = np.memmap(f, dtype=np.uint8, mode="c").reshape(-1, 3, 96, 96)  # copy-on-write: writable, file untouched
    return torch.from_numpy(mm).transpose(2, 3)


def load_stl10(settings: DataSettings, split: str, path: Path | None = None, size: int | None = None,
               channels: int | None = None) -> Raw:
    if split == "unlabeled":
        return _stl10_unlabeled(settings), None, None
    if split == "train+unlabeled":
        train = load_stl10(settings, "train")[0]
        return torch.cat([train, _stl10_unlabeled(settings)]), None, None
    ds = torchvision_set("stl10", settings, split=split)
    return torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels, dtype=torch.long), 10
