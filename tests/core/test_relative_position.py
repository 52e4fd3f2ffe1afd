"""Relative position's geometry and colour guard: neighbours never touch, the paper's projection."""

from __future__ import annotations

import pytest
import torch

from ssl_core.methods.relative_position import GREEN_MAGENTA, project_out_green_magenta, sample_pairs
from ssl_core.registry import build_method
from ssl_core.specs import PretrainSpec

from methods_testkit import one_thread, random_images, tiny_spec, train_fixed_batch  # noqa: F401


def min_separation(tops: torch.Tensor, lefts: torch.Tensor, patch: int) -> torch.Tensor:
    """Per pair: free pixels between the two patches along the axis that separates them most
    (0 = touching, negative = overlapping)."""
    def free(a: torch.Tensor) -> torch.Tensor:  # (B, 2) starts on one axis -> pixels between the intervals
        return (a[:, 1] - a[:, 0]).abs() - patch

    return torch.maximum(free(tops), free(lefts))


@pytest.mark.parametrize("side", [28, 32, 64, 96])
def test_default_geometry_keeps_every_pair_apart(side: int) -> None:
    spec = PretrainSpec.model_validate({"method": {"name": "relative_position"}, "backbone": {"name": "convnet"},
                                        "data": {"dataset": "synthetic", "image_size": side}})
    m = spec.method
    assert 0.35 <= m.gap / m.patch_size <= 0.65  # the paper's half a patch (48 of 96), rounded at small sizes
    assert 3 * m.patch_size + 2 * m.gap + 2 * m.jitter <= side
    tops, lefts, labels = sample_pairs(100_000, side, m.patch_size, m.gap, m.jitter,
                                       torch.Generator().manual_seed(side), torch.device("cpu"))
    sep = min_separation(tops, lefts, m.patch_size)
    assert int(sep.min()) >= 1  # measured over 100k pairs: never touching
    assert int(sep.min()) == m.gap - 2 * m.jitter  # the worst case is reached, so the measurement is real
    assert tops.min() >= 0 and lefts.min() >= 0 and (tops.max() + m.patch_size) <= side
    assert set(labels.tolist()) == set(range(8))


def test_the_old_defaults_touched_and_are_refused_now() -> None:
    # gap 2, jitter 1 (the old defaults): some pairs touch (0 px between them)
    tops, lefts, _ = sample_pairs(20_000, 28, 7, 2, 1, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert int(min_separation(tops, lefts, 7).min()) == 0
    with pytest.raises(ValueError, match="method.gap: gap 2 px with method.jitter 1 px"):
        PretrainSpec.model_validate({"method": {"name": "relative_position", "gap": 2, "jitter": 1},
                                     "backbone": {"name": "convnet"}})


def test_given_gap_limits_the_derived_jitter() -> None:
    m = PretrainSpec.model_validate({"method": {"name": "relative_position", "gap": 4}, "backbone": {"name": "convnet"},
                                     "data": {"dataset": "synthetic", "image_size": 96}}).method
    assert (m.gap, m.jitter) == (4, 1)  # 7/96 of a 27 px patch would be 2, but 4 - 2*2 leaves no gap
    assert m.patch_size == (96 - 8 - 2) // 3


def test_projection_removes_the_green_magenta_axis_only() -> None:
    x = torch.rand(4, 3, 5, 5)
    y = project_out_green_magenta(x)
    a = torch.tensor(GREEN_MAGENTA).view(1, 3, 1, 1)
    assert (y * a).sum(dim=1).abs().max() < 1e-5  # nothing left along (-1, 2, -1)
    assert torch.allclose(y.mean(dim=1), x.mean(dim=1), atol=1e-6)  # gray (1, 1, 1) is orthogonal: kept
    red_blue = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)  # also orthogonal to the axis: kept
    assert torch.allclose((y * red_blue).sum(dim=1), (x * red_blue).sum(dim=1), atol=1e-6)
    assert ((y - x) * a).sum(dim=1).abs().max() > 0.01  # it did change the image


def test_project_is_the_default_and_runs(one_thread) -> None:  # noqa: F811
    spec = tiny_spec({"name": "relative_position", "hidden_dim": 16})
    assert spec.method.chromatic == "project" and spec.method.downsample_p == 0.33
    _, losses = train_fixed_batch(spec, random_images(16), steps=2)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
