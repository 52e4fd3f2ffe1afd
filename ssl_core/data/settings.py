"""Where the data lives and what the loaders may do: the one place that reads the environment.

:meth:`DataSettings.from_env` reads the ``PRETEXTLAB_*`` variables below; every public
entry point of :mod:`ssl_core.data` takes a ``settings`` argument (default: read once, at the
call) and hands it down, so nothing deeper reads the environment. ssl_core must not import
``api``, so these names are declared here as well as in the service's Settings; they agree.

* ``PRETEXTLAB_DATA_ROOT`` -- the data root (default ``./data``);
* ``PRETEXTLAB_ALLOWED_DATA_ROOTS`` -- more roots user paths may point into (os.pathsep- or comma-separated);
* ``PRETEXTLAB_ALLOW_DOWNLOAD`` -- ``1``/``true``/``yes`` lets torchvision download missing sets;
* ``PRETEXTLAB_FASHION_MNIST_SOURCE`` -- where the Fashion-MNIST .gz files are copied from
  (default: the Debian package's folder);
* ``PRETEXTLAB_MAX_IN_MEMORY_BYTES`` -- the largest decoded image folder held in memory (default 8 GiB;
  pretraining streams a larger one from disk);
* ``PRETEXTLAB_MAX_DATASET_BYTES`` -- the largest decoded dataset a task may ask for, any dataset
  (default 16 GiB; larger requests are refused before anything is decoded, see :mod:`ssl_core.data.budget`);
* ``PRETEXTLAB_MAX_CACHE_BYTES`` -- the most bytes the in-process dataset cache keeps (default 8 GiB);
* ``PRETEXTLAB_LOADER_WORKERS`` -- DataLoader decode workers when streaming (default: one per core but one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ssl_core.errors import DatasetError
from ssl_core.paths import PathOutsideRoots, resolve_inside
from ssl_core.specs import DEBIAN_FASHION_MNIST

# image folders whose decoded tensor would exceed this stay on disk: use stream_image_folder()
DEFAULT_MAX_IN_MEMORY_BYTES = 8 << 30
# a decoded dataset above this is refused (all of stl10's 105k images at 224 px: 15.8 GB fits)
DEFAULT_MAX_DATASET_BYTES = 16 << 30
DEFAULT_MAX_CACHE_BYTES = 8 << 30  # decoded sets kept between tasks of a worker process
_TRUE = ("1", "true", "yes")


def _int_var(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DatasetError(f"{name}: {raw!r} is not an integer") from None


@dataclass(frozen=True)
class DataSettings:
    """What the data loaders need to know about this machine (see the module docstring)."""

    data_root: Path
    extra_roots: tuple[Path, ...] = ()
    allow_download: bool = False
    fashion_mnist_source: Path = DEBIAN_FASHION_MNIST
    max_in_memory_bytes: int = DEFAULT_MAX_IN_MEMORY_BYTES
    loader_workers: int | None = None  # None = one per usable CPU core but one, at most 16
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DataSettings":
        """The settings from ``PRETEXTLAB_*`` variables (``environ`` defaults to os.environ)."""
        env = os.environ if environ is None else environ
        extra = env.get("PRETEXTLAB_ALLOWED_DATA_ROOTS", "").replace(",", os.pathsep).split(os.pathsep)
        workers = env.get("PRETEXTLAB_LOADER_WORKERS", "").strip()
        return cls(
            data_root=Path(env.get("PRETEXTLAB_DATA_ROOT") or "data").expanduser().absolute(),
            extra_roots=tuple(Path(p.strip()).expanduser().absolute() for p in extra if p.strip()),
            allow_download=env.get("PRETEXTLAB_ALLOW_DOWNLOAD", "").lower() in _TRUE,
            fashion_mnist_source=Path(env.get("PRETEXTLAB_FASHION_MNIST_SOURCE") or cls.fashion_mnist_source),
            max_in_memory_bytes=_int_var(env, "PRETEXTLAB_MAX_IN_MEMORY_BYTES", cls.max_in_memory_bytes),
            loader_workers=max(0, _int_var(env, "PRETEXTLAB_LOADER_WORKERS", 0)) if workers else None,
            max_dataset_bytes=_int_var(env, "PRETEXTLAB_MAX_DATASET_BYTES", cls.max_dataset_bytes),
            max_cache_bytes=_int_var(env, "PRETEXTLAB_MAX_CACHE_BYTES", cls.max_cache_bytes),
        )

    @property
    def allowed_roots(self) -> list[Path]:
        """The data root first, then the extra roots."""
        return [self.data_root, *self.extra_roots]


def data_root(settings: DataSettings | None = None) -> Path:
    """PRETEXTLAB_DATA_ROOT, default ./data (absolute)."""
    return (settings or DataSettings.from_env()).data_root


def allowed_roots(settings: DataSettings | None = None) -> list[Path]:
    """The data root plus PRETEXTLAB_ALLOWED_DATA_ROOTS (os.pathsep- or comma-separated)."""
    return (settings or DataSettings.from_env()).allowed_roots


def max_in_memory_bytes(settings: DataSettings | None = None) -> int:
    """PRETEXTLAB_MAX_IN_MEMORY_BYTES (default 8 GiB): the largest decoded image folder held in memory."""
    return (settings or DataSettings.from_env()).max_in_memory_bytes


def loader_workers(settings: DataSettings | None = None) -> int:
    """DataLoader decode workers for the streaming path: PRETEXTLAB_LOADER_WORKERS, else one per
    usable CPU core but one (the main process feeds the device), at most 16."""
    configured = (settings or DataSettings.from_env()).loader_workers
    if configured is not None:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores - 1))


def resolve_path(path: str | os.PathLike[str], settings: DataSettings | None = None) -> Path:
    """A user-given dataset path, relative to the data root or absolute, resolved with symlinks
    followed; it must lie inside one of :func:`allowed_roots` and exist, else DatasetError."""
    if isinstance(path, str) and path.lower().startswith("s3://"):  # object storage: a cached local copy
        from ssl_core.data.remote import fetch_dataset

        path = fetch_dataset(path, (settings or DataSettings.from_env()).data_root)
    try:
        real = resolve_inside(path, allowed_roots(settings), field="dataset path")
    except PathOutsideRoots as e:
        raise DatasetError(str(e)) from None
    if not real.exists():
        raise DatasetError(f"dataset path {os.fspath(path)!r} does not exist (looked in {real})")
    return real
