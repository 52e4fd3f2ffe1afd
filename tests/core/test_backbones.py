"""Backbone shapes, feature dims, channels and the CIFAR stem; head shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_core.backbones import build_backbone
from ssl_core.heads import ClassifierHead, MoCoProjectionHead, ScaleOnlyBatchNorm1d, SimCLRProjectionHead
from ssl_core.specs import BackboneSpec


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [4, 7, 16, 28])
def test_convnet_shapes(channels: int, side: int) -> None:
    net = build_backbone(BackboneSpec(name="convnet", width=4), channels, side)
    out = net(torch.rand(2, channels, side, side))
    assert out.shape == (2, net.feature_dim) == (2, 32)


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_resnet_feature_dim(name: str, dim: int) -> None:
    net = build_backbone(BackboneSpec(name=name), 3, 32)
    assert net.feature_dim == dim
    assert isinstance(net.net.fc, nn.Identity)
    if name == "resnet18":
        net.eval()
        with torch.no_grad():
            assert net(torch.rand(2, 3, 16, 16)).shape == (2, dim)


@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_cifar_stem_on_off(channels: int) -> None:
    on = build_backbone(BackboneSpec(name="resnet18"), channels, 32)  # auto: on at <= 64 px
    assert on.net.conv1.kernel_size == (3, 3) and on.net.conv1.stride == (1, 1)
    assert on.net.conv1.in_channels == channels and isinstance(on.net.maxpool, nn.Identity)
    off = build_backbone(BackboneSpec(name="resnet18"), channels, 96)
    assert off.net.conv1.kernel_size == (7, 7) and off.net.conv1.stride == (2, 2)
    assert off.net.conv1.in_channels == channels and isinstance(off.net.maxpool, nn.MaxPool2d)
    forced = build_backbone(BackboneSpec(name="resnet18", cifar_stem=False), channels, 32)
    assert forced.net.conv1.kernel_size == (7, 7)
    x = torch.rand(2, channels, 16, 16)
    on.eval(), off.eval()
    with torch.no_grad():
        assert on(x).shape == off(x).shape == (2, 512)


def test_backbone_random_init_differs_by_seed() -> None:
    torch.manual_seed(0)
    a = build_backbone(BackboneSpec(name="convnet", width=4), 3, 8)
    torch.manual_seed(1)
    b = build_backbone(BackboneSpec(name="convnet", width=4), 3, 8)
    assert not torch.equal(a.features[0].weight, b.features[0].weight)


def test_heads() -> None:
    x = torch.randn(4, 16)
    g = SimCLRProjectionHead(16, 32, 8)
    assert g(x).shape == (4, 8)
    kinds = [type(m) for m in g.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, ScaleOnlyBatchNorm1d]
    assert g.net[0].bias is None and g.net[3].bias is None  # BN follows each linear layer
    assert g.net[1].bias is not None  # the hidden BN centres (use_bias=True in model_util.py)
    out_bn = g.net[4]
    assert out_bn.bias is None and out_bn.weight.shape == (8,)  # output BN: scale, no shift
    names = [n for n, _ in g.named_parameters()]
    assert names == ["net.0.weight", "net.1.weight", "net.1.bias", "net.3.weight", "net.4.weight"]
    z = g.train()(torch.randn(64, 16))
    assert torch.allclose(z.mean(0), torch.zeros(8), atol=1e-5)  # batch-normalised output, no shift
    v1 = MoCoProjectionHead(16, 8, mlp=False)
    assert isinstance(v1.net, nn.Linear) and v1(x).shape == (4, 8)
    v2 = MoCoProjectionHead(16, 8, mlp=True)
    assert v2(x).shape == (4, 8)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in v2.modules())
    assert ClassifierHead(16, 5)(x).shape == (4, 5)
    assert ClassifierHead(16, 5, hidden_dim=12, dropout=0.5)(x).shape == (4, 5)
