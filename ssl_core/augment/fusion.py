"""What the Pipeline does beyond running ops one by one: compiling and fusing.

* :func:`compile_applies` -- ``Pipeline.compile()`` (the spec's ``compile: true``) compiles
  the ``apply`` of the pointwise ops with ``torch.compile``; the draws stay eager, so the same
  generator gives the same parameters, and the values agree with the eager ops to float
  rounding.
* :func:`fused_flip` -- crop, [ops that commute with a mirror,] flip (SimCLR, MoCo v2): the
  flip is folded into the crop's sampling grid (:func:`~ssl_core.augment.geometry.crop_resize`
  samples the mirrored columns), which saves a pass over the batch.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ssl_core.augment.base import AugmentOpImpl, Params
from ssl_core.augment.geometry import HorizontalFlip, RandomResizedCrop

ApplyFn = Callable[[Tensor, Params], Tensor]


def compile_applies(ops: Sequence[AugmentOpImpl], **kwargs: Any) -> list[ApplyFn | None]:
    """``torch.compile`` of each ``compilable`` op's ``apply`` (None for the ops that stay eager).

    torch.compile caches per function, so pipelines in one process share each op's cache;
    past torch's recompile limit (8 variants: other spec values, channel counts, devices)
    an op falls back to its eager ``apply`` -- same values, without the speed-up."""
    return [torch.compile(op.apply, **kwargs) if op.compilable else None for op in ops]


def fused_flip(ops: Sequence[AugmentOpImpl], i: int) -> int | None:
    """The index of the horizontal flip that the crop ``ops[i]`` takes into its sampling grid,
    or None: ``ops[i]`` is a random resized crop and the flip follows it, past ops that commute
    with a mirror (those then run after the crop, on the mirrored output)."""
    if not isinstance(ops[i], RandomResizedCrop):
        return None
    j = i + 1
    while j < len(ops) and type(ops[j]).commutes_with_flip:
        j += 1
    return j if j < len(ops) and type(ops[j]) is HorizontalFlip else None
