"""The two job kinds, pretraining and evaluation, and the one entry point that validates either.

Each spec value has exactly one default, in the module that declares its field. Where the
paper's recipe depends on the method (the augmentation pipeline, the optimizer), the field
defaults to ``None`` and the validator resolves it from :mod:`ssl_core.specs.recipes`, so a
stored spec is always explicit. Checks that tie several sections together (image size vs.
backbone, queue vs. batch) live here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, model_validator

from ssl_core.specs.augment import AugmentOp
from ssl_core.specs.base import (MAX_AUGMENT_OPS, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_GPUS, MAX_PATH_LENGTH,
                                 MAX_QUEUE_ELEMENTS, MAX_SEED, Bool, Int, Strict, climbs_or_has_nul)
from ssl_core.specs.data import DataSpec
from ssl_core.specs.evaluation import (EvalDataSpec, KnnProtocol, LayerPooling, Layers, PretrainEvalSpec, ProtocolSpec,
                                      check_layer_fields)
from ssl_core.specs.method import MethodSpec, queue_refusal
from ssl_core.specs.model import BackboneSpec
from ssl_core.specs.optim import OptimSpec
from ssl_core.specs.recipes import default_augment, default_optim

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# Run time of a job over all its attempts; past it the worker checkpoints and fails the job. The
# deployment may set a lower ceiling (PRETEXTLAB_MAX_RUNTIME_S).
MaxRuntime = Annotated[int | None, Field(None, ge=1, le=366 * 86400, description="seconds; None = no limit")]


class ResourcesSpec(Strict):
    """What the service reserves for a job; the trainer takes its world size from the launcher."""

    gpus: Int = Field(1, ge=1, le=MAX_GPUS, description="GPUs (one rank each); batch_size is split among them")


class PretrainSpec(Strict):
    kind: Literal["pretrain"] = "pretrain"
    method: MethodSpec = Field(description="required: which pretext task or contrastive method")
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    augment: list[AugmentOp] | None = Field(None, max_length=MAX_AUGMENT_OPS, description="None = the method's paper pipeline")
    optim: OptimSpec | None = Field(None, description="None = the method's paper optimizer")
    epochs: Int = Field(100, ge=1, le=MAX_EPOCHS)
    batch_size: Int = Field(256, ge=2, le=MAX_BATCH_SIZE)
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    device: Device = "auto"
    precision: Precision = "auto"
    channels_last: Bool = True
    compile: Bool = Field(False, description="torch.compile the backbone and the augmentation's pointwise ops")
    checkpoint_every: Int = Field(1, ge=1, le=MAX_EPOCHS, description="epochs between checkpoints")
    log_every: Int = Field(10, ge=1, le=100_000, description="steps between metric reads (no per-step host sync)")
    max_runtime_s: MaxRuntime = None
    eval: PretrainEvalSpec = Field(default_factory=PretrainEvalSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @model_validator(mode="after")
    def _resolve_and_check(self) -> "PretrainSpec":
        m, size = self.method, self.data.resolved_image_size
        if self.batch_size % self.resources.gpus:
            raise ValueError(f"batch_size: the global batch {self.batch_size} does not divide among "
                             f"resources.gpus {self.resources.gpus}")
        if self.augment is None:
            self.augment = default_augment(m, size)
        if self.optim is None:
            self.optim = default_optim(m, self.batch_size, self.epochs)
        if self.data.storage_size is None:  # stored explicitly: the run says what it cropped from
            self.data.storage_size = self.data.default_storage_size(
                any(op.op == "random_resized_crop" for op in self.augment))
        min_side = self.backbone.min_input_size()
        if m.name in ("rotation", "exemplar", "simclr", "moco") and size < min_side:
            raise ValueError(f"data.image_size: {size} px is too small for backbone {self.backbone.name} (min {min_side})")
        check = _METHOD_CHECKS.get(m.name)
        if check is not None:
            check(self, size, min_side)
        if self.optim.warmup_epochs > self.epochs:
            raise ValueError(f"optim.warmup_epochs: {self.optim.warmup_epochs} exceeds epochs {self.epochs}")
        ev = self.eval
        ev.layer_pooling = check_layer_fields(ev.layers, ev.layer_pooling, [p.protocol for p in ev.after],
                                              self.backbone, "eval.")
        return self


# Checks that tie a method's fields to the rest of the spec: (spec, image size, backbone's minimum side).
def _check_moco(spec: PretrainSpec, size: int, min_side: int) -> None:
    m = spec.method
    if m.queue_size * m.projection_dim > MAX_QUEUE_ELEMENTS:
        raise ValueError(
            f"method.queue_size: {m.queue_size} keys of dimension {m.projection_dim} exceed the limit of "
            f"{MAX_QUEUE_ELEMENTS} queued values ({MAX_QUEUE_ELEMENTS * 4 >> 20} MiB)"
        )
    if m.queue_size % spec.batch_size:
        raise ValueError(f"method.queue_size: {m.queue_size} is not a multiple of batch_size {spec.batch_size}")
    known = spec.data.known_size  # an image folder's size is checked by the engine (ssl_core.methods.moco)
    refusal = None if known is None or m.cap_queue else queue_refusal(m.queue_size, known, spec.batch_size)
    if refusal:
        raise ValueError(refusal)
    if m.shuffle_bn == "split" and spec.batch_size % m.bn_splits:
        raise ValueError(f"method.bn_splits: batch_size {spec.batch_size} is not divisible by {m.bn_splits}")


def _check_relative_position(spec: PretrainSpec, size: int, min_side: int) -> None:
    m = spec.method
    patch, gap, jitter = m.resolved_geometry(size)
    m.patch_size, m.gap, m.jitter = patch, gap, jitter  # a stored spec says the geometry it ran with
    if gap - 2 * jitter < 1:
        # two neighbours can each move `jitter` px towards the other: only gap - 2*jitter px stay between them
        raise ValueError(
            f"method.gap: gap {gap} px with method.jitter {jitter} px lets neighbouring patches come "
            f"{gap - 2 * jitter} px apart (touching or overlapping, the low-level shortcut the gap closes); "
            f"use gap >= 2*jitter + 1 = {2 * jitter + 1} or a smaller jitter"
        )
    if patch < min_side:
        raise ValueError(
            f"method.patch_size: {patch} px patches are too small for backbone {spec.backbone.name} "
            f"(min {min_side}); use larger images or a smaller gap/jitter"
        )
    if 3 * patch + 2 * gap + 2 * jitter > size:
        raise ValueError(
            f"method.patch_size: a 3x3 grid of {patch} px patches with gap {gap} and jitter {jitter} "
            f"does not fit a {size} px image"
        )


def _check_jigsaw(spec: PretrainSpec, size: int, min_side: int) -> None:
    m = spec.method
    tile = m.resolved_tile_size(size)
    if tile > size // 3:
        raise ValueError(f"method.tile_size: {tile} px tiles do not fit 3x3 cells of a {size} px image")
    if tile < min_side:
        raise ValueError(f"method.tile_size: {tile} px tiles are too small for backbone {spec.backbone.name}")
    if m.num_permutations > math.factorial(9):
        raise ValueError("method.num_permutations: more than 9! permutations")


def _check_exemplar(spec: PretrainSpec, size: int, min_side: int) -> None:
    m = spec.method
    if spec.data.subset is not None and m.num_classes > spec.data.subset:
        raise ValueError(
            f"method.num_classes: {m.num_classes} surrogate classes need as many seed images, "
            f"but data.subset is {spec.data.subset}"
        )


_METHOD_CHECKS = {
    "moco": _check_moco, "relative_position": _check_relative_position, "jigsaw": _check_jigsaw,
    "exemplar": _check_exemplar,
}

class EvaluateSpec(Strict):
    """An evaluation job: a backbone (weights file, pretraining job, or a baseline) on labelled data."""

    kind: Literal["evaluate"] = "evaluate"
    weights: str | None = Field(None, max_length=MAX_PATH_LENGTH, description="a backbone .safetensors file written by a pretraining")
    source_job_id: Int | None = Field(None, ge=1, description="the pretraining job whose backbone to evaluate")
    baseline: Literal["random_init", "raw_pixels"] | None = Field(
        None, description="evaluate a baseline instead of trained weights"
    )
    backbone: BackboneSpec | None = Field(None, description="random_init baseline: the backbone to build")
    protocol: ProtocolSpec = Field(default_factory=KnnProtocol)
    layers: Layers | None = Field(None, description=(
        "layer names (BackboneSpec.layer_names) or a preset (rotnet_blocks, exemplar_all); None = pool"))
    layer_pooling: LayerPooling | None = Field(None, description="None = the preset's pooling, or the defaults")
    data: EvalDataSpec = Field(default_factory=EvalDataSpec)
    batch_size: Int = Field(512, ge=1, le=MAX_BATCH_SIZE, description="feature extraction batch")
    seed: Int = Field(0, ge=0, le=MAX_SEED)
    device: Device = "auto"
    precision: Precision = "auto"
    max_runtime_s: MaxRuntime = None

    @model_validator(mode="after")
    def _check(self) -> "EvaluateSpec":
        given = [n for n in ("weights", "source_job_id", "baseline") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"weights: give exactly one of weights, source_job_id, baseline (got {given or 'none'})")
        if self.baseline == "random_init" and self.backbone is None:
            self.backbone = BackboneSpec()
        if self.baseline != "random_init" and self.backbone is not None:
            raise ValueError("backbone: only the random_init baseline takes a backbone (weights carry their own)")
        if self.weights is not None and climbs_or_has_nul(self.weights):
            raise ValueError("weights: '..' and NUL are not allowed in a weights path")
        if self.baseline == "raw_pixels" and self.protocol.protocol == "finetune":
            raise ValueError("protocol: raw pixels have nothing to fine-tune")
        if self.baseline == "raw_pixels" and self.layers is not None:
            raise ValueError("layers: raw pixels have no layers")
        # the names are checked here when the backbone is known; for a weights file or a source job the
        # API checks them against the file's header or the source's spec, and the engine again on loading
        self.layer_pooling = check_layer_fields(self.layers, self.layer_pooling, [self.protocol.protocol],
                                                self.backbone)
        return self


JobSpec = Annotated[Union[PretrainSpec, EvaluateSpec], Field(discriminator="kind")]
JOB_SPEC_ADAPTER: TypeAdapter[PretrainSpec | EvaluateSpec] = TypeAdapter(JobSpec)


def parse_job_spec(data: dict[str, Any]) -> PretrainSpec | EvaluateSpec:
    """Validate a job spec dict (``kind`` defaults to pretrain)."""
    if isinstance(data, dict) and "kind" not in data:
        data = {**data, "kind": "pretrain"}
    return JOB_SPEC_ADAPTER.validate_python(data)


def followup_eval_data(spec: PretrainSpec) -> EvalDataSpec:
    """The labelled data the evaluations after a pretraining use: ``eval.data``, else the
    pretraining dataset's own labelled splits at its image size."""
    return spec.eval.data or EvalDataSpec(dataset=spec.data.dataset, path=spec.data.path,
                                          image_size=spec.data.image_size)


def spec_error_path(loc: Sequence[Any]) -> list[str]:
    """Where in a job spec a :func:`parse_job_spec` validation error points, as path parts: the first
    part of its location is the union's tag (the job kind), not a field."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("pretrain", "evaluate"):
        parts = parts[1:]
    return parts
