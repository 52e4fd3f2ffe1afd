"""NT-Xent and InfoNCE against literal transcriptions of the papers' pseudocode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_core.losses import info_nce, nt_xent


def _nt_xent_algorithm1(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR Algorithm 1, written with loops: z_{2k-1} = view 1, z_{2k} = view 2."""
    n = z1.shape[0]
    z = []
    for k in range(n):
        z.append(z1[k].double())
        z.append(z2[k].double())
    s = [[float(z[i] @ z[j] / (z[i].norm() * z[j].norm())) for j in range(2 * n)] for i in range(2 * n)]

    def l(i: int, j: int) -> float:
        denom = sum(math.exp(s[i][k] / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(s[i][j] / tau) / denom)

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 2.0])
def test_nt_xent_matches_algorithm_1(tau: float) -> None:
    g = torch.Generator().manual_seed(int(tau * 10))
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(_nt_xent_algorithm1(z1, z2, tau), rel=1e-9)


def test_nt_xent_scale_invariant_and_symmetric() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    base = nt_xent(z1, z2, 0.5)
    assert torch.allclose(nt_xent(3.0 * z1, 0.01 * z2, 0.5), base, atol=1e-5)
    assert torch.allclose(nt_xent(z2, z1, 0.5), base, atol=1e-5)  # mean over all 2N anchors
    # identical views make a smaller loss than random ones
    assert nt_xent(z1, z1, 0.5) < base


def _info_nce_moco_pseudocode(q, k, queue, t):
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    n, c = q.shape
    l_pos = torch.bmm(q.view(n, 1, c), k.view(n, c, 1)).view(n, 1)
    l_neg = torch.mm(q.view(n, c), queue.t().contiguous().view(c, -1))
    logits = torch.cat([l_pos, l_neg], dim=1)
    labels = torch.zeros(n, dtype=torch.long)
    return F.cross_entropy(logits / t, labels)


@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_moco_pseudocode(t: float) -> None:
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    queue = F.normalize(torch.randn(32, 8, generator=g, dtype=torch.float64), dim=1)
    got = info_nce(q, k, queue, t)
    assert got.item() == pytest.approx(_info_nce_moco_pseudocode(q, k, queue, t).item(), rel=1e-9)
    assert torch.allclose(info_nce(5 * q, 0.1 * k, queue, t), got)


def test_info_nce_positive_at_index_zero() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 8, generator=g)
    queue = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    # key == query: the positive dominates, loss near 0 at a low temperature
    assert info_nce(q, q, queue, 0.01).item() < 1e-3
    # key == -query: the positive is the worst logit
    assert info_nce(q, -q, queue, 0.01).item() > 10
    # gradients flow to q
    q.requires_grad_(True)
    info_nce(q, torch.randn(4, 8, generator=g), queue, 0.2).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
