"""MoCo v1 (He, Fan, Wu, Xie & Girshick, CVPR 2020) and v2 (Chen, Fan, Girshick & He, 2020).

A query encoder (backbone + head) and a momentum key encoder (its copy, updated as
theta_k <- m * theta_k + (1 - m) * theta_q, never by gradients); keys of earlier batches
wait in a FIFO queue of K negatives, and InfoNCE contrasts each query with its positive
key (logit 0) against the queue. v2 changes the head to a 2-layer MLP, the temperature
to 0.2 and the augmentation (blur); ``spec.method`` is already resolved for the version.

Shuffling BN (paper §3.3): BatchNorm statistics shared by a query and its positive key
let the model "cheat". Under multi-process torch.distributed training (world size > 1)
the key batch is shuffled across processes (the official all-gather shuffle, dealt so that
every key batch mixes the samples of all ranks: no key is normalised with its query's batch); a
one-process group gives that shuffle nothing to mix with. On one device the official CIFAR demo's
split-batch BN emulates the devices: every BN layer normalises ``bn_splits`` sub-batches
separately, and the key batch is dealt across the sub-batches with the same shuffle as across
ranks, so every key sub-batch mixes all query sub-batches (moving whole sub-batches would
leave every key with its own query's group, and protect nothing). State (queue, pointer, key
encoder) are buffers/modules, so ``state_dict()`` checkpoints them.

The queue may hold at most the training samples minus one global batch (older keys of the
batch's own images would otherwise pose as negatives): :meth:`MoCo.fit_to_data` refuses a longer
one, or shrinks it with ``method.cap_queue``. The default K is the CIFAR demo's 4096, not the
papers' 65536 (ImageNet-sized); docs/methods.md lists the remaining deviations.

The trainer (``ssl_core.train``) builds the method after ``init_process_group``, so a run on
several ranks (torchrun, ``pretextlab train --nproc``) takes the cross-process path and every
rank enqueues the keys of the global batch; one process takes the split-BN path.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.augment.sampling import randperm
from ssl_core.errors import SpecError
from ssl_core.heads import MoCoProjectionHead
from ssl_core.losses import info_nce
from ssl_core.methods.base import SSLMethod
from ssl_core.specs import PretrainSpec
from ssl_core.specs.method import capped_queue_size, queue_refusal

log = logging.getLogger("pretextlab.moco")


# ----------------------------------------------------------------------------- split BN
def effective_splits(batch: int, splits: int) -> int:
    """The largest divisor of ``batch`` not above ``splits`` (a short last batch still splits evenly)."""
    s = max(1, min(splits, batch))
    while batch % s:
        s -= 1
    return s


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over ``num_splits`` interleaved sub-batches (sample n in sub-batch n % splits).

    From the official MoCo CIFAR demo: in training, the (N, C, H, W) batch is viewed as
    (N/s, s*C, H, W) so each sub-batch gets its own statistics; the running statistics are
    the average over the sub-batches. In eval mode it is an ordinary BatchNorm2d, and its
    state_dict keys are those of BatchNorm2d, so the exported backbone loads anywhere.
    """

    def __init__(self, num_features: int, num_splits: int, **kw) -> None:
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        s = effective_splits(n, self.num_splits)
        if (self.training or not self.track_running_stats) and s > 1:
            mean_split = self.running_mean.repeat(s)
            var_split = self.running_var.repeat(s)
            out = F.batch_norm(
                x.reshape(-1, c * s, h, w), mean_split, var_split,
                self.weight.repeat(s), self.bias.repeat(s), True, self.momentum, self.eps,
            ).reshape(n, c, h, w)
            with torch.no_grad():
                self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
                self.running_var.copy_(var_split.view(s, c).mean(dim=0))
                self.num_batches_tracked.add_(1)
            return out
        return super().forward(x)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` (in place) by a SplitBatchNorm with the same state."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            new = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                 affine=child.affine, track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(child.weight.device if child.affine else None))
        else:
            convert_split_bn(child, num_splits)
    return module


def split_shuffle(batch: int, splits: int, generator: torch.Generator | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """(idx_shuffle, idx_unshuffle) for the key batch: Shuffling BN with the sub-batches as the devices.

    Sample n sits in BN sub-batch n % s. The sub-batches are dealt to each other exactly as ranks
    are across processes (:func:`rank_mixing_shuffle`), so every key sub-batch mixes the samples
    of all query sub-batches (at most ceil(rows / s) of any one): a key is never normalised with
    the batch statistics of its own query's group. shuffled = k[idx_shuffle]; k = shuffled[idx_unshuffle].
    With a single sub-batch this is a plain random permutation.
    """
    s = effective_splits(batch, splits)
    if s == 1:
        idx_shuffle = randperm(batch, device, generator)
        return idx_shuffle, torch.argsort(idx_shuffle)
    rows = batch // s
    # rank_mixing_shuffle numbers the samples group by group (group j's t-th sample = j*rows + t);
    # SplitBatchNorm interleaves them (n = t*s + j): translate into its order and back
    grouped = rank_mixing_shuffle(s, rows, generator, device)
    n = torch.arange(batch, device=device)
    source = grouped[(n % s) * rows + n // s]  # key position n takes this sample, numbered by group
    idx_shuffle = (source % rows) * s + source // rows
    return idx_shuffle, torch.argsort(idx_shuffle)


# ----------------------------------------------------------------------------- DDP shuffle
@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """all_gather without gradient: (N, ...) per process -> (world * N, ...)."""
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def rank_mixing_shuffle(world: int, local: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """idx_shuffle over the gathered batch (rank r's samples at rows r*local...): shuffled = x_all[idx_shuffle].

    Every rank's key batch is dealt from all ranks' samples: rank r's samples, in a random order,
    go to ranks r+1, r+2, ... (mod world) in turn, then each rank's new batch is put in a random
    order. So no key is normalised with its query's BN batch (for local >= 2 each key batch holds
    at most ceil(local / world) of a query batch's samples; a plain random permutation would, by
    chance, leave some rank with its own batch, and moving whole batches would change nothing).
    """
    n = world * local
    order = torch.stack([randperm(local, device, generator) for _ in range(world)])  # (world, local): k-th dealt
    src_rank = torch.arange(world, device=device).unsqueeze(1)
    k = torch.arange(local, device=device).unsqueeze(0)
    dest_rank = torch.empty(n, dtype=torch.long, device=device)
    dest_rank[(src_rank * local + order).flatten()] = ((src_rank + 1 + k) % world).flatten()
    tie = randperm(n, device, generator)  # a random order inside each destination batch
    return torch.argsort(dest_rank * n + tie)  # each destination receives exactly `local` samples


@torch.no_grad()
def batch_shuffle_ddp(x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Official MoCo: gather the batch from all processes, shuffle it with rank 0's permutation, take this
    rank's share; the permutation mixes every rank's key batch from all ranks (:func:`rank_mixing_shuffle`)."""
    local = x.shape[0]
    x_all = concat_all_gather(x)
    idx_shuffle = rank_mixing_shuffle(dist.get_world_size(), local, generator, x.device)
    dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    rank = dist.get_rank()
    return x_all[idx_shuffle.view(-1, local)[rank]], idx_unshuffle


@torch.no_grad()
def batch_unshuffle_ddp(x: Tensor, idx_unshuffle: Tensor) -> Tensor:
    local = x.shape[0]
    x_all = concat_all_gather(x)
    return x_all[idx_unshuffle.view(-1, local)[dist.get_rank()]]


def _multi_process() -> bool:
    """True under torch.distributed with more than one process: only then can the shuffle mix devices.

    A one-process group (world size 1) is a single device: its "all-gather" shuffle is a
    plain permutation that leaves every key in its query's BN batch, so it offers no
    protection and the single-device split-BN path is used instead.
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# ----------------------------------------------------------------------------- the method
class MoCo(SSLMethod):
    def __init__(self, spec: PretrainSpec) -> None:
        super().__init__(spec)
        m = spec.method
        self.momentum = float(m.momentum)
        self.temperature = float(m.temperature)
        self.symmetric = bool(m.symmetric)
        self.bn_splits = int(m.bn_splits)
        # 'auto': all-gather shuffle across >1 processes, split BN on one device (incl. world size 1)
        self.shuffle_mode = m.shuffle_bn if m.shuffle_bn != "auto" else ("shuffle" if _multi_process() else "split")
        if self.shuffle_mode == "split":
            convert_split_bn(self.backbone, self.bn_splits)
        self.projection_head = MoCoProjectionHead(self.backbone.feature_dim, m.projection_dim, mlp=bool(m.mlp_head))
        # key encoder: a copy of the query encoder, never touched by the optimizer
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        for p in self.momentum_parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(m.queue_size, m.projection_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def fit_to_data(self, samples: int) -> dict[str, float]:
        """Refuse a queue longer than the samples of the other batches (stale keys of the batch's own
        images), or with ``method.cap_queue`` shrink it to the largest multiple of the batch that fits.

        The API refuses this at submission when the dataset's size is known statically; an image
        folder is counted only here. Returns the queue size the run uses (metric method/queue_size)."""
        batch, queue = self.spec.batch_size, self.queue.shape[0]
        refusal = queue_refusal(queue, samples, batch)
        if refusal is not None:
            capped = capped_queue_size(samples, batch)
            if not self.spec.method.cap_queue or capped == 0:
                raise SpecError(refusal)
            # the oldest entries of a fresh random queue: no RNG draw, the run stays reproducible
            self.queue = self.queue[:capped].clone()
            self.queue_ptr.zero_()
            log.warning("method.queue_size: capped from %d to %d keys (%d training samples, batch %d; "
                        "method.cap_queue)", queue, capped, samples, batch)
        return {"method/queue_size": float(self.queue.shape[0])}

    def query_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projection_head.parameters()]

    def momentum_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone_momentum.parameters(), *self.projection_head_momentum.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q (MoCo Eq. 2), one fused op over all parameters."""
        keys = self.momentum_parameters()
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, self.query_parameters(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: Tensor) -> None:
        """FIFO: the batch's keys (N, D) overwrite the oldest N entries, wrapping around (no host sync)."""
        if _multi_process():  # every process enqueues the keys of the global batch
            keys = concat_all_gather(keys)
        size = self.queue.shape[0]
        keys = keys[-size:]
        n = keys.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def encode_query(self, x: Tensor) -> Tensor:
        return F.normalize(self.projection_head(self.backbone(x)), dim=1)  # (N, D)

    @torch.no_grad()
    def encode_key(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Keys (N, D) from the momentum encoder, computed on a shuffled batch and unshuffled (Shuffling BN)."""
        def encoder(v: Tensor) -> Tensor:
            return F.normalize(self.projection_head_momentum(self.backbone_momentum(v)), dim=1)

        if self.shuffle_mode == "off":
            return encoder(x)
        if self.shuffle_mode == "shuffle" and _multi_process():
            x, idx_unshuffle = batch_shuffle_ddp(x, generator)
            return batch_unshuffle_ddp(encoder(x), idx_unshuffle)
        splits = self.bn_splits if self.shuffle_mode == "split" else 1
        idx_shuffle, idx_unshuffle = split_shuffle(x.shape[0], splits, generator, x.device)
        return encoder(x[idx_shuffle])[idx_unshuffle]

    def training_step(self, images, targets, generator=None) -> tuple[Tensor, dict[str, Tensor]]:
        x_q, x_k = self.normalize(self.augment_views(images, 2, generator)).chunk(2)  # two independent views
        q = self.encode_query(x_q)
        self.momentum_update()  # before the keys, as in the official code
        k = self.encode_key(x_k, generator)
        queue = self.queue.clone().detach()  # the enqueue below must not change what backward sees
        loss = info_nce(q, k, queue, self.temperature)  # logits N x (1+K), positive at 0
        new_keys = k
        if self.symmetric:  # MoCo CIFAR demo: loss_12 + loss_21, both key sets enqueued
            q2 = self.encode_query(x_k)
            k2 = self.encode_key(x_q, generator)
            loss = loss + info_nce(q2, k2, queue, self.temperature)
            new_keys = torch.cat([k, k2], dim=0)
        with torch.no_grad():
            l_pos = (q * k).sum(dim=1)
            l_neg_max = (q @ queue.to(q.dtype).t()).amax(dim=1)
            acc = (l_pos > l_neg_max).float().mean()
        self.dequeue_and_enqueue(new_keys)
        return loss, {"pretext_acc": acc}
