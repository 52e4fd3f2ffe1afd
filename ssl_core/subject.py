"""What an evaluation measures: a backbone file, a random-init backbone or raw pixels, and its input.

:func:`load_subject` reads the backbone (``weights_path`` over ``spec.weights``) or builds the baseline;
with ``spec.layers`` the backbone is wrapped in a :class:`~ssl_core.features.LayerTap` so that one pass
over the data gives every probed layer (names checked against the backbone's own spec: a weights
file's is known only here, so a bad name fails the job with a SpecError naming ``layers``).
:meth:`Subject.features` returns {probe: (N, D)}: ``pool`` for a backbone's final features, ``pixels``
for the raw-pixels baseline, else the layer names (or their ``a+b`` concatenation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ssl_core.backbone_file import load_backbone
from ssl_core.backbones import build_backbone
from ssl_core.errors import SpecError
from ssl_core.features import LayerTap, OnStep, StopRequested, extract_features, raw_pixel_features
from ssl_core.normalization import dataset_stats
from ssl_core.specs import DATASETS, BackboneSpec, EvaluateSpec
from ssl_core.specs.evaluation import resolve_layers
from ssl_core.specs.model import POOLED

RAW_PIXELS = "pixels"  # the probe name of the raw-pixels baseline (it has no layers)


@dataclass
class Subject:
    """What an evaluation measures: a backbone (trained or random init) or raw pixels, and its input."""

    backbone: nn.Module | None       # None: the raw-pixels baseline; a LayerTap when layers are probed
    channels: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    method: str | None
    epochs: int | None
    backbone_spec: dict[str, Any] | None

    @property
    def probes(self) -> list[str]:
        """The probes this subject's features feed: one per layer (or their concatenation)."""
        if isinstance(self.backbone, LayerTap):
            return self.backbone.probes
        return [POOLED if self.backbone is not None else RAW_PIXELS]

    def features(self, images: Tensor, batch_size: int, device: torch.device, amp_dtype: torch.dtype | None,
                 should_stop: Callable[[], bool], on_batch: OnStep) -> dict[str, Tensor]:
        """{probe: features (N, D)} from one pass, batch by batch, asking ``should_stop`` before and
        reporting after each batch."""
        if self.backbone is not None:
            out = extract_features(self.backbone, images, self.mean, self.std, batch_size, device, amp_dtype,
                                   should_stop=should_stop, on_batch=on_batch)
            return out if isinstance(out, dict) else {POOLED: out}
        parts = []  # raw pixels: cheap, but batched like the backbone path so progress and stop behave alike
        for start in range(0, images.shape[0], batch_size):
            if should_stop():
                raise StopRequested
            parts.append(raw_pixel_features(images[start:start + batch_size], self.mean, self.std, device))
            on_batch(0, parts[-1].shape[0])
        return {RAW_PIXELS: torch.cat(parts)}

    def probe_input(self, probe: str) -> nn.Module | None:
        """What computes one probe's features from images (the augmented linear probe re-extracts them)."""
        return self.backbone.only(probe) if isinstance(self.backbone, LayerTap) else self.backbone


def load_subject(spec: EvaluateSpec, weights_path: Path | str | None, device: torch.device) -> Subject:
    """The backbone file (``weights_path`` over ``spec.weights``) or the baseline the spec names."""
    d = spec.data
    if spec.baseline is None:
        weights = weights_path if weights_path is not None else spec.weights
        if weights is None:
            raise SpecError("source_job_id: must be resolved to a backbone file (weights_path) before evaluating")
        backbone, meta = load_backbone(weights, device)
        # the backbone's own input size unless the spec asks for another (adaptive pooling allows it)
        return Subject(tap_layers(spec, backbone, meta["backbone"]), int(meta["in_channels"]),
                       int(d.image_size or meta["image_size"]), meta["mean"], meta["std"], meta.get("method"),
                       meta.get("epochs"), meta["backbone"])
    info = DATASETS[d.dataset]
    image_size = int(d.image_size or info.image_size or 0)
    if not image_size:
        raise SpecError(f"data.image_size: {d.dataset} has no native image size; a baseline needs one")
    mean, std = dataset_stats(d.dataset, info.channels)
    backbone = None
    if spec.baseline == "random_init":
        torch.manual_seed(spec.seed)
        backbone = tap_layers(spec, build_backbone(spec.backbone, info.channels, image_size).to(device),
                              spec.backbone.model_dump())
    return Subject(backbone, info.channels, image_size, mean, std, spec.baseline, 0,
                   spec.backbone.model_dump() if spec.backbone is not None else None)


def tap_layers(spec: EvaluateSpec, backbone: nn.Module, backbone_spec: dict[str, Any]) -> nn.Module:
    """The backbone itself (final pooled features), or a :class:`LayerTap` on the layers the spec names,
    checked against the backbone's own spec (a weights file's is known only here)."""
    if spec.layers is None:
        return backbone
    try:
        names = resolve_layers(spec.layers, BackboneSpec.model_validate(backbone_spec))
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return LayerTap(backbone, names, spec.layer_pooling)
