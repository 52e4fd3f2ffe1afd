"""The papers' default augmentations: one blur rule for SimCLR and MoCo v2, SimCLR's colour strength by size."""

from __future__ import annotations

import pytest

from ssl_core.specs import PretrainSpec

SIMCLR = {"name": "simclr"}
MOCO_V2 = {"name": "moco", "version": 2}


def _augment(method: dict, dataset: str, image_size: int | None = None) -> list:
    data = {"dataset": dataset, **({"image_size": image_size} if image_size else {})}
    return PretrainSpec.model_validate({"method": method, "data": data}).augment


def _blur(ops: list) -> list:
    return [op.model_dump() for op in ops if op.op == "gaussian_blur"]


@pytest.mark.parametrize("dataset,size,blurred", [
    ("fashion_mnist", None, False), ("cifar10", None, False), ("cifar10", 64, False),
    ("stl10", None, True), ("cifar10", 65, True), ("stl10", 224, True),
])
def test_simclr_and_moco_v2_blur_alike_at_each_size(dataset: str, size: int | None, blurred: bool) -> None:
    simclr, moco = _blur(_augment(SIMCLR, dataset, size)), _blur(_augment(MOCO_V2, dataset, size))
    assert simclr == moco  # the same op with the same parameters, or none in both
    assert bool(simclr) is blurred
    if blurred:
        assert simclr[0]["p"] == 0.5 and tuple(simclr[0]["sigma"]) == (0.1, 2.0)
        assert simclr[0]["kernel_fraction"] == 0.1


@pytest.mark.parametrize("dataset,size,strength", [
    ("fashion_mnist", None, 0.5), ("cifar10", None, 0.5), ("stl10", None, 1.0), ("stl10", 224, 1.0),
])
def test_simclr_colour_strength_by_image_size(dataset: str, size: int | None, strength: float) -> None:
    (jitter,) = [op for op in _augment(SIMCLR, dataset, size) if op.op == "color_jitter"]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == pytest.approx(
        (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength))
    assert jitter.p == 0.8


def test_moco_v2_keeps_its_own_jitter_at_every_size() -> None:
    for dataset in ("cifar10", "stl10"):
        (jitter,) = [op for op in _augment(MOCO_V2, dataset) if op.op == "color_jitter"]
        strengths = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        assert strengths == pytest.approx((0.4, 0.4, 0.4, 0.1))


def test_readme_quickstart_is_the_quickstart_example() -> None:
    """The README's curl submits the recipe that docs/quality.md measured (examples/simclr_quickstart.json)."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    body = re.search(r"-H 'Idempotency-Key: quickstart-1' \\\n  -d '(.*?)'\n", readme, re.S)
    assert body, "the README's quickstart curl was not found"
    curl = json.loads(body.group(1))["spec"]
    example = json.loads((root / "examples" / "simclr_quickstart.json").read_text())
    a, b = PretrainSpec.model_validate(curl), PretrainSpec.model_validate(example)
    for field in ("method", "backbone", "data", "epochs", "batch_size", "optim", "augment"):
        assert getattr(a, field) == getattr(b, field), field
