"""The methods: a discriminated union on ``name``; defaults are the papers' (scaled where noted)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from ssl_core.specs.base import (MAX_IMAGE_SIZE, MAX_PERMUTATIONS, MAX_QUEUE_SIZE, MAX_SEED, Bool, Int, IntChoice, Real,
                                 Strict)

if TYPE_CHECKING:
    from ssl_core.specs.job import PretrainSpec


class RotationSpec(Strict):
    """RotNet (Gidaris et al., ICLR 2018): all four rotations of every image in the batch, 4-way CE."""

    name: Literal["rotation"] = "rotation"


class ExemplarSpec(Strict):
    """Exemplar-CNN (Dosovitskiy et al., NIPS 2014): N surrogate classes of heavily augmented seed images."""

    name: Literal["exemplar"] = "exemplar"
    num_classes: Int = Field(8000, ge=2, le=100_000, description="N: seed images = surrogate classes")
    samples_per_class: Int = Field(
        100, ge=1, le=10_000,
        description="K: transformed samples per surrogate class in one epoch (an epoch is N*K samples; "
        "paper sweeps K 1-300, saturating near 100)",
    )
    seed_selection: Literal["gradient", "random"] = Field(
        "gradient", description="gradient: sample seeds in proportion to mean squared gradient magnitude (paper)"
    )
    dropout: Real = Field(0.5, ge=0.0, lt=1.0)
    hidden_dim: Int = Field(512, ge=8, le=8192, description="FC layer before the N-way softmax (paper: 128-1024)")


class RelativePositionSpec(Strict):
    """Context prediction (Doersch et al., ICCV 2015), scaled to small images.

    Paper: 96 px patches, 48 px gap (half a patch), up to 7 px jitter (7/96 of a patch).
    ``None`` keeps those proportions at the image's size (the largest patch whose 3x3 grid,
    gaps and jitter fit), with at least 1 px jitter and a gap that always exceeds twice the
    jitter, so no two patches touch after jitter (28 px: 6 px patches, gap 3, jitter 1).
    """

    name: Literal["relative_position"] = "relative_position"
    patch_size: Int | None = Field(None, ge=4, le=MAX_IMAGE_SIZE, description="None = the largest that fits the image")
    gap: Int | None = Field(None, ge=0, le=128, description="px between cells; None = half a patch (paper 48 of 96), "
                                                            "at least 2*jitter + 1")
    jitter: Int | None = Field(None, ge=0, le=64, description="max shift of each patch per axis in px; None = 7/96 "
                                                              "of a patch (at least 1, below gap/2 when gap is given)")
    chromatic: Literal["project", "drop", "gray", "none"] = Field(
        "project", description="per-patch guard against chromatic aberration: project: remove the green-magenta "
        "colour axis (the paper's projection, its reference code); drop: keep one random channel, the other two "
        "become noise (the paper's colour dropping); gray: average the channels",
    )
    downsample_p: Real = Field(0.33, ge=0.0, le=1.0, description="share of patches downsampled and upsampled back "
                                                                 "(reference code: 0.33)")
    hidden_dim: Int = Field(512, ge=8, le=8192, description="fc7/fc8 width (paper 4096)")

    def resolved_geometry(self, image_size: int) -> tuple[int, int, int]:
        """(patch, gap, jitter) in px: given values are kept, the others follow the paper's proportions."""
        def around(p: int) -> tuple[int, int, int]:
            if self.jitter is not None:
                j = self.jitter
            else:  # paper 7/96; with a given gap, small enough to keep the patches apart
                j = max(1, round(p * 7 / 96))
                j = j if self.gap is None else max(0, min(j, (self.gap - 1) // 2))
            g = self.gap if self.gap is not None else max(2 * j + 1, round(p / 2))
            return p, g, j

        if self.patch_size is not None:
            return around(self.patch_size)
        for p in range(image_size // 3, 1, -1):  # the largest patch whose grid, gaps and jitter fit
            p, g, j = around(p)
            if 3 * p + 2 * g + 2 * j <= image_size:
                return p, g, j
        return around(1)  # nothing fits: the job validator refuses it, naming the numbers

    def resolved_patch_size(self, image_size: int) -> int:
        return self.resolved_geometry(image_size)[0]


class JigsawSpec(Strict):
    """Jigsaw puzzle (Noroozi & Favaro, ECCV 2016), scaled to small images.

    Paper: 225 px crop, 75 px cells, 64 px tiles placed at random inside each cell (gap + jitter).
    """

    name: Literal["jigsaw"] = "jigsaw"
    num_permutations: Int = Field(100, ge=2, le=MAX_PERMUTATIONS)
    permutation_seed: Int = Field(0, ge=0, le=MAX_SEED)
    tile_size: Int | None = Field(None, ge=3, le=MAX_IMAGE_SIZE, description="None = round(cell * 64/75)")
    grayscale_p: Real = Field(0.3, ge=0.0, le=1.0)
    channel_jitter: Int = Field(2, ge=0, le=8, description="per-channel shift in pixels (paper: 0-2 px)")
    tile_dim: Int = Field(256, ge=8, le=8192, description="fc6 per tile (paper 1024)")
    hidden_dim: Int = Field(512, ge=8, le=8192, description="fc7 (paper 4096)")

    def resolved_tile_size(self, image_size: int) -> int:
        cell = image_size // 3
        return self.tile_size or max(3, round(cell * 64 / 75))


class SimCLRSpec(Strict):
    """SimCLR (Chen et al., ICML 2020): NT-Xent over 2N views; the projection g is discarded after training."""

    name: Literal["simclr"] = "simclr"
    temperature: Real = Field(0.5, gt=0.0, le=10.0, description="paper CIFAR: 0.5")
    projection_dim: Int = Field(128, ge=2, le=8192)
    projection_hidden_dim: Int | None = Field(None, ge=2, le=16384, description="None = the backbone's feature dim")
    sync_bn: Bool | None = Field(
        None, description="global BatchNorm over all ranks (SyncBatchNorm, CUDA only); None = on for multi-GPU runs")


class MoCoSpec(Strict):
    """MoCo v1 (He et al., CVPR 2020) and v2 (Chen et al., 2020)."""

    name: Literal["moco"] = "moco"
    version: Annotated[Literal[1, 2], IntChoice] = 2
    queue_size: Int = Field(
        4096, ge=1, le=MAX_QUEUE_SIZE,
        description="K (the official CIFAR-10 demo: 4096 of 50k images; the papers: 65536 of ImageNet's 1.28M); "
        "at most the training samples minus one batch",
    )
    cap_queue: Bool = Field(
        False, description="a queue larger than the training samples minus one batch: false = refuse the job, "
        "true = shrink it to the largest multiple of batch_size that fits (logged, metric method/queue_size)",
    )
    momentum: Real = Field(0.999, ge=0.0, le=1.0, description="m in theta_k <- m*theta_k + (1-m)*theta_q")
    temperature: Real | None = Field(None, gt=0.0, le=10.0, description="None = 0.07 (v1) / 0.2 (v2)")
    mlp_head: Bool | None = Field(None, description="None = linear for v1, 2-layer MLP for v2")
    projection_dim: Int = Field(128, ge=2, le=8192)
    shuffle_bn: Literal["auto", "split", "shuffle", "off"] = Field(
        "auto",
        description="auto: all-gather shuffle under multi-process training, split-batch BN on one device",
    )
    bn_splits: Int = Field(8, ge=1, le=256, description="sub-batches for single-device split BN")
    symmetric: Bool = Field(False, description="symmetric loss (MoCo CIFAR demo); papers use the asymmetric one")

    @model_validator(mode="after")
    def _resolve(self) -> "MoCoSpec":
        if self.temperature is None:
            self.temperature = 0.07 if self.version == 1 else 0.2
        if self.mlp_head is None:
            self.mlp_head = self.version == 2
        return self


def capped_queue_size(samples: int, batch: int) -> int:
    """The largest MoCo queue a training set allows that is a multiple of the batch (0: none)."""
    return max(0, samples - batch) // batch * batch


def queue_refusal(queue: int, samples: int, batch: int) -> str | None:
    """Why a queue of ``queue`` keys is too large for ``samples`` training samples, or None.

    Keys of earlier batches of the same images are stale positives posing as negatives; a queue
    longer than the samples of the other batches is bound to hold them (and more than one key of
    an image). Within this limit, a per-epoch reshuffle still lets about (K/N)^2/2 of the queries
    meet an older key of their own image (docs/methods.md)."""
    if queue <= samples - batch:
        return None
    fits = capped_queue_size(samples, batch)
    advice = (f"lower it to at most {fits} (a multiple of batch_size) or set method.cap_queue: true"
              if fits else "use more training images or a smaller batch_size")
    return (f"method.queue_size: {queue} keys exceed the {samples} training samples minus one batch "
            f"({batch}) = {samples - batch}; {advice}")


MethodSpec = Annotated[
    Union[RotationSpec, ExemplarSpec, RelativePositionSpec, JigsawSpec, SimCLRSpec, MoCoSpec],
    Field(discriminator="name"),
]
METHOD_NAMES = ("rotation", "exemplar", "relative_position", "jigsaw", "simclr", "moco")


def method_schemas() -> dict[str, dict[str, Any]]:
    """Each method's JSON Schema and defaults (served by GET /v1/methods)."""
    out: dict[str, dict[str, Any]] = {}
    for cls in (RotationSpec, ExemplarSpec, RelativePositionSpec, JigsawSpec, SimCLRSpec, MoCoSpec):
        name = cls.model_fields["name"].default
        out[name] = {
            "name": name,
            "description": (cls.__doc__ or "").strip().splitlines()[0],
            "schema": cls.model_json_schema(),
            "defaults": json.loads(cls().model_dump_json()),
        }
    return out


def method_label(spec: PretrainSpec) -> str:
    """'moco_v2', 'simclr', ...: the name used on the leaderboard."""
    m = spec.method
    return f"moco_v{m.version}" if m.name == "moco" else m.name
