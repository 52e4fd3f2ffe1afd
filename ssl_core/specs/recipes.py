"""The papers' recipes: one place for every method-dependent default.

A pretraining spec leaves ``augment`` and ``optim`` as ``None`` to mean "the paper's"; its
validator fills them in from here, so a stored spec is always explicit.
"""

from __future__ import annotations

import math
from typing import Any

from ssl_core.specs.augment import (
    ColorJitterOp, GaussianBlurOp, GrayscaleOp, HorizontalFlipOp, HSVPowerOp, PCAContrastOp, RandomAffineOp,
    RandomCropOp, RandomResizedCropOp,
)
from ssl_core.specs.optim import OptimSpec


# Images above this side get the ImageNet recipes' blur and SimCLR's full colour strength; at or
# below it (CIFAR, Fashion-MNIST) they get SimCLR's CIFAR recipe: no blur, strength 0.5.
SMALL_IMAGE_MAX = 64


def blur_ops(image_size: int) -> list[Any]:
    """The Gaussian blur of SimCLR and MoCo v2, one rule for both so a matched comparison is matched:
    p 0.5, sigma [0.1, 2], kernel 10 % of the side above 64 px; none at or below, as SimCLR's CIFAR
    recipe (App. B.9). MoCo v2's code blurs at every size, but only ever ran at 224 px: leaving it out on
    small images is our deviation (docs/methods.md)."""
    return [GaussianBlurOp()] if image_size > SMALL_IMAGE_MAX else []


def simclr_jitter(image_size: int) -> ColorJitterOp:
    """SimCLR's colour jitter at strength s (0.8s, 0.8s, 0.8s, 0.2s, p 0.8): s = 1.0 on ImageNet-sized
    images, 0.5 on small ones (App. A and B.9)."""
    s = 1.0 if image_size > SMALL_IMAGE_MAX else 0.5
    return ColorJitterOp(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)


def default_augment(method: Any, image_size: int) -> list[Any]:
    """The paper's augmentation pipeline for a method (scaled to small images; see docs/methods.md)."""
    name = method.name
    if name == "simclr":
        # SimCLR App. A / B.9: crop (0.08, 1), flip, jitter p 0.8, gray 0.2, then blur (by size, see blur_ops).
        ops: list[Any] = [
            RandomResizedCropOp(scale=(0.08, 1.0)), HorizontalFlipOp(), simclr_jitter(image_size), GrayscaleOp(),
        ]
        return ops + blur_ops(image_size)
    if name == "moco":
        if method.version == 1:
            # MoCo v1 code: crop (0.2, 1), gray 0.2, jitter 0.4 x4 (always), flip.
            return [
                RandomResizedCropOp(scale=(0.2, 1.0)), GrayscaleOp(),
                ColorJitterOp(p=1.0, hue=0.4), HorizontalFlipOp(),
            ]
        # MoCo v2 (--aug-plus): crop (0.2, 1), jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2, blur p 0.5 (by size,
        # as SimCLR's: see blur_ops), flip.
        return [
            RandomResizedCropOp(scale=(0.2, 1.0)), ColorJitterOp(), GrayscaleOp(),
            *blur_ops(image_size), HorizontalFlipOp(),
        ]
    if name == "rotation":
        return [RandomCropOp(padding=max(1, image_size // 8)), HorizontalFlipOp()]
    if name == "exemplar":
        return [RandomAffineOp(), PCAContrastOp(), HSVPowerOp(), HorizontalFlipOp()]
    if name in ("relative_position", "jigsaw"):
        return []  # per-patch guards live in the method itself (gap, jitter, colour dropping)
    raise ValueError(f"method.name: unknown method {name!r}")


def default_optim(method: Any, batch_size: int, epochs: int) -> OptimSpec:
    """The paper's optimizer for a method (learning rates scaled with the batch as the paper does)."""
    name = method.name
    if name == "simclr":
        # LARS, wd 1e-6, 10-epoch warmup (of 100+) then cosine (SimCLR §2.2, App. B.1). lr: 0.3 x BS/256
        # (linear) from batch 4096 up, the paper's square-root scaling 0.075 x sqrt(BS) below it (App. B.1:
        # better for small batches and short runs; the two agree at 4096). Linear scaling at batch 128
        # gives lr 0.15, where LARS's trust ratio (eta 0.001) moves each layer by 0.015 % of its norm per
        # step: a CPU-sized run hardly leaves its random init.
        return OptimSpec(
            name="lars", lr=max(0.3 * batch_size / 256, 0.075 * math.sqrt(batch_size)), weight_decay=1e-6,
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
