"""Declarative specs for pretraining and evaluation jobs.

Pydantic v2 only: this module must stay importable without torch, because the API
validates every request with it. Each spec value has exactly one default, here.
Where the paper's recipe depends on the method (the augmentation pipeline, the
optimizer), the field defaults to ``None`` and is resolved by a validator to the
method's recipe from :func:`default_augment` / :func:`default_optim`, so a stored
spec is always explicit.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

# ---------------------------------------------------------------------------
# Limits (input safety): the API refuses anything beyond these.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 8192
MAX_IMAGE_SIZE = 512
MAX_QUEUE_SIZE = 1 << 20
MAX_QUEUE_ELEMENTS = 1 << 26  # K x D floats: 256 MiB of fp32 keys at most
MAX_SUBSET = 10_000_000
MAX_PERMUTATIONS = 1000


class Strict(BaseModel):
    """Base for every spec: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# ---------------------------------------------------------------------------
# Datasets: static facts the validators and the API need without touching data.
class DatasetInfo(Strict):
    name: str
    image_size: int | None  # native side in pixels; None = varies (resize required)
    channels: int
    num_classes: int | None
    pretrain_split: str
    train_split: str  # labelled split used as the kNN bank / probe training set
    test_split: str
    splits: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            name="fashion_mnist", image_size=28, channels=1, num_classes=10,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.2860,), std=(0.3530,),
            description="Fashion-MNIST, 70k 28x28 grayscale (Debian dataset-fashion-mnist works offline)",
        ),
        DatasetInfo(
            name="digits", image_size=8, channels=1, num_classes=10,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.3050,), std=(0.3786,),
            description="scikit-learn's bundled 8x8 digits (1797 images; 80/20 split, seeded)",
        ),
        DatasetInfo(
            name="cifar10", image_size=32, channels=3, num_classes=10,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
            description="CIFAR-10, 60k 32x32 RGB",
        ),
        DatasetInfo(
            name="cifar100", image_size=32, channels=3, num_classes=100,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
            description="CIFAR-100, 60k 32x32 RGB",
        ),
        DatasetInfo(
            name="stl10", image_size=96, channels=3, num_classes=10,
            pretrain_split="unlabeled", train_split="train", test_split="test",
            splits=("unlabeled", "train", "test", "train+unlabeled"),
            mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
            description="STL-10, 100k unlabeled + 5k/8k labelled 96x96 RGB",
        ),
        DatasetInfo(
            name="image_folder", image_size=None, channels=3, num_classes=None,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test", "all"), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
            description="a folder of class sub-folders (or a split folder holding them); needs data.path and data.image_size",
        ),
        DatasetInfo(
            name="synthetic", image_size=32, channels=3, num_classes=4,
            pretrain_split="train", train_split="train", test_split="test",
            splits=("train", "test"), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
            description="procedurally generated shapes with labels, for tests only",
        ),
    ]
}

DatasetName = Literal["fashion_mnist", "digits", "cifar10", "cifar100", "stl10", "image_folder", "synthetic"]


class DataSpec(Strict):
    dataset: DatasetName = "fashion_mnist"
    split: str | None = Field(None, description="None = the dataset's pretraining split")
    path: str | None = Field(
        None, description="image_folder only: a folder inside the allowed data roots (relative to the data root or absolute)"
    )
    image_size: int | None = Field(
        None, ge=4, le=MAX_IMAGE_SIZE, description="resize side in pixels; None = the dataset's native size"
    )
    subset: int | None = Field(None, ge=1, le=MAX_SUBSET, description="use a seeded random subset of this many images")
    channels: Literal[1, 3] | None = Field(None, description="None = the dataset's own; 3 on a grayscale set repeats it")

    @model_validator(mode="after")
    def _check(self) -> "DataSpec":
        info = DATASETS[self.dataset]
        if self.split is not None and self.split not in info.splits:
            raise ValueError(f"data.split: {self.split!r} is not a split of {self.dataset} (one of {list(info.splits)})")
        if self.dataset == "image_folder":
            if not self.path:
                raise ValueError("data.path: image_folder needs a folder path")
            if self.image_size is None:
                raise ValueError("data.image_size: image_folder needs an image size to resize to")
        elif self.path is not None:
            raise ValueError(f"data.path: only image_folder takes a path, not {self.dataset}")
        if self.path is not None:
            if "\x00" in self.path or any(part == ".." for part in self.path.replace("\\", "/").split("/")):
                raise ValueError("data.path: '..' and NUL are not allowed in a dataset path")
        return self

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.dataset]

    @property
    def resolved_split(self) -> str:
        return self.split or self.info.pretrain_split

    @property
    def resolved_image_size(self) -> int:
        return int(self.image_size or self.info.image_size)  # validator guarantees one is set

    @property
    def resolved_channels(self) -> int:
        return int(self.channels or self.info.channels)


