"""RotNet: predicting image rotations (Gidaris, Singh & Komodakis, ICLR 2018).

Every augmented image of the batch is fed in its four rotations 0/90/180/270 degrees
(torch.rot90: a transpose and flip, no interpolation, so no artefact gives the angle
away), B images -> 4B inputs, and a 4-way classifier on the backbone features learns
which rotation was applied. The official code puts all four copies in the same batch,
which the paper reports as a clear gain over sampling one rotation per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.heads import ClassifierHead
from ssl_core.methods.base import SSLMethod, accuracy
from ssl_core.specs import PretrainSpec

NUM_ROTATIONS = 4


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) -> the 4B rotated copies (rotation-major) and their labels 0..3 (k * 90 degrees counter-clockwise)."""
    b = x.shape[0]
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(NUM_ROTATIONS)], dim=0)  # (4B, C, H, W)
    labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat_interleave(b)  # (4B,)
    return rotated, labels


class RotationPrediction(SSLMethod):
    """Backbone -> linear 4-way head (RotNet: global average pooling -> Linear(C, 4))."""

    def __init__(self, spec: PretrainSpec) -> None:
        super().__init__(spec)
        self.head = ClassifierHead(self.backbone.feature_dim, NUM_ROTATIONS)

    def training_step(self, images, targets, generator=None) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.normalize(self.augment(images, generator))  # crop + flip (RotNet's CIFAR pipeline)
        x, labels = rotate_batch(x)  # (4B, C, S, S), (4B,)
        logits = self.head(self.backbone(x))  # (4B, 4)
        loss = F.cross_entropy(logits, labels)
        return loss, {"pretext_acc": accuracy(logits, labels)}
