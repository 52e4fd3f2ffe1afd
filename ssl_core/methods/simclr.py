"""SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020).

Two views of each image from the augmentation pipeline, the encoder f (the backbone,
kept after training) gives h, the projection g (Linear-BN-ReLU-Linear-BN, as the official
code; discarded) gives z, and NT-Xent pulls the two views of an image together against
the other 2N-2 views.

Under torch.distributed N is the global batch: every rank all-gathers the projections with their
gradient (:func:`~ssl_core.distributed.gather_with_grad`), so each anchor sees the 2N-2 views of all
ranks, as in the paper's TPU runs; ``method.sync_bn`` makes BatchNorm global too (SyncBatchNorm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.distributed import gather_with_grad
from ssl_core.heads import SimCLRProjectionHead
from ssl_core.losses import nt_xent
from ssl_core.methods.base import SSLMethod
from ssl_core.specs import PretrainSpec


class SimCLR(SSLMethod):
    def __init__(self, spec: PretrainSpec) -> None:
        super().__init__(spec)
        m = spec.method
        dim = self.backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(dim, m.projection_hidden_dim or dim, m.projection_dim)
        self.temperature = float(m.temperature)

    def training_step(self, images, targets, generator=None) -> tuple[Tensor, dict[str, Tensor]]:
        b = images.shape[0]
        x = self.augment_views(images, 2, generator)  # (2N, ...): two independent draws of t ~ T
        # one forward over 2N views: BN sees both views, as the paper's global BN does
        h = self.backbone(self.normalize(x))  # (2N, feature_dim)
        z = self.projection_head(h)  # (2N, projection_dim)
        z1, z2 = gather_with_grad(z[:b]), gather_with_grad(z[b:])  # the global batch (itself on one process)
        loss = nt_xent(z1, z2, self.temperature)
        return loss, {"pretext_acc": _positive_top1(z1.detach(), z2.detach())}


def _positive_top1(z1: Tensor, z2: Tensor) -> Tensor:
    """Fraction of the 2N anchors whose most similar other view is their positive."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (z @ z.t()).fill_diagonal_(float("-inf"))
    target = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return (sim.argmax(dim=1) == target).float().mean()
