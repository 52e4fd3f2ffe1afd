"""Augmentation ops, declared: each works on a float batch (B, C, H, W) in [0, 1], draws its
random parameters per sample, and is applied with probability p per sample.

:mod:`ssl_core.augment` implements them (one class per ``op`` name); :data:`AugmentOp` is the
discriminated union a spec's ``augment`` list holds.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from ssl_core.specs.base import Int, Real, Strict


class _Op(Strict):
    p: Real = Field(1.0, ge=0.0, le=1.0, description="probability per sample")


class RandomResizedCropOp(_Op):
    op: Literal["random_resized_crop"] = "random_resized_crop"
    scale: tuple[Real, Real] = (0.08, 1.0)
    ratio: tuple[Real, Real] = (3 / 4, 4 / 3)

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
    padding: Int = Field(4, ge=0, le=64)


class HorizontalFlipOp(_Op):
    op: Literal["horizontal_flip"] = "horizontal_flip"
    p: Real = Field(0.5, ge=0.0, le=1.0)


class RotateOp(_Op):
    op: Literal["rotate"] = "rotate"
    degrees: Real = Field(20.0, ge=0.0, le=180.0)


class RandomAffineOp(_Op):
    """Exemplar-CNN's geometric family: translation, scaling and rotation, composed."""

    op: Literal["random_affine"] = "random_affine"
    translate: Real = Field(0.2, ge=0.0, le=0.5, description="fraction of the image side")
    scale: tuple[Real, Real] = (0.7, 1.4)
    degrees: Real = Field(20.0, ge=0.0, le=180.0)


class ColorJitterOp(_Op):
    op: Literal["color_jitter"] = "color_jitter"
    p: Real = Field(0.8, ge=0.0, le=1.0)
    brightness: Real = Field(0.4, ge=0.0, le=1.0)
    contrast: Real = Field(0.4, ge=0.0, le=1.0)
    saturation: Real = Field(0.4, ge=0.0, le=1.0)
    hue: Real = Field(0.1, ge=0.0, le=0.5)


class HSVPowerOp(_Op):
    """Exemplar-CNN's 'contrast 2' and hue change: S and V raised to a power, scaled and shifted; hue shifted."""

    op: Literal["hsv_power"] = "hsv_power"
    power: tuple[Real, Real] = (0.25, 4.0)
    factor: tuple[Real, Real] = (0.7, 1.4)
    shift: Real = Field(0.1, ge=0.0, le=0.5)
    hue_shift: Real = Field(0.1, ge=0.0, le=0.5)


class PCAContrastOp(_Op):
    """Exemplar-CNN's 'contrast 1': each principal-component projection of the pixels scaled by a factor."""

    op: Literal["pca_contrast"] = "pca_contrast"
    factor: tuple[Real, Real] = (0.5, 2.0)


class GrayscaleOp(_Op):
    """'De-colorized' view."""

    op: Literal["grayscale"] = "grayscale"
    p: Real = Field(0.2, ge=0.0, le=1.0)


class GaussianBlurOp(_Op):
    op: Literal["gaussian_blur"] = "gaussian_blur"
    p: Real = Field(0.5, ge=0.0, le=1.0)
    sigma: tuple[Real, Real] = (0.1, 2.0)
    kernel_fraction: Real = Field(0.1, gt=0.0, le=0.5, description="kernel side as a fraction of the image side")


class SolarizeOp(_Op):
    op: Literal["solarize"] = "solarize"
    p: Real = Field(0.2, ge=0.0, le=1.0)
    threshold: Real = Field(0.5, ge=0.0, le=1.0)


class SharpenOp(_Op):
    """'Edge-enhanced' view: unsharp masking with a per-sample strength."""

    op: Literal["sharpen"] = "sharpen"
    p: Real = Field(0.5, ge=0.0, le=1.0)
    strength: tuple[Real, Real] = (1.0, 3.0)


class EdgeMapOp(_Op):
    """'Salient edge map' view: Sobel gradient magnitude, normalised per image."""

    op: Literal["edge_map"] = "edge_map"
    p: Real = Field(0.5, ge=0.0, le=1.0)


class DetexturizeOp(_Op):
    """'De-texturized' view: edge-preserving (bilateral) smoothing."""

    op: Literal["detexturize"] = "detexturize"
    p: Real = Field(0.5, ge=0.0, le=1.0)
    sigma_space: Real = Field(1.5, gt=0.0, le=10.0)
    sigma_color: Real = Field(0.1, gt=0.0, le=1.0)
    iterations: Int = Field(2, ge=1, le=8)


AugmentOp = Annotated[
    Union[
        RandomResizedCropOp, RandomCropOp, HorizontalFlipOp, RotateOp, RandomAffineOp, ColorJitterOp,
        HSVPowerOp, PCAContrastOp, GrayscaleOp, GaussianBlurOp, SolarizeOp, SharpenOp, EdgeMapOp, DetexturizeOp,
    ],
    Field(discriminator="op"),
]
