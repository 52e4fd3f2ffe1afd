"""Heads put on top of the backbone during pretraining (discarded afterwards).

lightly-style ``<Method><Role>`` names; each takes (B, in_dim) features.
"""

from __future__ import annotations

from torch import Tensor, nn


class ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with a learned scale and no shift: TensorFlow's ``center=False``.

    The shift is removed rather than frozen at zero so that no optimizer, checkpoint or
    SyncBatchNorm conversion ever sees a parameter that must not move.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)


class SimCLRProjectionHead(nn.Module):
    """SimCLR's projection g (Chen et al. 2020, §2.1): z = BN(W2 ReLU(BN(W1 h))).

    The paper writes g as W2 ReLU(W1 h); the official code (google-research/simclr
    ``model_util.py``, ``projection_head`` in ``nonlinear`` mode with two layers, as in v1)
    puts BatchNorm on every layer's output: the hidden layer is Linear (no bias, the BN
    shift replaces it) - BN (scale and shift) - ReLU, the output layer is Linear (no bias)
    - BN with a scale but no shift (``center=use_bias=False``), and no ReLU.
    (B, in_dim) -> (B, out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),  # bias is redundant before BN
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            ScaleOnlyBatchNorm1d(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


ProjectionHead = SimCLRProjectionHead  # the name docs/internals.md uses


class MoCoProjectionHead(nn.Module):
    """MoCo's output head: v1 a linear fc to 128-d (He et al. 2020, §3.3); v2 a 2-layer MLP
    in_dim -> ReLU -> 128 with no BN (Chen et al. 2020, the ``--mlp`` option).
    (B, in_dim) -> (B, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int = 128, mlp: bool = False) -> None:
        super().__init__()
        if mlp:
            self.net: nn.Module = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))
        else:
            self.net = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ClassifierHead(nn.Module):
    """Pretext-task classifier: Linear, or Linear-BN-ReLU-(Dropout)-Linear when ``hidden_dim`` is set.

    Used by rotation (4-way, linear as RotNet's GAP -> fc), exemplar (N-way after an FC
    with dropout), relative position (fc7 -> 8) and jigsaw (fc7 -> P).
    (B, in_dim) -> (B, num_classes) logits.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden_dim is None:
            self.net: nn.Module = nn.Linear(in_dim, num_classes)
        else:
            layers: list[nn.Module] = [
                nn.Linear(in_dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(hidden_dim, num_classes))
            self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


RotationPredictionHead = ClassifierHead
