"""The seven method configurations: they run, they overfit a fixed batch, their labels are right."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.errors import DatasetError
from ssl_core.methods.exemplar import mean_squared_gradient, select_seeds
from ssl_core.methods.relative_position import NEIGHBOURS, RelativePosition, sample_pairs
from ssl_core.methods.rotation import rotate_batch
from ssl_core.registry import METHODS, build_method, method_class
from ssl_core.specs import METHOD_NAMES, PretrainSpec

from methods_testkit import one_thread, random_images, tiny_spec, train_fixed_batch  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "rotation": {"name": "rotation"},
    "exemplar": {"name": "exemplar", "num_classes": 16, "hidden_dim": 32},
    "relative_position": {"name": "relative_position", "hidden_dim": 32},
    "jigsaw": {"name": "jigsaw", "num_permutations": 10, "tile_dim": 16, "hidden_dim": 32},
    "simclr": {"name": "simclr"},
    "moco_v1": {"name": "moco", "version": 1, "queue_size": 16},
    "moco_v2": {"name": "moco", "version": 2, "queue_size": 16, "bn_splits": 4},
}


def test_registry_covers_every_method() -> None:
    assert set(METHODS) == set(METHOD_NAMES)
    for name in METHODS:
        cls = method_class(name)
        assert isinstance(cls, type) and hasattr(cls, "training_step")
    with pytest.raises(ValueError, match="unknown method"):
        method_class("byol")


def test_registry_import_does_not_load_torch() -> None:
    code = "import sys, ssl_core.registry; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_exported_backbone_matches_what_evaluation_rebuilds() -> None:
    for cfg in (CONFIGS["relative_position"], CONFIGS["jigsaw"]):
        spec = PretrainSpec.model_validate({"method": cfg, "backbone": {"name": "resnet18"}, "data": {"dataset": "stl10"},
                                            "batch_size": 8})
        method = build_method(spec)
        rebuilt = build_backbone(spec.backbone, 3, 96)
        assert {k: v.shape for k, v in method.backbone.state_dict().items()} == {
            k: v.shape for k, v in rebuilt.state_dict().items()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_method_overfits_fixed_batch(name: str, one_thread) -> None:  # noqa: F811
    spec = tiny_spec(CONFIGS[name])
    method, losses = train_fixed_batch(spec, random_images(32), steps=20)
    assert method.backbone.feature_dim == 64
    # MoCo's first loss is against the random initial queue (trivially easy); judge after it is filled
    start = max(losses[1:3]) if name.startswith("moco") else losses[0]
    end = sum(losses[-3:]) / 3
    assert end < 0.8 * start, losses


@pytest.mark.parametrize("name", ["rotation", "relative_position", "jigsaw", "simclr", "moco_v2"])
def test_method_runs_on_gray_28px(name: str, one_thread) -> None:  # noqa: F811
    method_cfg = dict(CONFIGS[name])
    spec = tiny_spec(method_cfg, dataset="fashion_mnist", batch_size=8)
    if name.startswith("moco"):
        spec = tiny_spec({**method_cfg, "queue_size": 8}, dataset="fashion_mnist", batch_size=8)
    _, losses = train_fixed_batch(spec, random_images(8, channels=1, side=28), steps=2)
    assert len(losses) == 2


def test_three_channel_view_of_gray_data_repeats_stats() -> None:
    spec = PretrainSpec.model_validate({"method": {"name": "rotation"}, "backbone": {"name": "convnet", "width": 8},
                                        "data": {"dataset": "fashion_mnist", "channels": 3}, "batch_size": 8})
    method = build_method(spec)
    assert method.mean == (0.2860,) * 3 and method.std == (0.3530,) * 3
    loss, _ = method.training_step(random_images(8, channels=3, side=28), None, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------- rotation
def test_rotation_labels_are_the_applied_rotation() -> None:
    # an image with a single bright pixel at the top-left corner: each rotation moves it to a known corner
    x = torch.zeros(2, 1, 4, 4)
    x[:, 0, 0, 0] = 1.0
    rotated, labels = rotate_batch(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # counter-clockwise by k*90: top-left -> bottom-left -> bottom-right -> top-right
    corners = {0: (0, 0), 1: (3, 0), 2: (3, 3), 3: (0, 3)}
    for img, lab in zip(rotated, labels.tolist()):
        r, c = corners[lab]
        assert img[0, r, c] == 1.0 and img.sum() == 1.0
    # no interpolation: the pixel values are a permutation of the original ones
    y = torch.rand(1, 3, 5, 5)
    r, _ = rotate_batch(y)
    assert all(torch.equal(r[k].flatten().sort().values, y.flatten().sort().values) for k in range(4))


# ----------------------------------------------------------------------------- exemplar
def test_exemplar_seeds_and_errors() -> None:
    spec = tiny_spec({"name": "exemplar", "num_classes": 16, "hidden_dim": 32})
    method = build_method(spec)
    images = random_images(20)
    seeds, targets = method.prepare_data(images, torch.Generator().manual_seed(0))
    assert seeds.shape == (16, 3, 32, 32) and targets.tolist() == list(range(16))
    # seeds are distinct dataset images (sampled without replacement)
    assert len({tuple(s.flatten().tolist()) for s in seeds}) == 16
    with pytest.raises(DatasetError, match="only 10 images"):
        method.prepare_data(images[:10], torch.Generator().manual_seed(0))


def test_exemplar_gradient_selection_prefers_textured_images() -> None:
    flat = torch.full((50, 1, 8, 8), 128, dtype=torch.uint8)
    textured = random_images(50, channels=1, side=8)
    images = torch.cat([flat, textured])
    msg = mean_squared_gradient(images)
    assert (msg[:50] == 0).all() and (msg[50:] > 0).all()
    picked = select_seeds(images, 40, "gradient", torch.Generator().manual_seed(0))
    assert (picked >= 50).all()  # flat images have (almost) zero probability
    uniform = select_seeds(images, 40, "random", torch.Generator().manual_seed(0))
    assert (uniform < 50).any()
    assert len(set(picked.tolist())) == 40


# ----------------------------------------------------------------------------- relative position
def _coordinate_image(batch: int, side: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column: a patch reveals where it was cut."""
    rows = torch.arange(side, dtype=torch.float32).view(side, 1).expand(side, side)
    cols = torch.arange(side, dtype=torch.float32).view(1, side).expand(side, side)
    return torch.stack([rows, cols, torch.zeros(side, side)]).expand(batch, 3, side, side).contiguous()


