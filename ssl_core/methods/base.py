"""What every method shares: the spec, the augmentation pipeline, dataset normalisation.

A method is an ``nn.Module`` with ``backbone`` (kept and exported), ``prepare_data`` and
``training_step`` (see docs/internals.md). Nothing else lives here on purpose: each method
file reads top to bottom like its paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssl_core.augment import build_pipeline, normalize
from ssl_core.backbones import build_backbone
from ssl_core.normalization import dataset_stats
from ssl_core.specs import PretrainSpec


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Top-1 accuracy as a detached 0-d tensor (no host sync)."""
    return (logits.detach().argmax(dim=1) == targets).float().mean()


class SSLMethod(nn.Module):
    """Base of the seven methods: builds the backbone, the pipeline and the normalisation."""

    def __init__(self, spec: PretrainSpec) -> None:
        super().__init__()
        self.spec = spec
        self.in_channels = spec.data.resolved_channels
        self.image_size = spec.data.resolved_image_size
        # the stem is resolved for the image size even for patch methods: the exported backbone
        # must be the one evaluation rebuilds from (backbone spec, channels, image size)
        self.backbone = build_backbone(spec.backbone, self.in_channels, self.image_size)
        self.pipeline = build_pipeline(list(spec.augment or []), self.image_size)
        self.mean, self.std = dataset_stats(spec.data.dataset, self.in_channels)

    def prepare_data(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """The training set the loop iterates over: by default the images, without targets."""
        return images, None

    def fit_to_data(self, samples: int) -> dict[str, float]:
        """Adapt to the number of training samples per epoch before the first step (the trainer
        calls it once the data is known); returns values to record with the run's metrics."""
        return {}

    def augment(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 (B, C, H, W) -> float (B, C, S, S) in [0, 1]: the spec's pipeline, on the batch's device."""
        return self.pipeline(images, generator=generator)

    def augment_views(self, images: Tensor, views: int, generator: torch.Generator | None = None) -> Tensor:
        """``views`` independent augmentations of each image, (views x B, C, S, S): view k of
        image i at row k B + i. One pipeline call on the batch repeated ``views`` times:
        the same distribution as ``views`` calls, with half the per-op overhead and larger,
        better-parallelised ops (docs/performance.md)."""
        return self.augment(images.repeat(views, *([1] * (images.ndim - 1))), generator)

    def normalize(self, x: Tensor) -> Tensor:
        """Dataset mean/std normalisation of a float batch in [0, 1]."""
        return normalize(x, self.mean, self.std)

    def training_step(
        self, images: Tensor, targets: Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def forward(
        self, images: Tensor, targets: Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """A training step: DistributedDataParallel hooks its gradient averaging into ``forward``."""
        return self.training_step(images, targets, generator)
