"""Image folders for pretraining: kept whole at a storage size larger than the training size, so
the augmentation's crops reach the parts of the image a centre crop would cut away."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_core import data as D
from ssl_core.augment import build_pipeline
from ssl_core.batches import data_source
from ssl_core.errors import DatasetError
from ssl_core.registry import build_method
from ssl_core.specs import PretrainSpec

from methods_testkit import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
GREEN, GRAY = (0, 255, 0), (128, 128, 128)
SIDE = 16  # the training size; the files are 16 x 32 (landscape)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Landscape 16 x 32 images, gray with a green 4-column band at the left edge: a centre crop
    of the shorter side (the middle 16 columns) never contains any green."""
    root = tmp_path / "data"
    (root / "wide" / "a").mkdir(parents=True)
    img = torch.tensor(GRAY, dtype=torch.uint8).view(1, 1, 3).repeat(SIDE, 2 * SIDE, 1)
    img[:, :4] = torch.tensor(GREEN, dtype=torch.uint8)
    for i in range(8):
        Image.fromarray(img.numpy()).save(root / "wide" / "a" / f"{i}.png")
    monkeypatch.setenv("PRETEXTLAB_DATA_ROOT", str(root))
    monkeypatch.delenv("PRETEXTLAB_ALLOWED_DATA_ROOTS", raising=False)
    monkeypatch.delenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", raising=False)
    monkeypatch.delenv("PRETEXTLAB_MAX_DATASET_BYTES", raising=False)
    D.clear_cache()
    yield root
    D.clear_cache()


def spec(method: str = "simclr", **data) -> PretrainSpec:
    return PretrainSpec.model_validate({
        "method": {"name": method}, "backbone": {"name": "convnet", "width": 4}, "batch_size": 8, "device": "cpu",
        "data": {"dataset": "image_folder", "path": "wide", "split": "all", "image_size": SIDE, **data}})


def green_share(x: torch.Tensor) -> torch.Tensor:
    """Per image, the share of clearly green pixels (float in [0, 1] or uint8)."""
    x = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
    green = (x[:, 1] > 0.8) & (x[:, 0] < 0.3) & (x[:, 2] < 0.3)
    return green.flatten(1).float().mean(1)


def test_storage_size_defaults_for_crop_based_augmentation_only() -> None:
    assert spec("simclr").data.storage_size == round(SIDE * 8 / 7) == 18  # ImageNet's 256 for 224
    assert spec("moco").data.storage_size == 18
    assert spec("rotation").data.storage_size is None  # no resampling crop: kept at the training size
    assert spec("simclr", storage_size=32).data.storage_size == 32
    with pytest.raises(ValueError, match="data.storage_size: 12 px is below data.image_size 16"):
        spec("simclr", storage_size=12)
    with pytest.raises(ValueError, match="data.storage_size: only image_folder"):
        PretrainSpec.model_validate({"method": {"name": "simclr"}, "data": {"dataset": "cifar10", "storage_size": 40}})


def test_crops_reach_the_edges_a_centre_crop_removed(folder: Path) -> None:
    old = D.load_dataset("image_folder", "all", path="wide", image_size=SIDE)  # evaluation's centre crop
    assert green_share(old.images).max() == 0  # the band is gone before any augmentation
    s = spec("simclr")
    method = build_method(s)
    batch, _ = next(data_source(s, method, torch.device("cpu")).epoch(0, 0))
    assert batch.shape == (8, 3, 18, 18)  # kept whole at the storage size
    assert 0.1 < float(green_share(batch).min()) < 0.15  # 4 of 32 columns: the whole band, squeezed
    crop = build_pipeline([s.augment[0]], SIDE)  # SimCLR's random_resized_crop alone: colours untouched
    assert s.augment[0].op == "random_resized_crop"
    views = crop(batch.repeat(32, 1, 1, 1), torch.Generator().manual_seed(0))  # 256 crops
    assert views.shape[-1] == SIDE
    shares = green_share(views)
    assert (shares > 0).float().mean() > 0.15, (shares > 0).float().mean()  # many crops include the edge ...
    assert (shares == 0).any()  # ... not all: they are random crops of the whole image


def test_streamed_folders_keep_the_whole_image_too(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRETEXTLAB_MAX_IN_MEMORY_BYTES", "0")  # forces streaming
    s = spec("simclr")
    source = data_source(s, build_method(s), torch.device("cpu"))
    try:
        batch, _ = next(source.epoch(0, 0))
    finally:
        source.close()
    assert type(source).__name__ == "StreamingBatches" and batch.shape == (8, 3, 18, 18)
    assert float(green_share(batch).min()) > 0.1


def test_the_budget_counts_the_storage_size(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at_training_size, at_storage = 8 * 3 * SIDE * SIDE, 8 * 3 * 18 * 18
    monkeypatch.setenv("PRETEXTLAB_MAX_DATASET_BYTES", str(at_storage - 1))  # enough for 16 px, not for 18 px
    assert at_training_size < at_storage - 1
    s = spec("simclr")
    with pytest.raises(DatasetError, match=r"8 images of 3 x 18 x 18 px .* data.storage_size"):
        data_source(s, build_method(s), torch.device("cpu"))
    monkeypatch.setenv("PRETEXTLAB_MAX_DATASET_BYTES", str(at_storage))
    D.clear_cache()
    assert len(data_source(s, build_method(s), torch.device("cpu"))) == 1
