"""MoCo: FIFO queue, momentum update, Shuffling BN (split-batch BN on one device), checkpoint state."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssl_core.backbones import build_backbone
from ssl_core.methods.moco import MoCo, SplitBatchNorm, convert_split_bn, effective_splits, split_shuffle
from ssl_core.registry import build_method

from methods_testkit import one_thread, random_images, tiny_spec, train_fixed_batch  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _moco(**method) -> MoCo:
    torch.manual_seed(0)
    return build_method(tiny_spec({"name": "moco", "queue_size": 16, **method}, batch_size=8))


def test_versions_resolve_head_and_temperature() -> None:
    v1, v2 = _moco(version=1), _moco(version=2)
    assert v1.temperature == 0.07 and isinstance(v1.projection_head.net, nn.Linear)
    assert v2.temperature == 0.2 and isinstance(v2.projection_head.net, nn.Sequential)
    assert v1.queue.shape == (16, 128)
    assert torch.allclose(v1.queue.norm(dim=1), torch.ones(16))


def test_queue_is_fifo_with_wrap_around() -> None:
    m = _moco()
    m.queue.zero_()
    size = m.queue.shape[0]  # 16
    pushed = []
    for i in range(7):  # 7 batches of 3 = 21 keys: wraps once
        keys = torch.full((3, 128), float(i + 1))
        keys[:, 0] = torch.arange(3) + 10 * (i + 1)
        m.dequeue_and_enqueue(keys)
        pushed.extend(keys.unbind(0))
        assert int(m.queue_ptr) == (3 * (i + 1)) % size
    # the queue holds the 16 most recent keys; slot s holds key number 16*q + s for the last lap
    for slot in range(size):
        newest = max(k for k in range(len(pushed)) if k % size == slot)
        assert torch.equal(m.queue[slot], pushed[newest])
    # the oldest entry sits at the pointer: it is the next to be overwritten
    assert torch.equal(m.queue[int(m.queue_ptr)], pushed[len(pushed) - size])


def test_momentum_update_formula() -> None:
    m = _moco(momentum=0.9)
    with torch.no_grad():
        for p in m.query_parameters():
            p.normal_()
        for p in m.momentum_parameters():
            p.normal_()
    q_before = [p.clone() for p in m.query_parameters()]
    k_before = [p.clone() for p in m.momentum_parameters()]
    m.momentum_update()
    for q, k0, k1 in zip(q_before, k_before, m.momentum_parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q, atol=1e-6)
    for q0, q1 in zip(q_before, m.query_parameters()):
        assert torch.equal(q0, q1)  # the query encoder is untouched
    assert all(not p.requires_grad for p in m.momentum_parameters())
    assert all(p.requires_grad for p in m.query_parameters())


def test_training_step_updates_keys_queue_and_no_key_gradients() -> None:
    m = _moco(momentum=0.5)
    m.train()
    images = random_images(8)
    with torch.no_grad():  # make the encoders differ so the update is visible
        for p in m.query_parameters():
            p.add_(0.1)
    k_before = [p.clone() for p in m.momentum_parameters()]
    q_now = [p.clone() for p in m.query_parameters()]
    queue_before = m.queue.clone()
    loss, metrics = m.training_step(images, None, torch.Generator().manual_seed(0))
    loss.backward()
    for k0, q, k1 in zip(k_before, q_now, m.momentum_parameters()):
        assert torch.allclose(k1, 0.5 * k0 + 0.5 * q, atol=1e-6)
        assert k1.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.query_parameters())
    assert int(m.queue_ptr) == 8
    assert not torch.equal(m.queue[:8], queue_before[:8]) and torch.equal(m.queue[8:], queue_before[8:])
    assert torch.allclose(m.queue[:8].norm(dim=1), torch.ones(8), atol=1e-5)
    assert 0 <= float(metrics["pretext_acc"]) <= 1


def test_state_dict_checkpoints_queue_pointer_and_key_encoder() -> None:
    a = _moco()
    a.training_step(random_images(8), None, torch.Generator().manual_seed(0))
    state = a.state_dict()
    assert {"queue", "queue_ptr"} <= set(state)
    assert any(k.startswith("backbone_momentum.") for k in state)
    assert any(k.startswith("projection_head_momentum.") for k in state)
    b = _moco()
    b.load_state_dict(state)
    assert torch.equal(b.queue, a.queue) and int(b.queue_ptr) == 8


# ----------------------------------------------------------------------------- Shuffling BN on one device
@pytest.mark.parametrize("batch,splits", [(16, 8), (16, 4), (12, 8), (8, 2), (9, 3), (64, 8)])
def test_split_shuffle_mixes_every_key_sub_batch(batch: int, splits: int) -> None:
    s = effective_splits(batch, splits)
    rows = batch // s
    assert batch % s == 0 and s <= splits
    for seed in range(5):
        idx_shuffle, idx_unshuffle = split_shuffle(batch, splits, torch.Generator().manual_seed(seed), torch.device("cpu"))
        assert sorted(idx_shuffle.tolist()) == list(range(batch))
        assert torch.equal(idx_shuffle[idx_unshuffle], torch.arange(batch))
        # the query of sample n is in sub-batch n % s; key sub-batch j holds the samples idx_shuffle[j::s]
        for j in range(s):
            counts = torch.bincount(idx_shuffle[j::s] % s, minlength=s)
            assert counts.max() <= -(-rows // s)  # at most ceil(rows / s) from any one query sub-batch
            assert (counts > 0).sum() == min(rows, s)  # dealt from as many query sub-batches as it can hold


def test_split_bn_keys_see_other_batch_statistics_than_their_queries() -> None:
    """The key encoder starts as a copy of the query encoder; on the very same images in training
    mode its keys differ from the query path's outputs only through the BN sub-batch groupings. If
    the shuffle kept the groups (whole sub-batches moved), the keys would equal the query outputs."""
    m = _moco(bn_splits=4)
    m.train()
    x = torch.randn(32, 3, 32, 32)
    keys = m.encode_key(x, torch.Generator().manual_seed(0))
    same_groups = F.normalize(m.projection_head_momentum(m.backbone_momentum(x)), dim=1)
    assert (keys - same_groups).abs().max() > 1e-2


def test_split_shuffle_mixes_rows() -> None:
    dests = {tuple(split_shuffle(16, 4, torch.Generator().manual_seed(i), torch.device("cpu"))[1].tolist()) for i in range(10)}
    assert len(dests) > 5


def test_split_batchnorm_normalises_each_sub_batch() -> None:
    torch.manual_seed(0)
    bn = SplitBatchNorm(3, num_splits=4)
    x = torch.randn(8, 3, 5, 5) + torch.arange(8).view(8, 1, 1, 1).float()
    out = bn(x)
    for j in range(4):
        ref = F.batch_norm(x[j::4], None, None, training=True, eps=bn.eps)
        assert torch.allclose(out[j::4], ref, atol=1e-5)
    # running stats: the average of the sub-batches' updates
    expected_mean = 0.1 * torch.stack([x[j::4].mean(dim=(0, 2, 3)) for j in range(4)]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    bn.eval()
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(bn.state_dict())
    plain.eval()
    assert torch.allclose(bn(x), plain(x))


def test_convert_split_bn_keeps_state_dict_keys() -> None:
    from ssl_core.specs import BackboneSpec

    net = build_backbone(BackboneSpec(name="convnet", width=4), 3, 16)
    keys = set(net.state_dict())
    convert_split_bn(net, 4)
    assert set(net.state_dict()) == keys
    assert all(isinstance(m, SplitBatchNorm) for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    fresh = build_backbone(BackboneSpec(name="convnet", width=4), 3, 16)
    fresh.load_state_dict(net.state_dict())  # an exported MoCo backbone loads into a plain one


def test_shuffle_bn_modes() -> None:
    split = _moco(bn_splits=4)
    assert split.shuffle_mode == "split"  # auto on one device
    assert any(isinstance(m, SplitBatchNorm) for m in split.backbone.modules())
    assert any(isinstance(m, SplitBatchNorm) for m in split.backbone_momentum.modules())
    off = _moco(shuffle_bn="off")
    assert not any(isinstance(m, SplitBatchNorm) for m in off.backbone.modules())


@pytest.mark.parametrize("mode", ["split", "shuffle", "off"])
def test_keys_are_unshuffled(mode: str) -> None:
    m = _moco(shuffle_bn=mode, bn_splits=4)
    m.eval()  # BN from running stats: the shuffle must then be invisible in the keys
    x = torch.randn(8, 3, 32, 32)
    keys = m.encode_key(x, torch.Generator().manual_seed(0))
    direct = F.normalize(m.projection_head_momentum(m.backbone_momentum(x)), dim=1)
    assert torch.allclose(keys, direct, atol=1e-5)


def test_symmetric_loss_enqueues_both_views(one_thread) -> None:  # noqa: F811
    spec = tiny_spec({"name": "moco", "queue_size": 32, "symmetric": True}, batch_size=8)
    m, losses = train_fixed_batch(spec, random_images(8), steps=3)
    assert int(m.queue_ptr) == (3 * 16) % 32


def test_one_process_group_uses_split_bn(tmp_path) -> None:
    """World size 1 is one device: 'auto' must not pick the all-gather shuffle (it would mix nothing)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m = _moco(bn_splits=4)
        assert m.shuffle_mode == "split"
        assert any(isinstance(mod, SplitBatchNorm) for mod in m.backbone_momentum.modules())
        m.train()
        loss, _ = m.training_step(random_images(8), None, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and int(m.queue_ptr) == 8
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- Shuffling BN across 2 processes
WORLD, LOCAL = 2, 4  # 2 gloo processes on CPU, 4 samples each


def _global_batch() -> torch.Tensor:
    return torch.randn(WORLD * LOCAL, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def _ddp_worker(rank: int, store: str) -> None:
    """One rank of the 2-process check (module level so torch.multiprocessing.spawn can pickle it)."""
    from ssl_core.methods.moco import batch_shuffle_ddp, batch_unshuffle_ddp, rank_mixing_shuffle

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        x_all = _global_batch()
        x = x_all[rank * LOCAL:(rank + 1) * LOCAL]
        # rank 0's permutation is the one used (broadcast): what rank_mixing_shuffle gives for seed 0
        perm = rank_mixing_shuffle(WORLD, LOCAL, torch.Generator().manual_seed(0), torch.device("cpu"))
        shards = perm.view(WORLD, LOCAL)
        for r in range(WORLD):  # each key batch: half from each rank, so never its query's BN batch
            assert sorted(int(i) // LOCAL for i in shards[r]) == [0, 0, 1, 1]

        # 1. the data movement: this rank receives its share of the globally permuted batch,
        # and the unshuffle returns every row to the rank and position it came from
        # (rank 1 passes a different generator: only rank 0's draw may count)
        shuffled, idx_unshuffle = batch_shuffle_ddp(x, torch.Generator().manual_seed(rank))
        assert torch.equal(shuffled, x_all[shards[rank]])
        assert torch.equal(idx_unshuffle, torch.argsort(perm))
        assert torch.equal(batch_unshuffle_ddp(shuffled, idx_unshuffle), x)

        # 2. the method: 'auto' picks the cross-process shuffle, and in train mode (batch
        # statistics) the keys equal a reference that runs each permuted shard through the
        # key encoder on its own and puts the keys back in the original order
        torch.manual_seed(0)  # the same weights on both ranks, as DDP would broadcast
        m = build_method(tiny_spec({"name": "moco", "queue_size": 16}, batch_size=LOCAL))
        assert m.shuffle_mode == "shuffle"
        assert not any(isinstance(mod, SplitBatchNorm) for mod in m.modules())
        m.train()
        keys = m.encode_key(x, torch.Generator().manual_seed(0))

        def encoder(v: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return F.normalize(m.projection_head_momentum(m.backbone_momentum(v)), dim=1)

        ref_shuffled = torch.cat([encoder(x_all[shards[r]]) for r in range(WORLD)])  # row i = key of sample perm[i]
        ref = torch.empty_like(ref_shuffled)
        ref[perm] = ref_shuffled
        assert torch.allclose(keys, ref[rank * LOCAL:(rank + 1) * LOCAL], atol=1e-5)
        # a no-op shuffle would normalise with this rank's own statistics: measurably different keys
        assert not torch.allclose(keys, encoder(x), atol=1e-3)

        # 3. the queue: each rank enqueues the keys of the whole (global) batch, identically
        m.queue.zero_()
        m.dequeue_and_enqueue(keys)
        assert int(m.queue_ptr) == WORLD * LOCAL
        gathered = [torch.empty_like(m.queue) for _ in range(WORLD)]
        dist.all_gather(gathered, m.queue)
        assert torch.equal(gathered[0], gathered[1])
        assert torch.allclose(m.queue[: WORLD * LOCAL], ref, atol=1e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_all_gather_shuffle_across_two_processes(tmp_path) -> None:
    """Shuffling BN as in the official code: 2 real gloo processes on CPU, all-gather shuffle/unshuffle."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)