# ---------------------------------------------------------------------------
# Backbones
class BackboneSpec(Strict):
    name: Literal["resnet18", "resnet34", "resnet50", "convnet"] = "resnet18"
    cifar_stem: bool | None = Field(
        None, description="3x3 stride-1 first conv, no max-pool; None = on for images of 64 px and less"
    )
    width: int = Field(32, ge=4, le=512, description="convnet only: channels of the first block (doubles per block)")

    def resolved_cifar_stem(self, image_size: int) -> bool:
        return self.cifar_stem if self.cifar_stem is not None else image_size <= 64

    def min_input_size(self) -> int:
        """Smallest image side the backbone accepts (adaptive pooling handles the rest)."""
        return 4 if self.name == "convnet" else 8


# ---------------------------------------------------------------------------
# Augmentation ops: each works on a float batch (B, C, H, W) in [0, 1], draws its
# random parameters per sample, and is applied with probability p per sample.
class _Op(Strict):
    p: float = Field(1.0, ge=0.0, le=1.0, description="probability per sample")


class RandomResizedCropOp(_Op):
    op: Literal["random_resized_crop"] = "random_resized_crop"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _check(self) -> "RandomResizedCropOp":
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError("random_resized_crop.scale must satisfy 0 < min <= max <= 1")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError("random_resized_crop.ratio must satisfy 0 < min <= max")
        return self


class RandomCropOp(_Op):
    """Pad-and-crop (RotNet's RandomCrop(32, padding=4))."""

    op: Literal["random_crop"] = "random_crop"
    padding: int = Field(4, ge=0, le=64)


class HorizontalFlipOp(_Op):
    op: Literal["horizontal_flip"] = "horizontal_flip"
    p: float = Field(0.5, ge=0.0, le=1.0)


class RotateOp(_Op):
    op: Literal["rotate"] = "rotate"
    degrees: float = Field(20.0, ge=0.0, le=180.0)


class RandomAffineOp(_Op):
    """Exemplar-CNN's geometric family: translation, scaling and rotation, composed."""

    op: Literal["random_affine"] = "random_affine"
    translate: float = Field(0.2, ge=0.0, le=0.5, description="fraction of the image side")
    scale: tuple[float, float] = (0.7, 1.4)
    degrees: float = Field(20.0, ge=0.0, le=180.0)


class ColorJitterOp(_Op):
    op: Literal["color_jitter"] = "color_jitter"
    p: float = Field(0.8, ge=0.0, le=1.0)
    brightness: float = Field(0.4, ge=0.0, le=1.0)
    contrast: float = Field(0.4, ge=0.0, le=1.0)
    saturation: float = Field(0.4, ge=0.0, le=1.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)


class HSVPowerOp(_Op):
    """Exemplar-CNN's 'contrast 2' and hue change: S and V raised to a power, scaled and shifted; hue shifted."""

    op: Literal["hsv_power"] = "hsv_power"
    power: tuple[float, float] = (0.25, 4.0)
    factor: tuple[float, float] = (0.7, 1.4)
    shift: float = Field(0.1, ge=0.0, le=0.5)
    hue_shift: float = Field(0.1, ge=0.0, le=0.5)


class PCAContrastOp(_Op):
    """Exemplar-CNN's 'contrast 1': each principal-component projection of the pixels scaled by a factor."""

    op: Literal["pca_contrast"] = "pca_contrast"
    factor: tuple[float, float] = (0.5, 2.0)


class GrayscaleOp(_Op):
    """'De-colorized' view."""

    op: Literal["grayscale"] = "grayscale"
    p: float = Field(0.2, ge=0.0, le=1.0)


class GaussianBlurOp(_Op):
    op: Literal["gaussian_blur"] = "gaussian_blur"
    p: float = Field(0.5, ge=0.0, le=1.0)
    sigma: tuple[float, float] = (0.1, 2.0)
    kernel_fraction: float = Field(0.1, gt=0.0, le=0.5, description="kernel side as a fraction of the image side")


class SolarizeOp(_Op):
    op: Literal["solarize"] = "solarize"
    p: float = Field(0.2, ge=0.0, le=1.0)
    threshold: float = Field(0.5, ge=0.0, le=1.0)


