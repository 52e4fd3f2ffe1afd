"""The backbone: which network, and the stem it uses for small images."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ssl_core.specs.base import Bool, Int, Strict


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
