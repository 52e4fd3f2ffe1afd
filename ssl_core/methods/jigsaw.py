"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016): the context-free network (CFN).

An image is cut into a 3x3 grid of cells; from each cell a tile is taken at a random
offset (the gap and jitter between tiles hide continuing edges); the nine tiles are
shuffled by one of P permutations from a fixed set with maximal average Hamming
distance (Algorithm 1, :func:`make_permutations`), and the network predicts which.
Shortcut guards, as in the paper: each tile normalised on its own (mean and std per
channel), 30% of the images in grayscale, colour channels of each tile shifted by up to
``channel_jitter`` px (chromatic aberration). The CFN: one weight-shared tower per tile
(the backbone) -> fc6 (``tile_dim``) per tile, the nine fc6 outputs concatenated in the
shuffled order -> fc7 (``hidden_dim``) -> fc8 over the P permutations.

The set's quality is reported once, at construction (the paper reports it per set):
``Jigsaw.permutation_stats`` = {"min_hamming", "mean_hamming"}, also logged on the
``pretextlab.jigsaw`` logger; the values are constants, so they are not step metrics.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.augment.sampling import rand, randint
from ssl_core.heads import ClassifierHead
from ssl_core.methods.base import SSLMethod, accuracy
from ssl_core.methods.patches import extract_patches
from ssl_core.methods.permutations import make_permutations, permutation_stats
from ssl_core.specs import PretrainSpec

__all__ = ["Jigsaw", "make_permutations", "permutation_stats"]

TILES = 9
log = logging.getLogger("pretextlab.jigsaw")
_LUMA = (0.299, 0.587, 0.114)


def normalize_tiles(tiles: Tensor, eps: float = 1e-2) -> Tensor:
    """Each tile and channel to zero mean, unit std on its own: (B, 9, C, T, T) -> same.

    ``eps`` keeps a flat tile (std 0) finite instead of amplifying rounding noise.
    """
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


class Jigsaw(SSLMethod):
    def __init__(self, spec: PretrainSpec) -> None:
        m = spec.method
        size = spec.data.resolved_image_size
        self.cell = size // 3
        self.tile_size = m.resolved_tile_size(size)
        super().__init__(spec)
        self.register_buffer("permutations", make_permutations(m.num_permutations, TILES, m.permutation_seed), persistent=False)
        # Algorithm 1 maximises the average distance; the minimum says how alike the two
        # closest permutations are (the paper: 2 for 100 and for 1000)
        self.permutation_stats: dict[str, float] = permutation_stats(self.permutations)
        log.info(
            "jigsaw permutation set: P=%d (seed %d), min Hamming %.0f, mean Hamming %.2f",
            m.num_permutations, m.permutation_seed,
            self.permutation_stats["min_hamming"], self.permutation_stats["mean_hamming"],
        )
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)
        self.fc6 = nn.Sequential(nn.Linear(self.backbone.feature_dim, m.tile_dim), nn.ReLU(inplace=True))
        self.head = ClassifierHead(TILES * m.tile_dim, m.num_permutations, hidden_dim=m.hidden_dim)  # fc7 -> fc8

    def make_tiles(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, S, S) float -> the nine tiles in grid (raster) order, (B, 9, C, T, T), channel-jittered."""
        m = self.spec.method
        b, c, s, _ = x.shape
        cell, t, cj = self.cell, self.tile_size, m.channel_jitter
        origin = randint(s - 3 * cell + 1, (b, 1, 2), x.device, generator)  # the 3x3-cell crop
        cells = torch.arange(TILES, device=x.device)
        grid = torch.stack([cells // 3, cells % 3], dim=-1).view(1, TILES, 2)  # (row, col) per cell
        offset = randint(cell - t + 1, (b, TILES, 2), x.device, generator)  # tile inside its cell
        corner = origin + grid * cell + offset  # (B, 9, 2)
        # chromatic aberration guard: every channel of every tile shifted on its own
        shift = randint(2 * cj + 1, (b, TILES, c, 2), x.device, generator) - cj if c > 1 and cj > 0 else 0
        corner = (corner[:, :, None, :] + shift).clamp(0, s - t)  # (B, 9, C, 2)
        return extract_patches(x, corner[..., 0], corner[..., 1], t)

    def shuffle(self, tiles: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Tiles (B, 9, ...) reordered by a random permutation of the set: out[:, i] = tiles[:, perm[i]]; labels (B,)."""
        b = tiles.shape[0]
        labels = randint(self.permutations.shape[0], (b,), tiles.device, generator)
        order = self.permutations[labels]  # (B, 9)
        idx = order.view(b, TILES, *([1] * (tiles.dim() - 2))).expand_as(tiles)
        return tiles.gather(1, idx), labels

    def training_step(self, images, targets, generator=None) -> tuple[Tensor, dict[str, Tensor]]:
        m = self.spec.method
        x = self.augment(images, generator)  # float in [0, 1]; spec.augment is empty by default
        b, c = x.shape[:2]
        if c == 3 and m.grayscale_p > 0:
            gray = (x * self.luma.to(x.dtype)).sum(1, keepdim=True).expand_as(x)
            x = torch.where(rand((b, 1, 1, 1), x.device, generator) < m.grayscale_p, gray, x)
        tiles = self.make_tiles(x, generator)  # (B, 9, C, T, T)
        tiles = normalize_tiles(tiles)  # replaces the dataset mean/std normalisation
        tiles, labels = self.shuffle(tiles, generator)
        feats = self.fc6(self.backbone(tiles.flatten(0, 1)))  # shared tower + fc6: (9B, tile_dim)
        logits = self.head(feats.view(b, -1))  # concatenated in shuffled order: (B, 9*tile_dim) -> (B, P)
        loss = F.cross_entropy(logits, labels)
        return loss, {"pretext_acc": accuracy(logits, labels)}
