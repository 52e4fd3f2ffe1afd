"""The memory budget of a dataset request, checked before anything is decoded or resized.

A decoded set is ``N x C x S x S`` uint8 bytes (N images after ``subset``, C channels, S the side
after resizing). :func:`check_dataset_budget` refuses a request above
``PRETEXTLAB_MAX_DATASET_BYTES`` (:class:`~ssl_core.data.settings.DataSettings`) with a
DatasetError naming ``data.image_size`` / ``data.subset`` and the computed size, so one small
spec (``stl10`` at 512 px: 79 GB) cannot exhaust a worker's memory. The built-in sets' sizes
are known (:data:`ssl_core.specs.data.SPLIT_SIZES`), so the check runs before their files are
read; an image folder's is the number of its files, counted before any is decoded. An image
folder kept for pretraining at ``data.storage_size`` (8/7 of the training side by default for
crop-based augmentation) is budgeted at that side: (8/7)^2 = 1.31x the bytes of the training size.
"""

from __future__ import annotations

from ssl_core.data.settings import DataSettings
from ssl_core.errors import DatasetError
from ssl_core.specs.data import SPLIT_SIZES

__all__ = ["SPLIT_SIZES", "check_dataset_budget", "decoded_bytes", "kept"]


def kept(n: int, subset: int | None) -> int:
    """Images left of ``n`` after ``subset``."""
    return n if subset is None else min(n, subset)


def decoded_bytes(n: int, channels: int, size: int) -> int:
    return n * channels * size * size


def check_dataset_budget(settings: DataSettings, name: str, split: str, n: int, channels: int, size: int) -> int:
    """The decoded bytes of ``n`` images of ``channels`` x ``size`` x ``size``; DatasetError above the budget."""
    need = decoded_bytes(n, channels, size)
    limit = settings.max_dataset_bytes
    if need > limit:
        raise DatasetError(
            f"dataset {name} ({split}): {n} images of {channels} x {size} x {size} px need {_gib(need)} decoded, "
            f"more than this worker's budget PRETEXTLAB_MAX_DATASET_BYTES ({_gib(limit)}); lower data.image_size "
            "or data.subset (an image folder's pretraining: data.storage_size; an evaluation: data.train_subset / "
            "data.test_subset / data.image_size)")
    return need


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**24 else f"{n:,} bytes"