class SharpenOp(_Op):
    """'Edge-enhanced' view: unsharp masking with a per-sample strength."""

    op: Literal["sharpen"] = "sharpen"
    p: float = Field(0.5, ge=0.0, le=1.0)
    strength: tuple[float, float] = (1.0, 3.0)


class EdgeMapOp(_Op):
    """'Salient edge map' view: Sobel gradient magnitude, normalised per image."""

    op: Literal["edge_map"] = "edge_map"
    p: float = Field(0.5, ge=0.0, le=1.0)


class DetexturizeOp(_Op):
    """'De-texturized' view: edge-preserving (bilateral) smoothing."""

    op: Literal["detexturize"] = "detexturize"
    p: float = Field(0.5, ge=0.0, le=1.0)
    sigma_space: float = Field(1.5, gt=0.0, le=10.0)
    sigma_color: float = Field(0.1, gt=0.0, le=1.0)
    iterations: int = Field(2, ge=1, le=8)


AugmentOp = Annotated[
    Union[
        RandomResizedCropOp, RandomCropOp, HorizontalFlipOp, RotateOp, RandomAffineOp, ColorJitterOp,
        HSVPowerOp, PCAContrastOp, GrayscaleOp, GaussianBlurOp, SolarizeOp, SharpenOp, EdgeMapOp, DetexturizeOp,
    ],
    Field(discriminator="op"),
]


# ---------------------------------------------------------------------------
# Methods: a discriminated union on `name`; defaults are the papers' (scaled where noted).
class RotationSpec(Strict):
    """RotNet (Gidaris et al., ICLR 2018): all four rotations of every image in the batch, 4-way CE."""

    name: Literal["rotation"] = "rotation"


class ExemplarSpec(Strict):
    """Exemplar-CNN (Dosovitskiy et al., NIPS 2014): N surrogate classes of heavily augmented seed images."""

    name: Literal["exemplar"] = "exemplar"
    num_classes: int = Field(8000, ge=2, le=100_000, description="N: seed images = surrogate classes")
    samples_per_class: int = Field(
        100, ge=1, le=10_000,
        description="K: transformed samples per surrogate class in one epoch (an epoch is N*K samples; "
        "paper sweeps K 1-300, saturating near 100)",
    )
    seed_selection: Literal["gradient", "random"] = Field(
        "gradient", description="gradient: sample seeds in proportion to mean squared gradient magnitude (paper)"
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    hidden_dim: int = Field(512, ge=8, le=8192, description="FC layer before the N-way softmax (paper: 128-1024)")


class RelativePositionSpec(Strict):
    """Context prediction (Doersch et al., ICCV 2015), scaled to small images.

    Paper: 96 px patches, 48 px gap, +-7 px jitter. Defaults here are for 28-32 px images:
    the patch side is derived from the image (``None``), gap and jitter in pixels.
    """

    name: Literal["relative_position"] = "relative_position"
    patch_size: int | None = Field(None, ge=4, le=MAX_IMAGE_SIZE, description="None = (side - 2*gap - 2*jitter) // 3")
    gap: int = Field(2, ge=0, le=128)
    jitter: int = Field(1, ge=0, le=64)
    chromatic: Literal["drop", "gray", "none"] = Field(
        "drop", description="per-patch guard against chromatic aberration: drop 2 of 3 channels to noise, or grayscale"
    )
    downsample_p: float = Field(0.0, ge=0.0, le=1.0, description="paper: some patches downsampled and upsampled back")
    hidden_dim: int = Field(512, ge=8, le=8192, description="fc7/fc8 width (paper 4096)")

    def resolved_patch_size(self, image_size: int) -> int:
        return self.patch_size or (image_size - 2 * self.gap - 2 * self.jitter) // 3


class JigsawSpec(Strict):
    """Jigsaw puzzle (Noroozi & Favaro, ECCV 2016), scaled to small images.

    Paper: 225 px crop, 75 px cells, 64 px tiles placed at random inside each cell (gap + jitter).
    """

    name: Literal["jigsaw"] = "jigsaw"
    num_permutations: int = Field(100, ge=2, le=MAX_PERMUTATIONS)
    permutation_seed: int = Field(0, ge=0)
    tile_size: int | None = Field(None, ge=3, le=MAX_IMAGE_SIZE, description="None = round(cell * 64/75)")
    grayscale_p: float = Field(0.3, ge=0.0, le=1.0)
    channel_jitter: int = Field(2, ge=0, le=8, description="per-channel shift in pixels (paper: 0-2 px)")
    tile_dim: int = Field(256, ge=8, le=8192, description="fc6 per tile (paper 1024)")
    hidden_dim: int = Field(512, ge=8, le=8192, description="fc7 (paper 4096)")

    def resolved_tile_size(self, image_size: int) -> int:
        cell = image_size // 3
        return self.tile_size or max(3, round(cell * 64 / 75))


class SimCLRSpec(Strict):
    """SimCLR (Chen et al., ICML 2020): NT-Xent over 2N views; the projection g is discarded after training."""

    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.5, gt=0.0, le=10.0, description="paper CIFAR: 0.5")
    projection_dim: int = Field(128, ge=2, le=8192)
    projection_hidden_dim: int | None = Field(None, ge=2, le=16384, description="None = the backbone's feature dim")


