"""Contrastive losses as pure functions (solo-learn style: no state, no modules).

* :func:`nt_xent` -- SimCLR's normalized temperature-scaled cross entropy
  (Chen et al., ICML 2020, Algorithm 1 and Eq. 1).
* :func:`info_nce` -- MoCo's InfoNCE against a queue of negative keys
  (He et al., CVPR 2020, Algorithm 1 / Eq. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss over the 2N augmented views of a batch.

    z1, z2: (N, D) projections of the two views of the same N images (row i of z1 and
    row i of z2 form a positive pair). They are L2-normalised here, so
    sim(u, v) = u.v / (|u||v|) as in the paper. For every one of the 2N anchors i with
    positive j::

        l(i, j) = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) )

    and the loss is the mean of l over all 2N anchors (Algorithm 1: (1/2N) sum_k
    [l(2k-1, 2k) + l(2k, 2k-1)]). The denominator holds the positive and the 2(N-1)
    negatives; only the anchor itself is excluded. Returns a scalar.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2N, D)
    sim = z @ z.t() / temperature  # (2N, 2N) cosine similarities / t
    # k != i: mask the diagonal with -inf so exp() drops it from the denominator
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    # the positive of anchor i is i + N (first half) or i - N (second half)
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(sim, targets)


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE loss: one positive key per query against K queued negatives.

    q: (N, D) queries, k: (N, D) keys (both L2-normalised here), queue: (K, D) keys
    of earlier batches, already normalised. As in MoCo's pseudocode::

        l_pos = bmm(q.view(N,1,C), k.view(N,C,1))     # Nx1
        l_neg = mm(q.view(N,C), queue.view(C,K))      # NxK
        logits = cat([l_pos, l_neg], dim=1) / t       # Nx(1+K), positive at index 0
        loss = CrossEntropyLoss(logits, zeros(N))

    Returns a scalar. The keys should carry no gradient (the caller detaches them).
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.to(q.dtype).t()  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1+K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)
