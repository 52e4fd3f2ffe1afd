"""Jigsaw permutation sets (Noroozi & Favaro, ECCV 2016, Algorithm 1).

Kept apart from the method so the greedy search (numpy only) can be tested and reused
without building a model; ``ssl_core.methods.jigsaw`` re-exports both functions.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=4)
def _all_permutations(tiles: int) -> np.ndarray:
    """All ``tiles!`` permutations, (tiles!, tiles) uint8, in lexicographic order."""
    return np.array(list(itertools.permutations(range(tiles))), dtype=np.uint8)


@lru_cache(maxsize=16)
def _greedy(count: int, tiles: int, seed: int) -> np.ndarray:
    perms = _all_permutations(tiles)
    n_all = perms.shape[0]
    # one_hot[t * tiles + v] marks the permutations with value v at position t, so the number
    # of positions where a row agrees with p is a sum of `tiles` boolean rows: O(tiles * n_all)
    # per step, no (count x n_all x tiles) tensor.
    one_hot = np.zeros((tiles * tiles, n_all), dtype=np.uint8)
    for t in range(tiles):
        one_hot[t * tiles + perms[:, t].astype(np.int64), np.arange(n_all)] = 1
    # D_bar_k = tiles * |chosen| - (agreements of k with the chosen set), so the argmax of
    # D_bar is the argmin of the summed agreements; a chosen permutation is pushed far above
    # any reachable sum so it is never picked again.
    agree_sum = np.zeros(n_all, dtype=np.int32)
    chosen = np.empty(count, dtype=np.int64)
    j = int(np.random.default_rng(seed).integers(n_all))  # Algorithm 1: j ~ U[1, 9!]
    for i in range(count):
        chosen[i] = j
        for t in range(tiles):  # positions where each row agrees with perms[j]
            agree_sum += one_hot[t * tiles + perms[j, t]]
        agree_sum[j] = 1 << 30
        j = int(np.argmin(agree_sum))  # the first one on ties
    return perms[chosen]


def make_permutations(count: int, tiles: int = 9, seed: int = 0) -> torch.Tensor:
    """The maximal-Hamming-distance permutation set of Noroozi & Favaro (2016), Algorithm 1.

    Start from a random permutation (drawn with ``seed``), then repeatedly add the one,
    among all ``tiles!`` not chosen yet, with the largest average Hamming distance to the
    chosen set. Returns a LongTensor (count, tiles) of unique rows; deterministic for a
    seed and cached. 1000 of the 362880 permutations of 9 tiles take about a second.
    """
    if not 1 <= count <= math.factorial(tiles):
        raise ValueError(f"count must be in [1, {tiles}!], got {count}")
    return torch.from_numpy(_greedy(count, tiles, seed).astype(np.int64))


def permutation_stats(perms: torch.Tensor) -> dict[str, float]:
    """Minimum and mean pairwise Hamming distance of a permutation set (P, tiles), P >= 2.

    Hamming(a, b) = tiles - agreements(a, b), and the agreements of all pairs are one
    (P, tiles^2) one-hot matrix product: (P, P) ints, no (P, P, tiles) array.
    """
    p = perms.cpu().numpy().astype(np.int64)
    count, tiles = p.shape
    if count < 2:
        raise ValueError(f"permutation_stats needs at least 2 permutations, got {count}")
    one_hot = np.zeros((count, tiles * tiles), dtype=np.int32)
    one_hot[np.arange(count)[:, None], np.arange(tiles) * tiles + p] = 1
    d = tiles - one_hot @ one_hot.T  # (P, P) Hamming distances
    off = ~np.eye(count, dtype=bool)
    return {"min_hamming": float(d[off].min()), "mean_hamming": float(d[off].mean())}
