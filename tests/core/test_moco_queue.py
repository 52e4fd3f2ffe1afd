"""MoCo's queue against the training set: refused at validation when the size is known, by the
engine otherwise, or capped (and recorded) with method.cap_queue."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssl_core import data as D
from ssl_core.errors import SpecError
from ssl_core.registry import build_method
from ssl_core.specs import PretrainSpec
from ssl_core.train import pretrain

from methods_testkit import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"backbone": {"name": "convnet", "width": 4}, "device": "cpu", "precision": "fp32",
        "channels_last": False, "epochs": 1, "log_every": 1}


def moco_spec(queue: int, data: dict, batch: int = 8, **method) -> PretrainSpec:
    return PretrainSpec.model_validate({**TINY, "method": {"name": "moco", "queue_size": queue, **method},
                                        "data": data, "batch_size": batch})


def test_validation_refuses_a_queue_longer_than_the_other_batches() -> None:
    # the old examples: K 4096 + ... on 5,000 images, batch 256 -> limit 4,744
    with pytest.raises(ValueError, match=r"method.queue_size: 4864 keys exceed the 5000 training samples "
                                         r"minus one batch \(256\) = 4744; lower it to at most 4608"):
        moco_spec(4864, {"dataset": "fashion_mnist", "subset": 5000}, batch=256)
    assert moco_spec(4608, {"dataset": "fashion_mnist", "subset": 5000}, batch=256).method.queue_size == 4608
    # the whole split when there is no subset; the default queue fits the default dataset
    with pytest.raises(ValueError, match="1438 training samples"):
        moco_spec(1440, {"dataset": "digits"}, batch=8)
    assert PretrainSpec.model_validate({"method": {"name": "moco"}}).method.queue_size == 4096
    # cap_queue defers to the engine, which shrinks it
    assert moco_spec(4864, {"dataset": "fashion_mnist", "subset": 5000}, batch=256, cap_queue=True).method.cap_queue


def test_engine_refuses_or_caps_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    spec = moco_spec(32, {"dataset": "synthetic", "image_size": 16, "subset": 64})
    with pytest.raises(SpecError, match=r"method.queue_size: 32 keys exceed the 24 training samples"):
        build_method(spec).fit_to_data(24)
    capped = build_method(moco_spec(32, {"dataset": "synthetic", "image_size": 16, "subset": 64}, cap_queue=True))
    first = capped.queue[:16].clone()
    with caplog.at_level(logging.WARNING, logger="pretextlab.moco"):
        assert capped.fit_to_data(24) == {"method/queue_size": 16.0}
    assert capped.queue.shape == (16, 128) and torch.equal(capped.queue, first) and int(capped.queue_ptr) == 0
    assert "capped from 32 to 16 keys (24 training samples, batch 8" in caplog.text
    with pytest.raises(SpecError, match="use more training images"):  # nothing fits: refused even when capping
        build_method(moco_spec(8, {"dataset": "synthetic", "image_size": 16}, cap_queue=True)).fit_to_data(12)


def test_a_capped_run_records_its_queue(tmp_path: Path) -> None:
    spec = moco_spec(32, {"dataset": "synthetic", "image_size": 16, "subset": 32}, cap_queue=True)
    result = pretrain(spec, tmp_path, resume=False)
    assert result.completed and result.metrics["method/queue_size"] == 24.0  # 32 samples - one batch of 8
    assert result.to_dict()["metrics"]["method/queue_size"] == 24.0


def test_an_image_folder_is_counted_by_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    (root / "shots" / "a").mkdir(parents=True)
    for i in range(20):
        Image.fromarray((torch.rand(12, 12, 3) * 255).to(torch.uint8).numpy()).save(root / "shots" / "a" / f"{i}.png")
    monkeypatch.setenv("PRETEXTLAB_DATA_ROOT", str(root))
    D.clear_cache()
    spec = moco_spec(16, {"dataset": "image_folder", "path": "shots", "image_size": 8, "split": "all"})
    with pytest.raises(SpecError, match="method.queue_size: 16 keys exceed the 20 training samples minus one "
                                        r"batch \(8\) = 12"):
        pretrain(spec, tmp_path / "out", resume=False)
    D.clear_cache()
