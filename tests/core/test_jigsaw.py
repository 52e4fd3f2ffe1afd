"""Jigsaw: the greedy permutation set (Noroozi & Favaro 2016, Algorithm 1) and the tiling."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch

from ssl_core.methods.jigsaw import Jigsaw, make_permutations, normalize_tiles, permutation_stats
from ssl_core.registry import build_method

from methods_testkit import one_thread, tiny_spec  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _algorithm1_literal(count: int, tiles: int, seed: int) -> list[tuple[int, ...]]:
    """Algorithm 1 written out: P_all lexicographic, j ~ U, then argmax of the summed Hamming distance."""
    p_all = list(itertools.permutations(range(tiles)))
    j = int(np.random.default_rng(seed).integers(len(p_all)))
    chosen: list[tuple[int, ...]] = []
    for _ in range(count):
        chosen.append(p_all.pop(j))
        d_bar = [sum(sum(a != b for a, b in zip(p, c)) for c in chosen) for p in p_all]
        j = int(np.argmax(d_bar)) if p_all else -1
    return chosen


@pytest.mark.parametrize("tiles,count,seed", [(4, 10, 0), (5, 30, 3), (6, 40, 7)])
def test_greedy_matches_literal_algorithm_1(tiles: int, count: int, seed: int) -> None:
    got = [tuple(r) for r in make_permutations(count, tiles=tiles, seed=seed).tolist()]
    assert got == _algorithm1_literal(count, tiles, seed)


def test_permutation_set_properties() -> None:
    a = make_permutations(100, seed=0)
    assert a.dtype == torch.long and a.shape == (100, 9)
    assert len({tuple(r) for r in a.tolist()}) == 100  # unique rows
    assert all(sorted(r) == list(range(9)) for r in a.tolist())  # each row a permutation
    assert torch.equal(a, make_permutations(100, seed=0))  # deterministic
    assert not torch.equal(a, make_permutations(100, seed=1))  # seed matters
    stats = permutation_stats(a)
    assert stats["min_hamming"] >= 2
    # paper Table (100 permutations): average Hamming distance 8.08
    assert stats["mean_hamming"] == pytest.approx(8.08, abs=0.01)
    g = torch.Generator().manual_seed(0)
    random_set = torch.stack([torch.randperm(9, generator=g) for _ in range(100)])
    assert stats["mean_hamming"] > permutation_stats(random_set)["mean_hamming"] + 0.03
    with pytest.raises(ValueError):
        make_permutations(25, tiles=4)


def test_thousand_permutations_like_the_paper() -> None:
    perms = make_permutations(1000)
    assert len({tuple(r) for r in perms.tolist()}) == 1000
    stats = permutation_stats(perms)
    assert stats["min_hamming"] >= 2 and stats["mean_hamming"] == pytest.approx(8.00, abs=0.02)


def _coordinate_image(batch: int, side: int) -> torch.Tensor:
    rows = torch.arange(side, dtype=torch.float32).view(side, 1).expand(side, side)
    cols = torch.arange(side, dtype=torch.float32).view(1, side).expand(side, side)
    return torch.stack([rows, cols, rows * 0]).expand(batch, 3, side, side).contiguous()


@pytest.mark.parametrize("channel_jitter", [0, 2])
def test_tiles_come_from_their_cells(channel_jitter: int) -> None:
    spec = tiny_spec({"name": "jigsaw", "num_permutations": 10, "tile_dim": 16, "hidden_dim": 32,
                      "channel_jitter": channel_jitter})
    method: Jigsaw = build_method(spec)
    cell, t = method.cell, method.tile_size
    assert (cell, t) == (10, 9)  # 32 px: 10 px cells, round(10 * 64 / 75) = 9 px tiles
    x = _coordinate_image(64, 32)
    tiles = method.make_tiles(x, torch.Generator().manual_seed(0))
    assert tiles.shape == (64, 9, 3, t, t)
    top, left = tiles[:, :, 0, 0, 0], tiles[:, :, 1, 0, 0]  # (B, 9) corners of channels 0 and 1
    cell_row = torch.arange(9) // 3
    cell_col = torch.arange(9) % 3
    # the crop origin is in [0, 32 - 30]; a tile starts in [origin + r*cell, origin + r*cell + cell - t]
    slack = 2 + (cell - t) + channel_jitter
    assert ((top - cell_row * cell) >= -channel_jitter).all() and ((top - cell_row * cell) <= slack).all()
    assert ((left - cell_col * cell) >= -channel_jitter).all() and ((left - cell_col * cell) <= slack).all()
    if channel_jitter:
        # the channels of one tile are shifted independently, by at most channel_jitter each way
        y = torch.arange(32, dtype=torch.float32).view(1, 1, 32, 1).expand(64, 3, 32, 32).contiguous()
        ty = method.make_tiles(y, torch.Generator().manual_seed(0))[:, :, :, 0, 0]  # (B, 9, 3) top row per channel
        spread = ty.max(dim=2).values - ty.min(dim=2).values
        assert spread.max() > 0 and spread.max() <= 2 * channel_jitter


def test_shuffle_applies_the_labelled_permutation() -> None:
    method: Jigsaw = build_method(tiny_spec({"name": "jigsaw", "num_permutations": 10, "tile_dim": 16, "hidden_dim": 32}))
    tiles = torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1, 1).expand(5, 9, 1, 2, 2).contiguous()
    out, labels = method.shuffle(tiles, torch.Generator().manual_seed(0))
    for b in range(5):
        assert out[b, :, 0, 0, 0].long().tolist() == method.permutations[labels[b]].tolist()


def test_tiles_normalised_on_their_own() -> None:
    t = torch.rand(2, 9, 3, 6, 6) * 5 + 3
    n = normalize_tiles(t)
    assert n.mean(dim=(-2, -1)).abs().max() < 1e-5
    assert (n.std(dim=(-2, -1)) - 1).abs().max() < 0.02
    assert torch.isfinite(normalize_tiles(torch.ones(1, 9, 1, 4, 4))).all()


def test_permutation_stats_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    for tiles, count in [(9, 50), (4, 6), (9, 2)]:
        perms = torch.stack([torch.randperm(tiles, generator=g) for _ in range(count)])
        pairs = [sum(int(a != b) for a, b in zip(perms[i].tolist(), perms[j].tolist()))
                 for i in range(count) for j in range(count) if i != j]
        stats = permutation_stats(perms)
        assert stats["min_hamming"] == min(pairs)
        assert stats["mean_hamming"] == pytest.approx(sum(pairs) / len(pairs))
    with pytest.raises(ValueError):
        permutation_stats(make_permutations(1))


def test_method_reports_permutation_stats_at_construction(caplog) -> None:
    spec = tiny_spec({"name": "jigsaw", "num_permutations": 100, "tile_dim": 16, "hidden_dim": 32})
    with caplog.at_level(logging.INFO, logger="pretextlab.jigsaw"):
        method: Jigsaw = build_method(spec)
    assert method.permutation_stats == permutation_stats(method.permutations)
    assert method.permutation_stats["min_hamming"] == 2.0  # as in the paper for 100
    assert method.permutation_stats["mean_hamming"] == pytest.approx(8.08, abs=0.01)
    records = [r for r in caplog.records if r.name == "pretextlab.jigsaw"]
    assert len(records) == 1
    assert "P=100" in records[0].getMessage() and "min Hamming 2" in records[0].getMessage()
    # constants are reported once, not repeated in every step's metrics
    _, metrics = build_method(tiny_spec({"name": "jigsaw", "num_permutations": 10, "tile_dim": 16, "hidden_dim": 32},
                                        batch_size=4)).training_step(
        torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), None, torch.Generator().manual_seed(0))
    assert set(metrics) == {"pretext_acc"}
