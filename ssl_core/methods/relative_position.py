"""Context prediction: relative patch position (Doersch, Gupta & Efros, ICCV 2015).

For each image a 3x3 grid of patches is laid out at a random place (patch side P, a gap
between patches, each patch jittered by up to ``jitter`` px); the pair is the centre
patch and one of its 8 neighbours, and the network predicts which neighbour it was:
labels 0-7 in raster order::

    0 1 2
    3 . 4
    5 6 7

Both patches go through one shared backbone (tied towers), the two feature vectors are
concatenated (late fusion) and an MLP (fc7, ``hidden_dim``) -> fc8 predicts the 8-way
label. The paper's guards against trivial shortcuts, per patch: the gap and jitter
(no continuing edges or textures; the spec refuses a gap that jitter could close, so
neighbours always keep at least 1 px between them), chromatic-aberration guards
('project', the default: every pixel's colour loses its component along the green-magenta
axis a = (-1, 2, -1), x <- (I - a a^T / a^T a) x, as in the paper and its reference code,
applied to the image in [0, 1] before normalisation; 'drop': keep one random colour channel
and replace the other two by Gaussian noise with 1/100 of its standard deviation; 'gray'),
random downsampling and upsampling of a share ``downsample_p`` of the patches (the
reference code's 0.33), and mean subtraction. On 1-channel data the chromatic guard is a
no-op: there is no colour to leak.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.augment.sampling import rand, randint, randn
from ssl_core.heads import ClassifierHead
from ssl_core.methods.base import SSLMethod, accuracy
from ssl_core.methods.patches import extract_patches
from ssl_core.specs import PretrainSpec

NUM_POSITIONS = 8
# label -> (row, col) of the neighbour in the 3x3 grid, raster order skipping the centre
NEIGHBOURS = torch.tensor([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)])
GREEN_MAGENTA = (-1.0, 2.0, -1.0)  # the paper's colour axis along which chromatic aberration shows


def green_magenta_projection() -> Tensor:
    """The paper's B = I - a a^T / (a^T a): subtracts a colour's projection onto the green-magenta axis."""
    a = torch.tensor(GREEN_MAGENTA)
    return torch.eye(3) - torch.outer(a, a) / a.dot(a)


def project_out_green_magenta(x: Tensor, proj: Tensor | None = None) -> Tensor:
    """(B, 3, H, W) RGB -> the same with every pixel's green-magenta component removed.

    ``proj``: :func:`green_magenta_projection` already on the device (a module buffer: no copy per step)."""
    proj = proj if proj is not None else green_magenta_projection().to(x.device)
    return torch.einsum("ij,bjhw->bihw", proj.to(x.dtype), x)


def sample_pairs(
    batch: int, image_size: int, patch: int, gap: int, jitter: int,
    generator: torch.Generator | None, device: torch.device, neighbours: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-left corners (B, 2) of the centre and the neighbour patch, and the labels (B,).

    ``neighbours``: NEIGHBOURS already on ``device`` (a module buffer: no copy per step).
    The grid (3P + 2*gap) is placed uniformly with room for the jitter on every side; each
    patch then moves by its own jitter in [-jitter, jitter] on both axes.
    """
    extent = 3 * patch + 2 * gap
    room = image_size - extent - 2 * jitter + 1  # number of grid origins per axis
    origin = randint(room, (batch, 2), device, generator) + jitter  # (B, 2): y, x
    labels = randint(NUM_POSITIONS, (batch,), device, generator)
    neighbours = neighbours if neighbours is not None else NEIGHBOURS.to(device)
    cells = torch.stack([torch.ones_like(neighbours[labels]), neighbours[labels]], 1)  # centre (1, 1) first
    shift = randint(2 * jitter + 1, (batch, 2, 2), device, generator) - jitter  # per patch, per axis
    corners = origin[:, None, :] + cells * (patch + gap) + shift  # (B, 2 patches, 2 axes)
    return corners[..., 0], corners[..., 1], labels


class RelativePosition(SSLMethod):
    def __init__(self, spec: PretrainSpec) -> None:
        m = spec.method
        self.patch_size, self.gap, self.jitter = m.resolved_geometry(spec.data.resolved_image_size)
        super().__init__(spec)
        self.head = ClassifierHead(2 * self.backbone.feature_dim, NUM_POSITIONS, hidden_dim=m.hidden_dim)
        self.register_buffer("neighbours", NEIGHBOURS.clone(), persistent=False)
        self.register_buffer("colour_projection", green_magenta_projection(), persistent=False)

    def make_pairs(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(B, C, S, S) float -> patch pairs (B, 2, C, P, P) (centre first) and labels (B,)."""
        tops, lefts, labels = sample_pairs(x.shape[0], x.shape[-1], self.patch_size, self.gap, self.jitter, generator,
                                           x.device, self.neighbours)
        return extract_patches(x, tops, lefts, self.patch_size), labels

    def guard(self, patches: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The paper's per-patch guards on normalised patches (B, 2, C, P, P)."""
        m = self.spec.method
        b, k, c, p, _ = patches.shape
        flat = patches.reshape(b * k, c, p, p)
        if m.downsample_p > 0:
            # paper: some patches downsampled to ~100 pixels (of 96x96) and upsampled back;
            # here to the same ~1/10 side, at least 2 px
            side = max(2, round(p * 10 / 96))
            low = F.interpolate(flat, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            up = F.interpolate(low, size=(p, p), mode="bilinear", align_corners=False)
            pick = rand((b * k, 1, 1, 1), flat.device, generator) < m.downsample_p
            flat = torch.where(pick, up, flat)
        flat = flat - flat.mean(dim=(2, 3), keepdim=True)  # per-patch mean subtraction
        if c > 1 and m.chromatic == "drop":
            keep = randint(c, (b * k,), flat.device, generator)  # the channel kept per patch
            kept = flat[torch.arange(b * k, device=flat.device), keep]  # (B*2, P, P)
            noise_std = kept.flatten(1).std(dim=1).view(-1, 1, 1, 1) / 100
            noise = randn(tuple(flat.shape), flat.device, generator).to(flat.dtype) * noise_std
            is_kept = (torch.arange(c, device=flat.device)[None, :] == keep[:, None]).view(b * k, c, 1, 1)
            flat = torch.where(is_kept, flat, noise)
        elif c > 1 and m.chromatic == "gray":
            flat = flat.mean(dim=1, keepdim=True).expand(-1, c, -1, -1)
        return flat.reshape(b, k, c, p, p)

    def training_step(self, images, targets, generator=None) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.augment(images, generator)  # spec.augment is empty by default
        if x.shape[1] == 3 and self.spec.method.chromatic == "project":
            # on colours in [0, 1], before normalisation: the paper projects pixel values
            x = project_out_green_magenta(x, self.colour_projection)
        x = self.normalize(x)
        pairs, labels = self.make_pairs(x, generator)
        pairs = self.guard(pairs, generator)
        b = pairs.shape[0]
        feats = self.backbone(pairs.flatten(0, 1))  # one tied tower for both patches: (2B, F)
        logits = self.head(feats.view(b, -1))  # [centre, neighbour] concatenated: (B, 2F) -> (B, 8)
        loss = F.cross_entropy(logits, labels)
        return loss, {"pretext_acc": accuracy(logits, labels)}
