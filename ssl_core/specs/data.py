"""The datasets: static facts the validators and the API need without touching data, and DataSpec.

:data:`DATASETS` describes each dataset (size, channels, splits, normalisation statistics);
:data:`DATASET_FOLDERS`, :data:`FASHION_FILES` and :data:`DEBIAN_FASHION_MNIST` say where its
files live, so the API can report what is present without importing the loaders (which load
torch) and the loaders in :mod:`ssl_core.data` read the same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ssl_core.specs.base import MAX_IMAGE_SIZE, MAX_PATH_LENGTH, MAX_SUBSET, Int, IntChoice, Real, Strict, climbs_or_has_nul


class DatasetInfo(Strict):
    name: str
    image_size: Int | None  # native side in pixels; None = varies (resize required)
    channels: Int
    num_classes: Int | None
    pretrain_split: str
    train_split: str  # labelled split used as the kNN bank / probe training set
    test_split: str
    splits: tuple[str, ...]
    mean: tuple[Real, ...]
    std: tuple[Real, ...]
    description: str


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            name="fashion_mnist", image_size=28, channels=1, num_classes=10,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.2860,), std=(0.3530,),
            description="Fashion-MNIST, 70k 28x28 grayscale (Debian dataset-fashion-mnist works offline)",
        ),
        DatasetInfo(
            name="digits", image_size=8, channels=1, num_classes=10,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.3050,), std=(0.3786,),
            description="scikit-learn's bundled 8x8 digits (1797 images; 80/20 split, seeded)",
        ),
        DatasetInfo(
            name="cifar10", image_size=32, channels=3, num_classes=10,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
            description="CIFAR-10, 60k 32x32 RGB",
        ),
        DatasetInfo(
            name="cifar100", image_size=32, channels=3, num_classes=100,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
            description="CIFAR-100, 60k 32x32 RGB",
        ),
        DatasetInfo(
            name="stl10", image_size=96, channels=3, num_classes=10,
            pretrain_split="unlabeled", train_split="train", test_split="test",
            splits=("unlabeled", "train", "test", "train+unlabeled"),
            mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
            description="STL-10, 100k unlabeled + 5k/8k labelled 96x96 RGB",
        ),
        DatasetInfo(
            name="image_folder", image_size=None, channels=3, num_classes=None,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test", "all"), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
            description="a folder of class sub-folders (or a split folder holding them); needs data.path and data.image_size",
        ),
        DatasetInfo(
            name="synthetic", image_size=32, channels=3, num_classes=4,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
            description="procedurally generated shapes with labels, for tests only",
        ),
    ]
}

DatasetName = Literal["fashion_mnist", "digits", "cifar10", "cifar100", "stl10", "image_folder", "synthetic"]

# Images per split of the built-in sets (digits: the seeded 80/20 split of 1797; synthetic: generated).
# The memory budget and the MoCo queue check read them before any file is opened.
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "fashion_mnist": {"train": 60_000, "test": 10_000},
    "digits": {"train": 1438, "test": 359},
    "cifar10": {"train": 50_000, "test": 10_000},
    "cifar100": {"train": 50_000, "test": 10_000},
    "stl10": {"unlabeled": 100_000, "train": 5000, "test": 8000, "train+unlabeled": 105_000},
    "synthetic": {"train": 2000, "test": 500},
}

# Where each dataset's files live under the data root (the loaders read them there).
DATASET_FOLDERS = {
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "stl10": "stl10_binary",
}
# Fashion-MNIST's four IDX files; the Debian package dataset-fashion-mnist ships them gzipped here
# (PRETEXTLAB_FASHION_MNIST_SOURCE points elsewhere), and the loader copies them into the data root.
FASHION_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataSpec(Strict):
    dataset: DatasetName = "fashion_mnist"
    split: str | None = Field(None, description="None = the dataset's pretraining split")
    path: str | None = Field(
        None, max_length=MAX_PATH_LENGTH, description="image_folder only: a folder inside the allowed data roots (relative to the data root or absolute)"
    )
    image_size: Int | None = Field(
        None, ge=4, le=MAX_IMAGE_SIZE, description="resize side in pixels; None = the dataset's native size"
    )
    subset: Int | None = Field(None, ge=1, le=MAX_SUBSET, description="use a seeded random subset of this many images")
    storage_size: Int | None = Field(
        None, ge=4, le=MAX_IMAGE_SIZE,
        description="image_folder pretraining: the side at which each WHOLE image is kept (resized to a square, "
        "aspect not kept) for the augmentation to crop from; None = 8/7 of image_size (256 for 224) when the "
        "augmentation starts with random_resized_crop, else images are kept at image_size, shorter side resized "
        "and centre-cropped (as evaluation reads them)",
    )
    channels: Annotated[Literal[1, 3], IntChoice] | None = Field(None, description="None = the dataset's own; 3 on a grayscale set repeats it")

    @model_validator(mode="after")
    def _check(self) -> "DataSpec":
        info = DATASETS[self.dataset]
        if self.split is not None and self.split not in info.splits:
            raise ValueError(f"data.split: {self.split!r} is not a split of {self.dataset} (one of {list(info.splits)})")
        if self.dataset == "image_folder":
            if not self.path:
                raise ValueError("data.path: image_folder needs a folder path")
            if self.image_size is None:
                raise ValueError("data.image_size: image_folder needs an image size to resize to")
        elif self.path is not None:
            raise ValueError(f"data.path: only image_folder takes a path, not {self.dataset}")
        if self.storage_size is not None:
            if self.dataset != "image_folder":
                raise ValueError(f"data.storage_size: only image_folder is resized on loading, not {self.dataset}")
            if self.image_size is not None and self.storage_size < self.image_size:
                raise ValueError(f"data.storage_size: {self.storage_size} px is below data.image_size "
                                 f"{self.image_size} px (the crops would be upsampled)")
        if self.path is not None and climbs_or_has_nul(self.path):
            raise ValueError("data.path: '..' and NUL are not allowed in a dataset path")
        return self

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.dataset]

    @property
    def resolved_split(self) -> str:
        return self.split or self.info.pretrain_split

    @property
    def resolved_image_size(self) -> int:
        return int(self.image_size or self.info.image_size)  # validator guarantees one is set

    def default_storage_size(self, crops: bool) -> int | None:
        """The storage side a folder gets when none is given: 8/7 of the training side (ImageNet's
        256 for 224) when the augmentation resamples crops (``crops``), else None (kept at image_size)."""
        if self.dataset != "image_folder" or not crops:
            return None
        return round(self.resolved_image_size * 8 / 7)

    @property
    def known_size(self) -> int | None:
        """Images in the resolved split after ``subset`` when known without reading any file (the
        built-in sets); None for an image folder, whose files are counted by the loader."""
        sizes = SPLIT_SIZES.get(self.dataset)
        if sizes is None:
            return None
        n = sizes[self.resolved_split]
        return n if self.subset is None else min(n, self.subset)

    @property
    def resolved_channels(self) -> int:
        return int(self.channels or self.info.channels)
