"""The backbone: which network, and the stem it uses for small images."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ssl_core.specs.base import Bool, Int, Strict

CONVNET_BLOCKS = 4  # the convnet's conv blocks (widths w, 2w, 4w, 8w)
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
POOLED = "pool"  # the final globally pooled features: what methods train and evaluation reads by default


class BackboneSpec(Strict):
    name: Literal["resnet18", "resnet34", "resnet50", "convnet"] = "resnet18"
    cifar_stem: Bool | None = Field(
        None, description="3x3 stride-1 first conv, no max-pool; None = on for images of 64 px and less"
    )
    width: Int = Field(32, ge=4, le=512, description="convnet only: channels of the first block (doubles per block)")

    def resolved_cifar_stem(self, image_size: int) -> bool:
        return self.cifar_stem if self.cifar_stem is not None else image_size <= 64

    def min_input_size(self) -> int:
        """Smallest image side the backbone accepts (adaptive pooling handles the rest)."""
        return 4 if self.name == "convnet" else 8

    def conv_blocks(self) -> tuple[str, ...]:
        """The backbone's convolutional stages, shallow to deep: what an evaluation can probe besides the
        final pooled features (ssl_core.backbones exposes the same names through ``forward_layers``)."""
        if self.name == "convnet":
            return tuple(f"block{i}" for i in range(1, CONVNET_BLOCKS + 1))
        return RESNET_STAGES

    def layer_names(self) -> tuple[str, ...]:
        """Every layer an evaluation may name: the conv blocks, then ``pool``."""
        return (*self.conv_blocks(), POOLED)
