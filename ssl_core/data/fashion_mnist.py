"""Fashion-MNIST, offline first: the IDX files under ``<data root>/FashionMNIST/raw``.

torchvision's ``FashionMNIST`` reads them there. :func:`prepare_fashion_mnist` fills that
folder from .gz files placed in it by hand, else from Debian's ``dataset-fashion-mnist``
package (``/usr/share/datasets/fashion-mnist``, or PRETEXTLAB_FASHION_MNIST_SOURCE), else --
only when downloads are allowed -- from the network; the loader does this by itself when needed.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from ssl_core.data.dataset import Raw
from ssl_core.data.settings import DataSettings
from ssl_core.errors import DatasetError
from ssl_core.specs import DATASET_FOLDERS, FASHION_FILES


def fashion_raw_dir(settings: DataSettings) -> Path:
    return settings.data_root / DATASET_FOLDERS["fashion_mnist"]


def _present(raw: Path) -> bool:
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


def _copy(src: Path, raw: Path) -> None:
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


def prepare_fashion_mnist(settings: DataSettings) -> Path:
    """The raw folder, filled if needed (see the module docstring); DatasetError says how to get the data."""
    raw = fashion_raw_dir(settings)
    if _present(raw):
        return raw
    src = settings.fashion_mnist_source
    # .gz files dropped into raw/ by hand, else the Debian package's
    for source in (raw, src):
        if all((source / f"{f}.gz").is_file() for f in FASHION_FILES):
            try:
                _copy(source, raw)
            except OSError as e:
                raise DatasetError(
                    f"dataset fashion_mnist: cannot copy {source} into {raw} ({e}); make the data root writable "
                    "or point PRETEXTLAB_DATA_ROOT at a writable folder, then `pretextlab data prepare fashion_mnist`"
                ) from None
            return raw
    if settings.allow_download:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(settings.data_root), train=True, download=True)
        FashionMNIST(str(settings.data_root), train=False, download=True)
        return raw
    raise DatasetError(
        f"dataset fashion_mnist: not found. Looked in {raw} (files {', '.join(FASHION_FILES)}) and in "
        f"{src} (the Debian package's .gz files). Fix: `apt-get install dataset-fashion-mnist` (offline) "
        "then `pretextlab data prepare fashion_mnist`; or copy the four IDX files (.gz or decompressed) "
        f"into {raw}; or set PRETEXTLAB_ALLOW_DOWNLOAD=1 to let torchvision download them."
    )


def load_fashion_mnist(settings: DataSettings, split: str, path: Path | None, size: int | None,
                       channels: int | None) -> Raw:
    from torchvision.datasets import FashionMNIST

    prepare_fashion_mnist(settings)
    ds = FashionMNIST(str(settings.data_root), train=(split == "train"), download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long(), 10
