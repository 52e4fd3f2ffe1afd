"""Datasets as uint8 tensors in memory: one registry, safe paths, offline-first.

Every dataset is loaded once into a uint8 tensor (N, C, H, W) on the CPU, so the
training loop indexes a tensor and augments on the device (ssl_core.augment) --
no per-image PIL decode per step. Decoded tensors are cached in-process
(:func:`load_dataset` is memoised on (data root, name, split, path, size, channels)),
so the trainer's kNN monitor and a following evaluation do not read files again.

Sources (torchvision's dataset classes where they exist, always ``download=False`` first):

* fashion_mnist -- torchvision ``FashionMNIST`` over ``<data root>/FashionMNIST/raw``;
  :func:`prepare` fills that folder from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``), which the loader does by itself when needed.
* digits -- scikit-learn's bundled 8x8 digits (0..16 scaled to 0..255), a fixed seeded 80/20 split.
* cifar10 / cifar100 -- torchvision ``CIFAR10`` / ``CIFAR100`` (``cifar-10-batches-py`` /
  ``cifar-100-python`` under the data root).
* stl10 -- torchvision ``STL10`` for train/test; the 100k unlabeled images (2.7 GB) are
  memory-mapped from ``stl10_binary/unlabeled_X.bin`` instead of read into RAM.
* image_folder -- class sub-folders (torchvision ``ImageFolder`` finds them), optionally under
  ``train/`` and ``test/``; a flat folder of images is an unlabeled set. Decoded once, in
  DataLoader workers, resized (shorter side) and centre-cropped. A folder too big for memory
  (over PRETEXTLAB_MAX_IN_MEMORY_BYTES decoded) is streamed instead: :func:`streaming_samples`
  tells the trainer which files, :func:`stream_image_folder` is a ready-made DataLoader.
* synthetic -- procedurally generated 32x32 shapes (4 classes), for tests and demos.

Downloads happen only when ``PRETEXTLAB_ALLOW_DOWNLOAD=1``; otherwise missing data raises
:class:`~ssl_core.errors.DatasetError` naming every path looked in and how to get the data.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core import specs
from ssl_core.errors import DatasetError
from ssl_core.paths import PathOutsideRoots, resolve_inside

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# image folders whose decoded tensor would exceed this stay on disk: use stream_image_folder()
DEFAULT_MAX_IN_MEMORY_BYTES = 8 << 30


# ---------------------------------------------------------------------------
# Roots and paths
def data_root() -> Path:
    """PRETEXTLAB_DATA_ROOT, default ./data (absolute)."""
    return Path(os.environ.get("PRETEXTLAB_DATA_ROOT") or "data").expanduser().absolute()


def allowed_roots() -> list[Path]:
    """The data root plus PRETEXTLAB_ALLOWED_DATA_ROOTS (os.pathsep- or comma-separated)."""
    roots = [data_root()]
    extra = os.environ.get("PRETEXTLAB_ALLOWED_DATA_ROOTS", "")
    for part in extra.replace(",", os.pathsep).split(os.pathsep):
        if part.strip():
            roots.append(Path(part.strip()).expanduser().absolute())
    return roots


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """A user-given dataset path, relative to the data root or absolute, resolved with symlinks
    followed; it must lie inside one of :func:`allowed_roots` and exist, else DatasetError."""
    try:
        real = resolve_inside(path, allowed_roots(), field="dataset path")
    except PathOutsideRoots as e:
        raise DatasetError(str(e)) from None
    if not real.exists():
        raise DatasetError(f"dataset path {os.fspath(path)!r} does not exist (looked in {real})")
    return real


def _download_allowed() -> bool:
    return os.environ.get("PRETEXTLAB_ALLOW_DOWNLOAD", "").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------------
# The dataset object
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


# A loader: (split, path | None, image_size | None, channels | None) -> (uint8 images (N, C, H, W),
# int64 labels (N,) | None, num_classes | None). Loaders of fixed-size sets return their native
# size and channels (load_dataset converts); the image-folder loader decodes straight to the target.
RawLoader = Callable[[str, "Path | None", "int | None", "int | None"], "tuple[Tensor, Tensor | None, int | None]"]


# ---------------------------------------------------------------------------
# Fashion-MNIST
def _fashion_raw_dir(root: Path | None = None) -> Path:
    return (root or data_root()) / "FashionMNIST" / "raw"


def _fashion_source() -> Path:
    return Path(os.environ.get("PRETEXTLAB_FASHION_MNIST_SOURCE") or DEBIAN_FASHION_MNIST)


def _fashion_present(raw: Path) -> bool:
    return all((raw / f).is_file() for f in FASHION_FILES)


def _atomic_write(dest: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder, then os.replace (no half files)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the data is public
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_fashion(src: Path, raw: Path) -> None:
    """The Debian .gz files into raw/, compressed and decompressed (what torchvision reads)."""
    for f in FASHION_FILES:
        gz = src / f"{f}.gz"
        if not (raw / f"{f}.gz").is_file():
            def copy(out, gz=gz):
                with gz.open("rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)
            _atomic_write(raw / f"{f}.gz", copy)
        if not (raw / f).is_file():
            def unzip(out, gz=gz):
                with gzip.open(gz, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)
            _atomic_write(raw / f, unzip)


def _prepare_fashion_mnist() -> Path:
    raw = _fashion_raw_dir()
    if _fashion_present(raw):
        return raw
    src = _fashion_source()
    # .gz files dropped into raw/ by hand, else the Debian package's
    for source in (raw, src):
        if all((source / f"{f}.gz").is_file() for f in FASHION_FILES):
            try:
                _copy_fashion(source, raw)
            except OSError as e:
                raise DatasetError(
                    f"dataset fashion_mnist: cannot copy {source} into {raw} ({e}); make the data root writable "
                    "or point PRETEXTLAB_DATA_ROOT at a writable folder, then `pretextlab data prepare fashion_mnist`"
                ) from None
            return raw
    if _download_allowed():
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(data_root()), train=True, download=True)
        FashionMNIST(str(data_root()), train=False, download=True)
        return raw
    raise DatasetError(
        f"dataset fashion_mnist: not found. Looked in {raw} (files {', '.join(FASHION_FILES)}) and in "
        f"{src} (the Debian package's .gz files). Fix: `apt-get install dataset-fashion-mnist` (offline) "
        "then `pretextlab data prepare fashion_mnist`; or copy the four IDX files (.gz or decompressed) "
        f"into {raw}; or set PRETEXTLAB_ALLOW_DOWNLOAD=1 to let torchvision download them."
    )


def _load_fashion_mnist(split: str, path: Path | None, size: int | None, channels: int | None) -> tuple[Tensor, Tensor | None, int | None]:
    from torchvision.datasets import FashionMNIST

    _prepare_fashion_mnist()
    ds = FashionMNIST(str(data_root()), train=(split == "train"), download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long(), 10


# ---------------------------------------------------------------------------
# digits (scikit-learn)
DIGITS_SPLIT_SEED = 0


def _load_digits(split: str, path: Path | None, size: int | None, channels: int | None) -> tuple[Tensor, Tensor | None, int | None]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # 0..16 -> 0..255
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    cut = int(round(0.8 * len(images)))
    idx = np.sort(order[:cut] if split == "train" else order[cut:])
    x = torch.from_numpy(images[idx]).unsqueeze(1).contiguous()
    y = torch.from_numpy(d.target[idx]).long()
    return x, y, 10


# ---------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 / STL-10 (torchvision classes)
_ARCHIVES = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    "stl10": ("stl10_binary", "stl10_binary.tar.gz", "https://cs.stanford.edu/~acoates/stl10/"),
}


def _missing_archive(name: str, err: Exception | None = None) -> DatasetError:
    folder, archive, url = _ARCHIVES[name]
    where = data_root() / folder
    detail = f" ({err})" if err else ""
    return DatasetError(
        f"dataset {name}: not found or incomplete in {where}{detail}. Fix: download {archive} from {url} and "
        f"extract it into {data_root()} (so that {where}/ holds its files), or set PRETEXTLAB_ALLOW_DOWNLOAD=1 "
        f"and run `pretextlab data prepare {name}` to let torchvision download it."
    )


def _torchvision_set(name: str, **kw: Any) -> Any:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "stl10": datasets.STL10}[name]
    try:
        return cls(str(data_root()), download=False, **kw)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        if _download_allowed():
            return cls(str(data_root()), download=True, **kw)
        raise _missing_archive(name, e) from None


def _load_cifar(name: str, split: str) -> tuple[Tensor, Tensor | None, int | None]:
    ds = _torchvision_set(name, train=(split == "train"))
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return x, torch.as_tensor(ds.targets, dtype=torch.long), 100 if name == "cifar100" else 10


def _stl10_unlabeled() -> Tensor:
    """The 100k unlabeled STL-10 images, memory-mapped (not read into RAM): (N, 3, 96, 96) uint8.

    The binary stores each image column-major; the transpose is a view."""
    f = data_root() / "stl10_binary" / "unlabeled_X.bin"
    if not f.is_file():
        if _download_allowed():
            _torchvision_set("stl10", split="unlabeled")
        else:
            raise _missing_archive("stl10")
    mm = np.memmap(f, dtype=np.uint8, mode="c").reshape(-1, 3, 96, 96)  # copy-on-write: writable, file untouched
    return torch.from_numpy(mm).transpose(2, 3)


def _load_stl10(split: str, path: Path | None, size: int | None = None, channels: int | None = None) -> tuple[Tensor, Tensor | None, int | None]:
    if split == "unlabeled":
        return _stl10_unlabeled(), None, None
    if split == "train+unlabeled":
        train = _load_stl10("train", None)[0]
        return torch.cat([train, _stl10_unlabeled()]), None, None
    ds = _torchvision_set("stl10", split=split)
    return torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels, dtype=torch.long), 10


# ---------------------------------------------------------------------------
# image folders
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
        raise DatasetError(_folder_help(root, "no images found"))
    if split == "all":
        return samples, classes
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(samples))
    cut = max(1, int(round(0.8 * len(samples))))
    keep = np.sort(order[:cut] if split == "train" else order[cut:])
    return [samples[i] for i in keep], classes


def _folder_samples(d: Path, classes: list[str]) -> list[tuple[str, int]]:
    out = []
    for i, c in enumerate(classes):
        if (d / c).is_dir():
            out += [(str(p), i) for p in sorted((d / c).rglob("*")) if _is_image(p)]
    return out


def _folder_help(root: Path, what: str) -> str:
    return (
        f"dataset image_folder: {what} in {root}. Layout: <folder>/<class>/<image>.png (one sub-folder per "
        "class), optionally inside <folder>/train/ and <folder>/test/; a folder of images without class "
        f"sub-folders is used unlabeled. Extensions: {', '.join(IMAGE_EXTENSIONS)}."
    )


class DecodedImages(torch.utils.data.Dataset):
    """Decodes files to uint8 (C, size, size): shorter side resized to `size` (anti-aliased),
    centre-cropped. Runs in DataLoader workers, once per image (load_dataset) or per epoch
    (stream_image_folder); PIL decodes (JPEG draft mode shrinks large photos while decoding)."""

    def __init__(self, samples: list[tuple[str, int]], size: int, channels: int):
        self.samples, self.size, self.channels = samples, size, channels

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
        img = TF.resize(img, [self.size], antialias=True)
        img = TF.center_crop(img, [self.size, self.size])
        return img.contiguous(), label


def _decode_workers(n: int) -> int:
    return 0 if n < 512 else min(8, os.cpu_count() or 1)


def max_in_memory_bytes() -> int:
    """PRETEXTLAB_MAX_IN_MEMORY_BYTES (default 8 GiB): the largest decoded image folder held in memory."""
    return int(os.environ.get("PRETEXTLAB_MAX_IN_MEMORY_BYTES", DEFAULT_MAX_IN_MEMORY_BYTES))


def loader_workers() -> int:
    """DataLoader decode workers for the streaming path: PRETEXTLAB_LOADER_WORKERS, else one per
    usable CPU core but one (the main process feeds the device), at most 16."""
    env = os.environ.get("PRETEXTLAB_LOADER_WORKERS", "").strip()
    if env:
        return max(0, int(env))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores - 1))


def subset_indices(n: int, subset: int | None, seed: int) -> Tensor | None:
    """The seeded random subset of ``subset`` of ``n`` items, in their original order (None: all)."""
    if subset is None or subset >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:subset].sort().values


def streaming_samples(
    name: str, split: str, *, path: str | None, image_size: int, channels: int,
    subset: int | None = None, seed: int = 0,
) -> list[tuple[str, int]] | None:
    """The (file, label) pairs to stream when an image folder is too big for memory, else None.

    An image folder whose decoded uint8 tensor (every file of the split, C x S x S bytes each)
    exceeds :func:`max_in_memory_bytes` is refused by :func:`load_dataset`; the trainer streams it
    instead (DataLoader workers decode each batch, :class:`DecodedImages`). ``subset`` selects the
    same files :func:`load_dataset` would keep. Other datasets are never streamed: they need no
    decoding (STL-10's unlabeled split is a memory-mapped uint8 view that is sliced per batch).
    """
    if name != "image_folder":
        return None
    if path is None:
        raise DatasetError("dataset image_folder: needs data.path (a folder inside the allowed data roots)")
    samples, _ = image_folder_files(resolve_path(path), split)
    if len(samples) * channels * image_size * image_size <= max_in_memory_bytes():
        return None
    keep = subset_indices(len(samples), subset, seed)
    return samples if keep is None else [samples[i] for i in keep.tolist()]


def _load_image_folder(
    split: str, path: Path | None, size: int | None, channels: int | None
) -> tuple[Tensor, Tensor | None, int | None]:
    if path is None or size is None:
        raise DatasetError("dataset image_folder: needs data.path and data.image_size")
    channels = channels or specs.DATASETS["image_folder"].channels
    samples, classes = image_folder_files(path, split)
    need = len(samples) * channels * size * size
    limit = max_in_memory_bytes()
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
        DecodedImages(samples, size, channels), batch_size=256, num_workers=_decode_workers(len(samples)),
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
    drop_last: bool = True,
) -> torch.utils.data.DataLoader:
    """The streaming path for image folders too big to hold decoded in memory: a DataLoader
    whose workers decode files to uint8 (C, size, size), yielding (uint8 (B, C, S, S), int64 (B,)
    labels, -1 when unlabeled) in pinned memory, ready for ``.to(device, non_blocking=True)``
    and device-side augmentation. :func:`load_dataset` refuses folders larger than
    PRETEXTLAB_MAX_IN_MEMORY_BYTES and points here."""
    root = resolve_path(path)
    samples, _ = image_folder_files(root, split)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        DecodedImages(samples, image_size, channels), batch_size=batch_size, shuffle=shuffle, generator=g,
        num_workers=min(8, os.cpu_count() or 1) if num_workers is None else num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last, persistent_workers=False,
    )


# ---------------------------------------------------------------------------
# synthetic shapes
SYNTHETIC_SIZES = {"train": 2000, "test": 500}
SYNTHETIC_SEEDS = {"train": 1234, "test": 5678}
SHAPES = ("circle", "square", "triangle", "cross")


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


def _load_synthetic(split: str, path: Path | None, size: int | None, channels: int | None) -> tuple[Tensor, Tensor | None, int | None]:
    x, y = make_synthetic(SYNTHETIC_SIZES[split], SYNTHETIC_SEEDS[split])
    return x, y, 4


# ---------------------------------------------------------------------------
# The registry
DATASET_LOADERS: dict[str, RawLoader] = {
    "fashion_mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "cifar10": lambda split, path, size, channels: _load_cifar("cifar10", split),
    "cifar100": lambda split, path, size, channels: _load_cifar("cifar100", split),
    "stl10": _load_stl10,
    "image_folder": _load_image_folder,
    "synthetic": _load_synthetic,
}


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
        w = torch.tensor((0.2989, 0.587, 0.114)).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise DatasetError(f"cannot convert {c}-channel images to {channels} channels")


@functools.lru_cache(maxsize=8)
def _cached(root: str, name: str, split: str, path: str | None, size: int | None, channels: int | None):
    x, y, k = DATASET_LOADERS[name](split, Path(path) if path else None, size, channels)
    if channels is not None:
        x = convert_channels(x, channels)
    if size is not None and size != x.shape[-1]:
        x = resize_images(x, size)
    return x, y, k


def load_dataset(
    name: str, split: str, *, path: str | None = None, image_size: int | None = None,
    channels: int | None = None, subset: int | None = None, seed: int = 0,
) -> ImageTensorDataset:
    """Load a dataset split as uint8 tensors (cached in-process).

    path: image_folder only (see :func:`resolve_path`); image_size: resize side (None = native);
    channels: 1 or 3 (None = native; 3 on a gray set repeats it); subset: a seeded random subset of
    that many images (in their original order).
    """
    if name not in DATASET_LOADERS:
        raise DatasetError(f"unknown dataset {name!r} (one of {sorted(DATASET_LOADERS)})")
    info = specs.DATASETS[name]
    if split not in info.splits:
        raise DatasetError(f"dataset {name}: no split {split!r} (one of {list(info.splits)})")
    if path is not None and name != "image_folder":
        raise DatasetError(f"dataset {name}: only image_folder takes a path")
    resolved = str(resolve_path(path)) if path is not None else None
    if name == "image_folder" and resolved is None:
        raise DatasetError("dataset image_folder: needs data.path (a folder inside the allowed data roots)")
    # native size / channels asked explicitly: the same cache entry as None
    size = image_size if (image_size != info.image_size or name == "image_folder") else None
    if channels == info.channels:
        channels = None
    x, y, k = _cached(str(data_root()), name, split, resolved, size, channels)
    idx = subset_indices(int(x.shape[0]), subset, seed)
    if idx is not None:
        x = x[idx]
        y = y[idx] if y is not None else None
    return ImageTensorDataset(images=x, labels=y, num_classes=k, name=name, split=split)


def load_from_spec(data: Any, seed: int = 0) -> ImageTensorDataset:
    """load_dataset for a specs.DataSpec (the pretraining data)."""
    return load_dataset(
        data.dataset, data.resolved_split, path=data.path, image_size=data.image_size,
        channels=data.channels, subset=data.subset, seed=seed,
    )


dataset_spec_loader = load_from_spec


def prepare(name: str) -> Path:
    """Make a dataset available under the data root without the network where possible
    (`pretextlab data prepare NAME`). Returns the folder that holds it."""
    if name == "fashion_mnist":
        return _prepare_fashion_mnist()
    if name in ("digits", "synthetic"):
        return data_root()  # bundled with scikit-learn / generated: nothing to fetch
    if name in ("cifar10", "cifar100"):
        _torchvision_set(name, train=True)
        _torchvision_set(name, train=False)
        return data_root() / _ARCHIVES[name][0]
    if name == "stl10":
        _torchvision_set("stl10", split="train")
        return data_root() / _ARCHIVES[name][0]
    if name == "image_folder":
        raise DatasetError(
            "dataset image_folder: nothing to prepare; " + _folder_help(data_root() / "<folder>", "place the images")
        )
    raise DatasetError(f"unknown dataset {name!r} (one of {sorted(DATASET_LOADERS)})")


def clear_cache() -> None:
    """Forget the decoded tensors (tests; a long-lived worker after a dataset changed on disk)."""
    _cached.cache_clear()


__all__ = [
    "DATASET_LOADERS", "DatasetError", "DecodedImages", "ImageTensorDataset", "allowed_roots", "clear_cache",
    "convert_channels", "data_root", "dataset_spec_loader", "image_folder_files", "load_dataset",
    "load_from_spec", "loader_workers", "make_synthetic", "max_in_memory_bytes", "prepare", "resize_images",
    "resolve_path", "stream_image_folder", "streaming_samples", "subset_indices",
]
