"""The Pipeline: a spec's augmentation ops, in order, on a whole batch.

``build_pipeline(spec.augment, out_size)`` turns the declarative ops of :mod:`ssl_core.specs`
into op objects (:data:`OP_CLASSES`) and runs them on a (B, C, H, W) batch on its own device.
Each op's parameters are drawn in the pipeline's order from one generator, so a seed gives
the same views whether or not the Pipeline compiles or fuses (:mod:`ssl_core.augment.fusion`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssl_core import specs
from ssl_core.augment.base import AugmentOpImpl, Params, resize, to_float
from ssl_core.augment.colour import ColorJitter, Grayscale, HSVPower, PCAContrast, Solarize
from ssl_core.augment.filters import Detexturize, EdgeMap, GaussianBlur, Sharpen
from ssl_core.augment.fusion import ApplyFn, compile_applies, fused_flip
from ssl_core.augment.geometry import HorizontalFlip, RandomAffine, RandomCrop, RandomResizedCrop, Rotate

OP_CLASSES: dict[str, type[AugmentOpImpl]] = {
    "random_resized_crop": RandomResizedCrop,
    "random_crop": RandomCrop,
    "horizontal_flip": HorizontalFlip,
    "rotate": Rotate,
    "random_affine": RandomAffine,
    "color_jitter": ColorJitter,
    "hsv_power": HSVPower,
    "pca_contrast": PCAContrast,
    "grayscale": Grayscale,
    "gaussian_blur": GaussianBlur,
    "solarize": Solarize,
    "sharpen": Sharpen,
    "edge_map": EdgeMap,
    "detexturize": Detexturize,
}


def build_op(spec: Any, out_size: int) -> AugmentOpImpl:
    """One op from its spec (a specs.AugmentOp model or a dict with an ``op`` key)."""
    if isinstance(spec, dict):
        from pydantic import TypeAdapter

        spec = TypeAdapter(specs.AugmentOp).validate_python(spec)
    return OP_CLASSES[spec.op](spec, out_size)


class Pipeline:
    """The ops in order, on a batch. Input (B, C, H, W) uint8 or float in [0, 1] on any device;
    output float32 (B, C, out_size, out_size) in [0, 1].

    random_resized_crop resizes to out_size (ops before it see the input size); a pipeline
    without it resizes the batch to out_size first (bilinear, anti-aliased) if needed.
    """

    def __init__(self, ops: list[AugmentOpImpl], out_size: int):
        self.ops = ops
        self.out_size = int(out_size)
        self._resizes = any(op.resizes for op in ops)
        self._compiled: list[ApplyFn | None] = [None] * len(ops)

    def compile(self, **kwargs: Any) -> "Pipeline":
        """``torch.compile`` the ``apply`` of every pointwise op (``compilable``: colour
        jitter, grayscale, flip, solarize, HSV power), in place, like ``nn.Module.compile``;
        kwargs go to ``torch.compile``. Parameters are still drawn eagerly (the generator
        stays outside the graphs, so the draws are the same as uncompiled); the compiled
        ``apply`` gives the same values up to float rounding (tests/core/test_augment.py).
        The spec's ``compile: true`` turns it on with the backbone's compile. First calls
        compile (seconds; once more when the batch shape first changes, then dynamic)."""
        self._compiled = compile_applies(self.ops, **kwargs)
        return self

    def _apply(self, k: int, x: Tensor, params: Params) -> Tensor:
        # the eager apply is looked up now, not at compile(): a patched op class takes effect
        fn = self._compiled[k]
        return self.ops[k].apply(x, params) if fn is None else fn(x, params)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"augment: expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        # fp32 even inside the training step's autocast: blur/Sobel convs in bf16 would lose
        # precision for nothing (these ops are memory-bound), and the output dtype stays fixed
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._run(to_float(x), generator)

    def _run(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self._resizes and (x.shape[2], x.shape[3]) != (self.out_size, self.out_size):
            x = resize(x, self.out_size)
        i = 0
        while i < len(self.ops):
            b, c, h, w = x.shape
            params = self.ops[i].sample(b, h, w, c, x.device, generator)
            j = fused_flip(self.ops, i)
            if j is None:
                x = self._apply(i, x, params)
                i += 1
            else:
                x = self._run_crop_with_flip(x, i, j, params, generator)
                i = j + 1
        if (x.shape[2], x.shape[3]) != (self.out_size, self.out_size):  # a crop that was not last-sized
            x = resize(x, self.out_size)
        return x

    def _run_crop_with_flip(self, x: Tensor, i: int, j: int, params: Params,
                            generator: torch.Generator | None) -> Tensor:
        """ops[i] (the crop) with the flip ops[j] folded into its grid, then the ops between.
        Parameters are drawn in the pipeline's order, so the generator yields the same values
        as unfused; the ops between see the crop's output size."""
        b, c = x.shape[:2]
        s = self.ops[i].out_size
        between = [o.sample(b, s, s, c, x.device, generator) for o in self.ops[i + 1 : j]]
        flip = self.ops[j].sample(b, s, s, c, x.device, generator)["apply"]
        x = self._apply(i, x, {**params, "flip": flip})
        for k, p in enumerate(between, start=i + 1):
            x = self._apply(k, x, p)
        return x

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"Pipeline(out_size={self.out_size}, ops={self.ops!r})"


def build_pipeline(ops: list[Any], out_size: int) -> Pipeline:
    """A :class:`Pipeline` from a list of ``specs.AugmentOp`` (or dicts) and the output side."""
    return Pipeline([build_op(o, out_size) for o in ops], out_size)
