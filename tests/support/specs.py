"""Tiny job specs for tests and benchmarks that run real jobs but measure the service, not the model."""

from __future__ import annotations

from typing import Any


def tiny_pretrain(epochs: int = 2, **over: Any) -> dict[str, Any]:
    """Rotation on 16 px synthetic images with a 4-channel convnet: a few hundred ms per epoch
    (32 images, batch 8: 4 steps per epoch)."""
    spec: dict[str, Any] = {
        "kind": "pretrain",
        "method": {"name": "rotation"},
        "backbone": {"name": "convnet", "width": 4},
        "data": {"dataset": "synthetic", "subset": 32, "image_size": 16},
        "epochs": epochs, "batch_size": 8, "device": "cpu", "precision": "fp32", "channels_last": False,
        "log_every": 1, "checkpoint_every": 1,
    }
    spec.update(over)
    return spec
