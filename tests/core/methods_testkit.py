"""Tiny specs and a fixed-batch training loop shared by the method tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ssl_core.registry import build_method
from ssl_core.specs import PretrainSpec

TINY_BACKBONE = {"name": "convnet", "width": 8}


def tiny_spec(method: dict[str, Any], *, dataset: str = "synthetic", batch_size: int = 16, **extra: Any) -> PretrainSpec:
    return PretrainSpec.model_validate(
        {"method": method, "backbone": TINY_BACKBONE, "data": {"dataset": dataset}, "batch_size": batch_size, **extra}
    )


def random_images(n: int, channels: int = 3, side: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=g)


def train_fixed_batch(spec: PretrainSpec, images: torch.Tensor, steps: int, lr: float = 3e-3) -> tuple[torch.nn.Module, list[float]]:
    """Adam on one fixed batch with the same augmentation draw every step; returns the losses."""
    torch.manual_seed(0)
    method = build_method(spec)
    x, y = method.prepare_data(images, torch.Generator().manual_seed(0))
    x = x[: spec.batch_size]
    y = y[: spec.batch_size] if y is not None else None
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    method.train()
    losses = []
    for _ in range(steps):
        loss, metrics = method.training_step(x, y, torch.Generator().manual_seed(1))
        assert loss.dim() == 0 and loss.requires_grad
        assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    return method, losses


@pytest.fixture
def one_thread():
    """The CI box has 2 shared cores: tiny models run faster single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
