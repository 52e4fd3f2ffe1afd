"""The papers' recipes: one place for every method-dependent default.

A pretraining spec leaves ``augment`` and ``optim`` as ``None`` to mean "the paper's"; its
validator fills them in from here, so a stored spec is always explicit.
"""

from __future__ import annotations

from typing import Any

from ssl_core.specs.augment import (
    ColorJitterOp, GaussianBlurOp, GrayscaleOp, HorizontalFlipOp, HSVPowerOp, PCAContrastOp, RandomAffineOp,
    RandomCropOp, RandomResizedCropOp,
)
from ssl_core.specs.optim import OptimSpec


def default_augment(method: Any, image_size: int) -> list[Any]:
    """The paper's augmentation pipeline for a method (scaled to small images; see docs/methods.md)."""
    name = method.name
    if name == "simclr":
        # SimCLR App. B.9 (CIFAR): crop (0.08, 1), flip, jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2, no blur at 32 px.
        ops: list[Any] = [RandomResizedCropOp(scale=(0.08, 1.0)), HorizontalFlipOp(), ColorJitterOp(), GrayscaleOp()]
        if image_size > 64:
            ops.append(GaussianBlurOp())
        return ops
    if name == "moco":
        if method.version == 1:
            # MoCo v1 code: crop (0.2, 1), gray 0.2, jitter 0.4 x4 (always), flip.
            return [
                RandomResizedCropOp(scale=(0.2, 1.0)), GrayscaleOp(),
                ColorJitterOp(p=1.0, hue=0.4), HorizontalFlipOp(),
            ]
        # MoCo v2 (--aug-plus): crop (0.2, 1), jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2, blur p 0.5, flip.
        return [
            RandomResizedCropOp(scale=(0.2, 1.0)), ColorJitterOp(), GrayscaleOp(),
            GaussianBlurOp(), HorizontalFlipOp(),
        ]
    if name == "rotation":
        return [RandomCropOp(padding=max(1, image_size // 8)), HorizontalFlipOp()]
    if name == "exemplar":
        return [RandomAffineOp(), PCAContrastOp(), HSVPowerOp(), HorizontalFlipOp()]
    if name in ("relative_position", "jigsaw"):
        return []  # per-patch guards live in the method itself (gap, jitter, colour dropping)
    raise ValueError(f"method.name: unknown method {name!r}")


def default_optim(method: Any, batch_size: int, epochs: int) -> OptimSpec:
    """The paper's optimizer for a method (learning rates scaled linearly with the batch where the paper does)."""
    name = method.name
    if name == "simclr":
        # LARS, lr = 0.3 x BS/256, wd 1e-6, 10-epoch warmup (of 100+) then cosine (SimCLR §2.2, App. B.1).
        return OptimSpec(
            name="lars", lr=0.3 * batch_size / 256, weight_decay=1e-6,
            warmup_epochs=min(10.0, epochs / 10), schedule="cosine",
        )
    if name == "moco":
        # SGD lr 0.03 at batch 256, momentum 0.9, wd 1e-4; v1: x0.1 at 120 and 160 of 200 epochs; v2: cosine.
        lr = 0.03 * batch_size / 256
        if method.version == 1:
            return OptimSpec(
                name="sgd", lr=lr, weight_decay=1e-4, schedule="step", milestones=[0.6 * epochs, 0.8 * epochs]
            )
        return OptimSpec(name="sgd", lr=lr, weight_decay=1e-4, schedule="cosine")
    if name == "rotation":
        # RotNet: SGD Nesterov, momentum 0.9, wd 5e-4, lr 0.1 (schedule: steps; cosine here, see docs).
        return OptimSpec(name="sgd", lr=0.1, nesterov=True, weight_decay=5e-4, schedule="cosine")
    if name in ("exemplar", "relative_position", "jigsaw"):
        # Exemplar-CNN / Jigsaw: SGD momentum 0.9, lr 0.01, wd 5e-4.
        return OptimSpec(name="sgd", lr=0.01 * max(1.0, batch_size / 256), weight_decay=5e-4, schedule="cosine")
    raise ValueError(f"method.name: unknown method {name!r}")
