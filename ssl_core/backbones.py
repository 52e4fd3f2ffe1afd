"""Backbones: the encoder f that every method trains and the service exports.

``build_backbone(spec, in_channels, image_size)`` returns an ``nn.Module`` mapping
(B, C, H, W) -> (B, feature_dim) with a ``feature_dim`` attribute.

* ``resnet18/34/50``: torchvision ResNets, random init (``weights=None``), ``fc``
  replaced by ``Identity`` so the output is the pooled 512-/2048-d vector ``h``
  (SimCLR §2.1 uses h, not the projection, downstream). With ``cifar_stem`` conv1 is a
  3x3 stride-1 convolution and the max-pool is dropped (SimCLR App. B.9, MoCo CIFAR demo).
* ``convnet``: a small conv-BN-ReLU network for CPU runs and tests (width doubling per
  block, adaptive average pooling); it accepts inputs down to 4 px.

Both expose ``forward_layers(x, names)``: the feature maps of the named stages (``BackboneSpec.layer_names``:
ResNet ``layer1..layer4``, ConvNet ``block1..block4``) and/or the pooled ``pool`` vector from one forward
pass that stops at the deepest stage asked for. Evaluation probes intermediate layers through it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import models

from ssl_core.specs import BackboneSpec
from ssl_core.specs.model import CONVNET_BLOCKS, POOLED, RESNET_STAGES

_RESNETS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier: (B, C, H, W) -> (B, 512 | 2048)."""

    def __init__(self, name: str, in_channels: int, cifar_stem: bool) -> None:
        super().__init__()
        net = _RESNETS[name](weights=None)
        if cifar_stem:
            # SimCLR App. B.9: "replace the first 7x7 Conv of stride 2 with 3x3 Conv of stride 1,
            # and also remove the first max pooling operation".
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = int(net.fc.in_features)
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def forward_layers(self, x: Tensor, names: list[str]) -> dict[str, Tensor]:
        """Stage outputs (B, C, H, W) and/or ``pool`` (B, D) for ``names``, in one pass."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        out: dict[str, Tensor] = {}
        for stage in RESNET_STAGES:
            if len(out) == len(names):
                return out
            x = getattr(n, stage)(x)
            if stage in names:
                out[stage] = x
        if POOLED in names:
            out[POOLED] = torch.flatten(n.avgpool(x), 1)
        return out


class ConvNet(nn.Module):
    """Small conv-BN-ReLU encoder: widths w, 2w, 4w, 8w; 2x2 max-pool between blocks.

    Pooling uses ``ceil_mode`` so that a 4 px input shrinks 4 -> 2 -> 1 -> 1 instead of
    vanishing; the final adaptive average pool gives (B, 8w) for any input side >= 1.
    """

    def __init__(self, in_channels: int, width: int = 32, blocks: int = CONVNET_BLOCKS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.block_ends: list[int] = []  # index in ``features`` one past each block's ReLU
        c_in = in_channels
        for i in range(blocks):
            c_out = width * 2**i
            if i > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            self.block_ends.append(len(layers))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward_layers(self, x: Tensor, names: list[str]) -> dict[str, Tensor]:
        """Block outputs (B, C, H, W) (after the block's ReLU, before the next max-pool) and/or ``pool``."""
        out: dict[str, Tensor] = {}
        start = 0
        for i, end in enumerate(self.block_ends, start=1):
            if len(out) == len(names):
                return out
            x = self.features[start:end](x)
            start = end
            if f"block{i}" in names:
                # the next block's in-place ReLU never touches this tensor (a max-pool comes first)
                out[f"block{i}"] = x
        if POOLED in names:
            out[POOLED] = torch.flatten(self.pool(x), 1)
        return out


def build_backbone(spec: BackboneSpec, in_channels: int, image_size: int) -> nn.Module:
    """The encoder named by ``spec`` for ``in_channels``-channel images of side ``image_size``."""
    if spec.name == "convnet":
        return ConvNet(in_channels, spec.width)
    if spec.name in _RESNETS:
        return ResNetBackbone(spec.name, in_channels, spec.resolved_cifar_stem(image_size))
    raise ValueError(f"backbone.name: unknown backbone {spec.name!r}")