class MoCoSpec(Strict):
    """MoCo v1 (He et al., CVPR 2020) and v2 (Chen et al., 2020)."""

    name: Literal["moco"] = "moco"
    version: Literal[1, 2] = 2
    queue_size: int = Field(65536, ge=1, le=MAX_QUEUE_SIZE, description="K")
    momentum: float = Field(0.999, ge=0.0, le=1.0, description="m in theta_k <- m*theta_k + (1-m)*theta_q")
    temperature: float | None = Field(None, gt=0.0, le=10.0, description="None = 0.07 (v1) / 0.2 (v2)")
    mlp_head: bool | None = Field(None, description="None = linear for v1, 2-layer MLP for v2")
    projection_dim: int = Field(128, ge=2, le=8192)
    shuffle_bn: Literal["auto", "split", "shuffle", "off"] = Field(
        "auto",
        description="auto: all-gather shuffle under multi-process training, split-batch BN on one device",
    )
    bn_splits: int = Field(8, ge=1, le=256, description="sub-batches for single-device split BN")
    symmetric: bool = Field(False, description="symmetric loss (MoCo CIFAR demo); papers use the asymmetric one")

    @model_validator(mode="after")
    def _resolve(self) -> "MoCoSpec":
        if self.temperature is None:
            self.temperature = 0.07 if self.version == 1 else 0.2
        if self.mlp_head is None:
            self.mlp_head = self.version == 2
        return self


MethodSpec = Annotated[
    Union[RotationSpec, ExemplarSpec, RelativePositionSpec, JigsawSpec, SimCLRSpec, MoCoSpec],
    Field(discriminator="name"),
]
METHOD_NAMES = ("rotation", "exemplar", "relative_position", "jigsaw", "simclr", "moco")


# ---------------------------------------------------------------------------
class OptimSpec(Strict):
    name: Literal["sgd", "adam", "adamw", "lars"] = "sgd"
    lr: float = Field(0.03, gt=0.0, le=100.0, description="absolute learning rate (no batch scaling)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=list, description="step schedule: epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    lars_eta: float = Field(0.001, gt=0.0, le=1.0)
    exclude_bias_and_norm: bool = Field(True, description="no weight decay / LARS adaptation on biases and norms")

    @model_validator(mode="after")
    def _check(self) -> "OptimSpec":
        if self.nesterov and self.name != "sgd":
            raise ValueError("optim.nesterov: only the sgd optimizer takes nesterov")
        if self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov: nesterov needs momentum > 0")
        if self.schedule == "step" and not self.milestones:
            raise ValueError("optim.milestones: the step schedule needs milestones")
        return self


# ---------------------------------------------------------------------------
# Evaluation protocols (shared by the pretraining spec's `eval` and the evaluate job)
class KnnProtocol(Strict):
    """Weighted kNN (Wu et al. 2018): cosine similarity, top-k, exp(s/t) votes."""

    protocol: Literal["knn"] = "knn"
    k: int = Field(200, ge=1, le=10_000)
    temperature: float = Field(0.1, gt=0.0, le=10.0)


class LinearProtocol(Strict):
    """Linear probe on frozen features: SGD momentum 0.9, wd 0, cosine (solo-learn / lightly recipes)."""

    protocol: Literal["linear"] = "linear"
    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)
    lr: float = Field(0.1, gt=0.0, le=100.0)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH_SIZE)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    augment: bool = Field(False, description="crop + flip per epoch; False = features computed once")


class FinetuneProtocol(Strict):
    protocol: Literal["finetune"] = "finetune"
    epochs: int = Field(30, ge=1, le=MAX_EPOCHS)
    lr: float = Field(0.01, gt=0.0, le=100.0)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH_SIZE)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    augment: bool = True


