"""Evaluation: the protocols (kNN, linear probe, fine-tuning), their labelled data, the layers probed,
and the online monitor. Shared by the pretraining spec's ``eval`` and the evaluate job.

Layers: by default an evaluation reads the backbone's final pooled features (``pool``). ``layers`` names
conv blocks too (``BackboneSpec.layer_names()``), or a paper's preset: ``rotnet_blocks`` (Gidaris et al.:
one probe per conv block, each map average-pooled to at most ~9,000 values as in the RotNet/Zhang et al.
ImageNet protocol) or ``exemplar_all`` (Dosovitskiy et al.: every conv block max-pooled over its four
quadrants, concatenated, one probe). Every requested layer comes from one pass over the data.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from ssl_core.specs.base import (MAX_BATCH_SIZE, MAX_EPOCHS, MAX_FOLLOWUPS, MAX_IMAGE_SIZE, MAX_PATH_LENGTH, MAX_SUBSET, Bool,
                                 Int, Real, Strict, climbs_or_has_nul)
from ssl_core.specs.data import DATASETS, DatasetName
from ssl_core.specs.model import POOLED, BackboneSpec

MAX_LAYERS = 16
LayerName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
LayerPreset = Literal["rotnet_blocks", "exemplar_all"]
Layers = Union[Annotated[list[LayerName], Field(min_length=1, max_length=MAX_LAYERS)], LayerPreset]


class KnnProtocol(Strict):
    """Weighted kNN (Wu et al. 2018): cosine similarity, top-k, exp(s/t) votes."""

    protocol: Literal["knn"] = "knn"
    k: Int = Field(200, ge=1, le=10_000)
    temperature: Real = Field(0.1, gt=0.0, le=10.0)


class LinearProtocol(Strict):
    """Linear probe on frozen features: SGD momentum 0.9, wd 0, cosine (solo-learn / lightly recipes)."""

    protocol: Literal["linear"] = "linear"
    epochs: Int = Field(100, ge=1, le=MAX_EPOCHS)
    lr: Real = Field(0.1, gt=0.0, le=100.0)
    batch_size: Int = Field(256, ge=1, le=MAX_BATCH_SIZE)
    weight_decay: Real = Field(0.0, ge=0.0, le=1.0)
    augment: Bool = Field(False, description="crop + flip per epoch; False = features computed once")


class FinetuneProtocol(Strict):
    protocol: Literal["finetune"] = "finetune"
    epochs: Int = Field(30, ge=1, le=MAX_EPOCHS)
    lr: Real = Field(0.01, gt=0.0, le=100.0)
    batch_size: Int = Field(256, ge=1, le=MAX_BATCH_SIZE)
    weight_decay: Real = Field(5e-4, ge=0.0, le=1.0)
    augment: Bool = True


ProtocolSpec = Annotated[Union[KnnProtocol, LinearProtocol, FinetuneProtocol], Field(discriminator="protocol")]


class EvalDataSpec(Strict):
    """Labelled data for evaluation: a train split (kNN bank / probe training) and a test split."""

    dataset: DatasetName = "fashion_mnist"
    path: str | None = Field(None, max_length=MAX_PATH_LENGTH)
    train_split: str | None = None
    test_split: str | None = None
    train_subset: Int | None = Field(None, ge=1, le=MAX_SUBSET)
    test_subset: Int | None = Field(None, ge=1, le=MAX_SUBSET)
    image_size: Int | None = Field(None, ge=4, le=MAX_IMAGE_SIZE)

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
        if self.path is not None and climbs_or_has_nul(self.path):
            raise ValueError("data.path: '..' and NUL are not allowed in a dataset path")
        return self

    @property
    def resolved_train_split(self) -> str:
        return self.train_split or DATASETS[self.dataset].train_split

    @property
    def resolved_test_split(self) -> str:
        return self.test_split or DATASETS[self.dataset].test_split


class LayerPooling(Strict):
    """How a conv block's (C, H, W) map becomes the probe's vector: adaptive pooling to a grid x grid."""

    mode: Literal["avg", "max"] = "avg"
    grid: Int | None = Field(None, ge=1, le=32, description=(
        "cells per side; None = the largest grid (at most the map's side) with C x grid^2 <= max_dims"))
    max_dims: Int = Field(4096, ge=1, le=65_536, description="the auto grid's bound on values per layer")
    concat: Bool = Field(False, description="one probe on all the layers concatenated, not one per layer")


# The papers' protocols. RotNet's ImageNet probes follow Zhang et al. (2016): each map resized to ~9,000
# values (9,216 = 4 x 48 x 48 bounds it here); Exemplar-CNN max-pools every layer over 4 quadrants and
# concatenates them for one linear classifier.
LAYER_PRESETS: dict[str, LayerPooling] = {
    "rotnet_blocks": LayerPooling(mode="avg", max_dims=9216),
    "exemplar_all": LayerPooling(mode="max", grid=2, concat=True),
}


def resolve_layers(layers: Layers | None, backbone: BackboneSpec) -> list[str]:
    """The layer names a selection stands for on ``backbone`` (a preset: its conv blocks; None: pool).

    Raises ValueError naming ``layers`` and listing the valid names."""
    if layers is None:
        return [POOLED]
    if isinstance(layers, str):
        return list(backbone.conv_blocks())
    valid = backbone.layer_names()
    for name in layers:
        if name not in valid:
            raise ValueError(f"layers: {name!r} is not a layer of {backbone.name} (valid: {', '.join(valid)}; "
                             f"or a preset: {', '.join(LAYER_PRESETS)})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers: a layer is named twice in {list(layers)}")
    return list(layers)


def check_layer_fields(layers: Layers | None, pooling: LayerPooling | None, protocols: list[str],
                       backbone: BackboneSpec | None, prefix: str = "") -> LayerPooling | None:
    """Checks shared by an evaluate job and ``eval.after``; returns the pooling to store (a preset's own,
    the given one, or the defaults). ``backbone`` None: not known yet (a weights file or a source job)."""
    if layers is None:
        if pooling is not None:
            raise ValueError(f"{prefix}layer_pooling: applies to conv blocks named in {prefix}layers, which is not set")
        return None
    if "finetune" in protocols:
        raise ValueError(f"{prefix}layers: fine-tuning trains the whole backbone on its final features; "
                         "layers apply to the knn and linear protocols")
    if backbone is not None:
        try:
            resolve_layers(layers, backbone)
        except ValueError as exc:
            raise ValueError(f"{prefix}{exc}") from None
    if pooling is not None:
        return pooling
    return LAYER_PRESETS[layers].model_copy() if isinstance(layers, str) else LayerPooling()


class MonitorSpec(Strict):
    """Online kNN monitor during pretraining, on held-out training images (never the test split)."""

    every_epochs: Int = Field(0, ge=0, le=MAX_EPOCHS, description="0 = off")
    train_subset: Int = Field(5000, ge=10, le=MAX_SUBSET, description="kNN bank: labelled training images")
    test_subset: Int = Field(
        2000, ge=10, le=MAX_SUBSET,
        description="queries: other training images, held out of the bank (the test split is never used)",
    )
    k: Int = Field(200, ge=1, le=10_000)
    temperature: Real = Field(0.1, gt=0.0, le=10.0)


class PretrainEvalSpec(Strict):
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    after: list[ProtocolSpec] = Field(
        default_factory=list, max_length=MAX_FOLLOWUPS,
        description="evaluations queued as jobs when the pretraining succeeds"
    )
    data: EvalDataSpec | None = Field(None, description="None = the pretraining dataset's labelled splits")
    layers: Layers | None = Field(None, description="layers every knn/linear evaluation in after probes; None = pool")
    layer_pooling: LayerPooling | None = Field(None, description="None = the preset's pooling, or the defaults")