@pytest.mark.parametrize("gap,jitter", [(3, 1), (1, 0), (5, 2)])
def test_relative_position_labels_match_patch_positions(gap: int, jitter: int) -> None:
    spec = tiny_spec({"name": "relative_position", "hidden_dim": 32, "gap": gap, "jitter": jitter})
    method: RelativePosition = build_method(spec)
    p = method.patch_size
    assert p == (32 - 2 * gap - 2 * jitter) // 3
    x = _coordinate_image(256, 32)
    pairs, labels = method.make_pairs(x, torch.Generator().manual_seed(0))
    assert pairs.shape == (256, 2, 3, p, p)
    assert set(labels.tolist()) == set(range(8))  # every neighbour occurs
    top = pairs[:, :, 0, 0, 0]  # (B, 2): row of each patch's top-left pixel
    left = pairs[:, :, 1, 0, 0]
    # patches are contiguous crops of the image
    assert torch.equal(pairs[:, :, 0, :, 0] - top[..., None], torch.arange(p).float().expand(256, 2, p))
    d_row, d_col = top[:, 1] - top[:, 0], left[:, 1] - left[:, 0]
    # the neighbour is one cell (p + gap) away, up to the two patches' jitters
    step = p + gap
    expected = NEIGHBOURS[labels] - 1  # (B, 2) in {-1, 0, 1}
    assert ((d_row - expected[:, 0] * step).abs() <= 2 * jitter).all()
    assert ((d_col - expected[:, 1] * step).abs() <= 2 * jitter).all()
    # inside the image
    assert top.min() >= 0 and (top.max() + p) <= 32 and left.min() >= 0 and (left.max() + p) <= 32
    if jitter:
        assert (d_row - expected[:, 0] * step).abs().max() > 0  # jitter actually happens


def test_relative_position_sample_pairs_centre_is_the_middle_cell() -> None:
    tops, lefts, _ = sample_pairs(512, 32, 8, 2, 1, torch.Generator().manual_seed(0), torch.device("cpu"))
    # grid origin in [jitter, 32 - 28 - jitter] = [1, 3]; centre at origin + 10 +- 1
    assert tops[:, 0].min() >= 10 and tops[:, 0].max() <= 14


def test_relative_position_chromatic_guards() -> None:
    x = torch.rand(4, 2, 3, 8, 8) + torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 3, 1, 1)
    drop = build_method(tiny_spec({"name": "relative_position", "hidden_dim": 32, "chromatic": "drop", "downsample_p": 0}))
    out = drop.guard(x, torch.Generator().manual_seed(0))
    flat = out.flatten(0, 1)  # (8 patches, 3, 8, 8)
    std = flat.flatten(2).std(dim=2)  # (8, 3)
    kept = std.argmax(dim=1)
    for i in range(8):
        k = int(kept[i])
        assert torch.allclose(flat[i, k], x.flatten(0, 1)[i, k] - x.flatten(0, 1)[i, k].mean(), atol=1e-6)
        others = [c for c in range(3) if c != k]
        ratio = std[i, others] / std[i, k]
        assert (ratio > 0.002).all() and (ratio < 0.03).all()  # noise at ~1/100 of the kept channel's std
    assert len(set(kept.tolist())) > 1  # the kept channel is random per patch
    gray = build_method(tiny_spec({"name": "relative_position", "hidden_dim": 32, "chromatic": "gray", "downsample_p": 0}))
    g = gray.guard(x, None)
    assert torch.allclose(g[:, :, 0], g[:, :, 1]) and torch.allclose(g[:, :, 0], g[:, :, 2])
    # per-patch mean subtraction
    assert g.mean(dim=(3, 4)).abs().max() < 1e-5
    # a 1-channel patch is only mean-subtracted
    one = build_method(tiny_spec({"name": "relative_position", "hidden_dim": 32, "downsample_p": 0}, dataset="fashion_mnist"))
    y = torch.rand(2, 2, 1, 8, 8)
    assert torch.allclose(one.guard(y, None), y - y.mean(dim=(3, 4), keepdim=True))


def test_relative_position_downsampling_blurs_some_patches() -> None:
    m = build_method(tiny_spec({"name": "relative_position", "hidden_dim": 32, "chromatic": "none", "downsample_p": 0.5}))
    x = torch.rand(64, 2, 3, 9, 9)
    out = m.guard(x, torch.Generator().manual_seed(0))
    ref = x - x.mean(dim=(3, 4), keepdim=True)
    changed = ~torch.isclose(out, ref, atol=1e-6).flatten(2).all(dim=2)  # (64, 2)
    assert 0.3 < changed.float().mean() < 0.7