ProtocolSpec = Annotated[Union[KnnProtocol, LinearProtocol, FinetuneProtocol], Field(discriminator="protocol")]


class EvalDataSpec(Strict):
    """Labelled data for evaluation: a train split (kNN bank / probe training) and a test split."""

    dataset: DatasetName = "fashion_mnist"
    path: str | None = None
    train_split: str | None = None
    test_split: str | None = None
    train_subset: int | None = Field(None, ge=1, le=MAX_SUBSET)
    test_subset: int | None = Field(None, ge=1, le=MAX_SUBSET)
    image_size: int | None = Field(None, ge=4, le=MAX_IMAGE_SIZE)

    @model_validator(mode="after")
    def _check(self) -> "EvalDataSpec":
        info = DATASETS[self.dataset]
        if info.num_classes is None and self.dataset != "image_folder":
            raise ValueError(f"eval data.dataset: {self.dataset} has no labels")
        for fld in ("train_split", "test_split"):
            v = getattr(self, fld)
            if v is not None and v not in info.splits:
                raise ValueError(f"data.{fld}: {v!r} is not a split of {self.dataset} (one of {list(info.splits)})")
            if v == "unlabeled":
                raise ValueError(f"data.{fld}: the unlabeled split cannot be used for evaluation")
        if self.dataset == "image_folder" and not self.path:
            raise ValueError("data.path: image_folder needs a folder path")
        if self.dataset != "image_folder" and self.path is not None:
            raise ValueError(f"data.path: only image_folder takes a path, not {self.dataset}")
        if self.path is not None and ("\x00" in self.path or ".." in self.path.replace("\\", "/").split("/")):
            raise ValueError("data.path: '..' and NUL are not allowed in a dataset path")
        return self

    @property
    def resolved_train_split(self) -> str:
        return self.train_split or DATASETS[self.dataset].train_split

    @property
    def resolved_test_split(self) -> str:
        return self.test_split or DATASETS[self.dataset].test_split


class MonitorSpec(Strict):
    """Online kNN monitor during pretraining."""

    every_epochs: int = Field(0, ge=0, le=MAX_EPOCHS, description="0 = off")
    train_subset: int = Field(5000, ge=10, le=MAX_SUBSET)
    test_subset: int = Field(2000, ge=10, le=MAX_SUBSET)
    k: int = Field(200, ge=1, le=10_000)
    temperature: float = Field(0.1, gt=0.0, le=10.0)


class PretrainEvalSpec(Strict):
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    after: list[ProtocolSpec] = Field(
        default_factory=list, description="evaluations queued as jobs when the pretraining succeeds"
    )
    data: EvalDataSpec | None = Field(None, description="None = the pretraining dataset's labelled splits")


