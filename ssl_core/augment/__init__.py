"""Batched, device-side image augmentation with per-sample random parameters.

The declarative ops of :mod:`ssl_core.specs` (``AugmentOp``) become a :class:`Pipeline`
that augments a whole batch (B, C, H, W) in a handful of tensor ops, on whatever
device the batch lives on (CPU or CUDA, same code). Every op

* ``sample(batch, height, width, channels, device, generator) -> dict[str, Tensor]``
  draws the PER-SAMPLE random parameters, including ``apply`` -- the (B,) bool mask of
  samples the op acts on (drawn with the op's probability ``p``), and
* ``apply(x, params) -> x`` transforms the float batch in [0, 1] with those parameters.

No op loops over samples in Python or reads a value back to the host (no ``.item()``),
so a training step that augments on the GPU never waits on the CPU. Python loops that
remain are over a fixed, tiny number of things (the 4 positions of colour jitter, the
window offsets of the bilateral filter). Semantics follow torchvision's transforms, per
sample (the tests compare each op with ``torchvision.transforms.v2.functional`` applied
image by image).

The rooms:

* :mod:`~ssl_core.augment.base` -- the op protocol, ``to_float``, ``normalize``, shared helpers;
* :mod:`~ssl_core.augment.sampling` -- random draws from an explicit generator (also used by
  the methods);
* :mod:`~ssl_core.augment.geometry` -- crops, flip, rotation, affine warps;
* :mod:`~ssl_core.augment.colour` -- colour jitter, grayscale, solarize, HSV and PCA contrasts;
* :mod:`~ssl_core.augment.filters` -- blur, sharpen, edge map, de-texturising;
* :mod:`~ssl_core.augment.fusion` -- ``torch.compile`` of pointwise ops, the flip fused into a crop;
* :mod:`~ssl_core.augment.pipeline` -- :class:`Pipeline` and :func:`build_pipeline`.

Random numbers come from ``generator`` (pass one on the batch's device: a CPU generator
with CUDA data works, but each draw is then a host-to-device copy). On a CPU shared with
other processes, set OMP_WAIT_POLICY=PASSIVE (the ``pretextlab`` command does unless told
otherwise; see docs/performance.md): these ops are small, and spinning OpenMP threads can
slow them down more than tenfold.
"""

from ssl_core.augment.base import AugmentOpImpl, Params, normalize, resize, to_float
from ssl_core.augment.colour import (
    ColorJitter, Grayscale, HSVPower, PCAContrast, Solarize, adjust_brightness, adjust_contrast, adjust_hue,
    adjust_saturation, hsv_to_rgb, rgb_to_hsv, symmetric_eigh,
)
from ssl_core.augment.filters import (
    Detexturize, EdgeMap, GaussianBlur, Sharpen, bilateral_filter, gaussian_kernels, sobel_magnitude,
)
from ssl_core.augment.geometry import HorizontalFlip, RandomAffine, RandomCrop, RandomResizedCrop, Rotate, crop_resize
from ssl_core.augment.pipeline import OP_CLASSES, Pipeline, build_op, build_pipeline

__all__ = [
    "OP_CLASSES", "AugmentOpImpl", "ColorJitter", "Detexturize", "EdgeMap", "GaussianBlur", "Grayscale",
    "HSVPower", "HorizontalFlip", "PCAContrast", "Params", "Pipeline", "RandomAffine", "RandomCrop",
    "RandomResizedCrop", "Rotate", "Sharpen", "Solarize", "adjust_brightness", "adjust_contrast", "adjust_hue",
    "adjust_saturation", "bilateral_filter", "build_op", "build_pipeline", "crop_resize", "gaussian_kernels",
    "hsv_to_rgb", "normalize", "resize", "rgb_to_hsv", "sobel_magnitude", "symmetric_eigh", "to_float",
]
