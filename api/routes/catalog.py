"""/v1/methods and /v1/datasets: what can be submitted, straight from ssl_core.specs (no torch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, Depends

from api.deps import SettingsDep
from api.schemas import ERROR_RESPONSES, DatasetOut, MethodOut
from api.security import require_token
from ssl_core.specs import DATASET_FOLDERS, DATASETS, DEBIAN_FASHION_MNIST, method_schemas

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(require_token)], responses=ERROR_RESPONSES)


@router.get("/methods", response_model=list[MethodOut], response_model_by_alias=True,
            summary="Each method's JSON Schema and defaults")
def methods() -> list[MethodOut]:
    return [MethodOut(**m) for m in method_schemas().values()]


def _has_files(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(p.is_file() for p in folder.iterdir())
    except OSError:
        return False


def dataset_available(name: str, data_root: Path, fashion_mnist_source: Path = DEBIAN_FASHION_MNIST) -> bool | None:
    """Whether a dataset's files are present, by looking at files only (no loading, no torch):
    in its folder under the data root (where ssl_core.data reads it), or for Fashion-MNIST in
    the folder the loader copies it from by itself."""
    if name == "synthetic":
        return True  # generated on the fly
    if name == "digits":
        return importlib.util.find_spec("sklearn") is not None  # bundled with scikit-learn
    if name == "image_folder":
        return None  # depends on data.path
    folder = DATASET_FOLDERS.get(name)
    if folder is None:
        return _has_files(data_root / name)
    if _has_files(data_root / folder):
        return True
    if name == "fashion_mnist":
        return _has_files(fashion_mnist_source)
    return False


@router.get("/datasets", response_model=list[DatasetOut], summary="Datasets and whether they are present")
def datasets(settings: SettingsDep) -> list[DatasetOut]:
    root = Path(settings.data_root).expanduser()
    source = settings.fashion_mnist_source or DEBIAN_FASHION_MNIST
    return [
        DatasetOut(name=d.name, description=d.description, image_size=d.image_size, channels=d.channels,
                   num_classes=d.num_classes, splits=list(d.splits),
                   available=dataset_available(d.name, root, source))
        for d in DATASETS.values()
    ]