# ---------------------------------------------------------------------------
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class PretrainSpec(Strict):
    kind: Literal["pretrain"] = "pretrain"
    method: MethodSpec = Field(default_factory=SimCLRSpec)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    augment: list[AugmentOp] | None = Field(None, description="None = the method's paper pipeline")
    optim: OptimSpec | None = Field(None, description="None = the method's paper optimizer")
    epochs: int = Field(100, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(256, ge=2, le=MAX_BATCH_SIZE)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Device = "auto"
    precision: Precision = "auto"
    channels_last: bool = True
    compile: bool = Field(False, description="torch.compile the backbone and the augmentation's pointwise ops")
    checkpoint_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="epochs between checkpoints")
    log_every: int = Field(10, ge=1, le=100_000, description="steps between metric reads (no per-step host sync)")
    eval: PretrainEvalSpec = Field(default_factory=PretrainEvalSpec)

    @model_validator(mode="after")
    def _resolve_and_check(self) -> "PretrainSpec":
        m = self.method
        size = self.data.resolved_image_size
        if self.augment is None:
            self.augment = default_augment(m, size)
        if self.optim is None:
            self.optim = default_optim(m, self.batch_size, self.epochs)
        min_side = self.backbone.min_input_size()
        if m.name in ("rotation", "exemplar", "simclr", "moco") and size < min_side:
            raise ValueError(f"data.image_size: {size} px is too small for backbone {self.backbone.name} (min {min_side})")
        if m.name == "moco":
            if m.queue_size * m.projection_dim > MAX_QUEUE_ELEMENTS:
                raise ValueError(
                    f"method.queue_size: {m.queue_size} keys of dimension {m.projection_dim} exceed the limit of "
                    f"{MAX_QUEUE_ELEMENTS} queued values ({MAX_QUEUE_ELEMENTS * 4 >> 20} MiB)"
                )
            if m.queue_size % self.batch_size:
                raise ValueError(
                    f"method.queue_size: {m.queue_size} is not a multiple of batch_size {self.batch_size}"
                )
            if m.shuffle_bn == "split" and self.batch_size % m.bn_splits:
                raise ValueError(f"method.bn_splits: batch_size {self.batch_size} is not divisible by {m.bn_splits}")
        if m.name == "relative_position":
            patch = m.resolved_patch_size(size)
            if patch < min_side:
                raise ValueError(
                    f"method.patch_size: {patch} px patches are too small for backbone {self.backbone.name} "
                    f"(min {min_side}); use larger images or a smaller gap/jitter"
                )
            if 3 * patch + 2 * m.gap + 2 * m.jitter > size:
                raise ValueError(
                    f"method.patch_size: a 3x3 grid of {patch} px patches with gap {m.gap} and jitter {m.jitter} "
                    f"does not fit a {size} px image"
                )
        if m.name == "jigsaw":
            tile = m.resolved_tile_size(size)
            if tile > size // 3:
                raise ValueError(f"method.tile_size: {tile} px tiles do not fit 3x3 cells of a {size} px image")
            if tile < min_side:
                raise ValueError(f"method.tile_size: {tile} px tiles are too small for backbone {self.backbone.name}")
            if m.num_permutations > math.factorial(9):
                raise ValueError("method.num_permutations: more than 9! permutations")
        if m.name == "exemplar" and self.data.subset is not None and m.num_classes > self.data.subset:
            raise ValueError(
                f"method.num_classes: {m.num_classes} surrogate classes need as many seed images, "
                f"but data.subset is {self.data.subset}"
            )
        if self.optim.warmup_epochs > self.epochs:
            raise ValueError(f"optim.warmup_epochs: {self.optim.warmup_epochs} exceeds epochs {self.epochs}")
        return self


class EvaluateSpec(Strict):
    """An evaluation job: a backbone (weights file, pretraining job, or a baseline) on labelled data."""

    kind: Literal["evaluate"] = "evaluate"
    weights: str | None = Field(None, description="a backbone .safetensors file written by a pretraining")
    source_job_id: int | None = Field(None, ge=1, description="the pretraining job whose backbone to evaluate")
    baseline: Literal["random_init", "raw_pixels"] | None = Field(
        None, description="evaluate a baseline instead of trained weights"
    )
    backbone: BackboneSpec | None = Field(None, description="random_init baseline: the backbone to build")
    protocol: ProtocolSpec = Field(default_factory=KnnProtocol)
    data: EvalDataSpec = Field(default_factory=EvalDataSpec)
    batch_size: int = Field(512, ge=1, le=MAX_BATCH_SIZE, description="feature extraction batch")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Device = "auto"
    precision: Precision = "auto"

    @model_validator(mode="after")
    def _check(self) -> "EvaluateSpec":
        given = [n for n in ("weights", "source_job_id", "baseline") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"weights: give exactly one of weights, source_job_id, baseline (got {given or 'none'})")
        if self.baseline == "random_init" and self.backbone is None:
            self.backbone = BackboneSpec()
        if self.baseline != "random_init" and self.backbone is not None:
            raise ValueError("backbone: only the random_init baseline takes a backbone (weights carry their own)")
        if self.weights is not None and ("\x00" in self.weights or ".." in self.weights.replace("\\", "/").split("/")):
            raise ValueError("weights: '..' and NUL are not allowed in a weights path")
        if self.baseline == "raw_pixels" and self.protocol.protocol == "finetune":
            raise ValueError("protocol: raw pixels have nothing to fine-tune")
        return self


JobSpec = Annotated[Union[PretrainSpec, EvaluateSpec], Field(discriminator="kind")]
JOB_SPEC_ADAPTER: TypeAdapter[PretrainSpec | EvaluateSpec] = TypeAdapter(JobSpec)


def parse_job_spec(data: dict[str, Any]) -> PretrainSpec | EvaluateSpec:
    """Validate a job spec dict (``kind`` defaults to pretrain)."""
    if isinstance(data, dict) and "kind" not in data:
        data = {**data, "kind": "pretrain"}
    return JOB_SPEC_ADAPTER.validate_python(data)


# ---------------------------------------------------------------------------
# The papers' recipes: one place for every method-dependent default.
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
