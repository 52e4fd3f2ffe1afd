"""Exemplar-CNN (Dosovitskiy, Springenberg, Riedmiller & Brox, NIPS 2014).

N seed images become N surrogate classes; each training sample is a seed under a random
composition of the paper's transformations (translation, scaling, rotation, the two
contrast changes, hue; the ``random_affine``, ``pca_contrast``, ``hsv_power`` and
``horizontal_flip`` ops of ``spec.augment``) and the network classifies it as its seed.
Seeds are sampled in proportion to their mean squared gradient magnitude, so that flat,
textureless patches (which no transformation can make distinctive) are rare.
The paper's surrogate dataset holds K transformed samples per class (K swept 1-300, saturating
near 100), so one epoch is N*K samples. Here too (``method.samples_per_class`` = K): the trainer
repeats the N seeds K times per epoch (``epoch_repeats``, shuffled together) without storing N*K
images, and each occurrence gets a fresh random transformation rather than one of K fixed ones.
Here a seed is a whole (small) image rather than a 32x32 patch of a 96 px one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.errors import DatasetError
from ssl_core.heads import ClassifierHead
from ssl_core.methods.base import SSLMethod, accuracy
from ssl_core.specs import PretrainSpec


def mean_squared_gradient(images: Tensor, chunk: int = 4096) -> Tensor:
    """(N, C, H, W) uint8 or float -> (N,) mean over pixels and channels of |grad|^2 (finite differences, [0,1] scale)."""
    out = []
    for start in range(0, images.shape[0], chunk):  # chunks bound the float copy's memory
        x = images[start : start + chunk].float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        gx = x[..., :, 1:] - x[..., :, :-1]
        gy = x[..., 1:, :] - x[..., :-1, :]
        out.append(gx.pow(2).mean(dim=(1, 2, 3)) + gy.pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(out)


def select_seeds(images: Tensor, count: int, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """Indices (count,) of the seed images, sampled without replacement.

    ``gradient``: probability proportional to the mean squared gradient magnitude (paper);
    ``random``: uniform. Raises DatasetError when there are fewer than ``count`` images.
    """
    n = images.shape[0]
    if n < count:
        raise DatasetError(
            f"exemplar: method.num_classes is {count} surrogate classes but the dataset has only {n} images; "
            "lower method.num_classes or use more data"
        )
    device = generator.device if generator is not None else images.device
    if mode == "gradient":
        weights = mean_squared_gradient(images).to(device, torch.float64)
        weights = weights + 1e-12 * weights.max().clamp_min(1e-12)  # flat images stay drawable
    else:
        weights = torch.ones(n, dtype=torch.float64, device=device)
    return torch.multinomial(weights, count, replacement=False, generator=generator).to(images.device)


class ExemplarCNN(SSLMethod):
    """Backbone -> FC (hidden_dim, dropout) -> N-way softmax over the surrogate classes."""

    def __init__(self, spec: PretrainSpec) -> None:
        super().__init__(spec)
        m = spec.method
        self.num_classes = int(m.num_classes)
        # K samples per surrogate class per epoch: the trainer iterates N*K (seed, label) pairs
        self.epoch_repeats = int(m.samples_per_class)
        self.head = ClassifierHead(self.backbone.feature_dim, self.num_classes, hidden_dim=m.hidden_dim, dropout=m.dropout)

    def prepare_data(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The N seed images (N, C, H, W) and their surrogate labels arange(N); an epoch visits each K times."""
        idx = select_seeds(images, self.num_classes, self.spec.method.seed_selection, generator)
        return images[idx], torch.arange(self.num_classes, device=images.device)

    def training_step(self, images, targets, generator=None) -> tuple[Tensor, dict[str, Tensor]]:
        if targets is None:
            raise ValueError("exemplar: training_step needs the surrogate labels from prepare_data")
        x = self.normalize(self.augment(images, generator))  # a fresh random transformation per occurrence
        logits = self.head(self.backbone(x))  # (B, N)
        loss = F.cross_entropy(logits, targets)
        return loss, {"pretext_acc": accuracy(logits, targets)}
