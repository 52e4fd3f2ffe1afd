"""Datasets as uint8 tensors in memory: one registry, safe paths, offline-first.

Every dataset is loaded once into a uint8 tensor (N, C, H, W) on the CPU, so the training
loop indexes a tensor and augments on the device (ssl_core.augment). Sources (torchvision's
dataset classes where they exist, always ``download=False`` first), one module each:

* :mod:`~ssl_core.data.fashion_mnist` -- Fashion-MNIST's IDX files, copied from Debian's
  ``dataset-fashion-mnist`` package when needed;
* :mod:`~ssl_core.data.archives` -- CIFAR-10 / CIFAR-100 / STL-10 from their extracted archives;
* :mod:`~ssl_core.data.bundled` -- scikit-learn's 8x8 digits and generated shapes (synthetic);
* :mod:`~ssl_core.data.folders` -- image folders, decoded once or streamed when too big.

Around them: :mod:`~ssl_core.data.settings` (:class:`DataSettings`, the one reader of the
``PRETEXTLAB_*`` environment, and the safe-path check), :mod:`~ssl_core.data.dataset` (the
dataset object and tensor conversions) and :mod:`~ssl_core.data.load` (the registry, the
in-process cache, :func:`load_dataset`, :func:`prepare`).

Downloads happen only when ``PRETEXTLAB_ALLOW_DOWNLOAD=1``; otherwise missing data raises
:class:`~ssl_core.errors.DatasetError` naming every path looked in and how to get the data.
"""

from ssl_core.data.bundled import SYNTHETIC_SEEDS, SYNTHETIC_SIZES, make_synthetic
from ssl_core.data.dataset import ImageTensorDataset, RawLoader, convert_channels, resize_images, subset_indices
from ssl_core.data.folders import (
    IMAGE_EXTENSIONS, DecodedImages, image_folder_files, stream_image_folder, streaming_samples,
)
from ssl_core.data.load import (
    DATASET_LOADERS, clear_cache, dataset_spec_loader, load_dataset, load_from_spec, prepare,
)
from ssl_core.data.settings import (
    DEFAULT_MAX_IN_MEMORY_BYTES, DataSettings, allowed_roots, data_root, loader_workers, max_in_memory_bytes,
    resolve_path,
)
from ssl_core.errors import DatasetError
from ssl_core.specs import DEBIAN_FASHION_MNIST, FASHION_FILES

__all__ = [
    "DATASET_LOADERS", "DEBIAN_FASHION_MNIST", "DEFAULT_MAX_IN_MEMORY_BYTES", "FASHION_FILES", "IMAGE_EXTENSIONS",
    "SYNTHETIC_SEEDS", "SYNTHETIC_SIZES", "DataSettings", "DatasetError", "DecodedImages", "ImageTensorDataset",
    "RawLoader", "allowed_roots", "clear_cache", "convert_channels", "data_root", "dataset_spec_loader",
    "image_folder_files", "load_dataset", "load_from_spec", "loader_workers", "make_synthetic",
    "max_in_memory_bytes", "prepare", "resize_images", "resolve_path", "stream_image_folder",
    "streaming_samples", "subset_indices",
]
