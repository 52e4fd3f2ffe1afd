"""Where the training loop's batches come from: uint8 (B, C, H, W) on the device, in epoch order.

The data order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``
(:func:`epoch_permutation`), so it needs no saved state and a resumed run reproduces it exactly.
Both sources yield the same batches in the same order (``drop_last``: contrastive losses want
full batches). Under torch.distributed every rank draws the same permutation and batch ``i`` of the
global batch size; rank ``r`` of ``W`` takes its ``r``-th share (``rank``/``world``), so the global
batch is that of a one-process run:

* :class:`TensorBatches` -- the whole (prepared) split as one tensor on the device, indexed per
  batch. STL-10's memory-mapped unlabeled split takes this path too (on CPU it stays a memmap view
  sliced per batch, the page cache holding it; on a GPU its 2.7 GB are copied to the device once).
  A method with ``epoch_repeats = K`` (Exemplar-CNN) has epochs of K x its prepared set: the
  permutation is over N*K, taken mod N.
* :class:`StreamingBatches` -- an image folder whose decoded tensor exceeds
  PRETEXTLAB_MAX_IN_MEMORY_BYTES (``ssl_core.data.streaming_samples``; 0 forces streaming):
  persistent DataLoader workers (PRETEXTLAB_LOADER_WORKERS, default one per core but one) decode
  each batch into pinned memory, copied with ``non_blocking=True``; an epoch-seeded batch sampler
  gives the in-memory order, and a mid-epoch resume starts at batch k without decoding the first k.
  A method whose ``prepare_data`` builds its training set from the whole split (Exemplar-CNN's seed
  selection) needs the in-memory path and refuses streaming.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ssl_core.data import DecodedImages, load_dataset, loader_workers, streaming_samples
from ssl_core.errors import SpecError
from ssl_core.methods.base import SSLMethod
from ssl_core.specs import PretrainSpec


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: stateless, so a resumed run reproduces it exactly."""
    g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Index lists of one epoch's batches (drop_last), from batch ``start`` on: set_epoch() before each
    iter(). Lives in the main process, so persistent DataLoader workers see the new epoch."""

    def __init__(self, seed: int, n: int, batch: int, rank: int = 0, world: int = 1):
        self.seed, self.n, self.batch, self.epoch, self.start = seed, n, batch, 0, 0
        self.share = slice(rank * batch // world, (rank + 1) * batch // world)  # this rank's part of a batch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        perm = epoch_permutation(self.seed, self.epoch, self.n)
        for i in range(self.start, self.n // self.batch):
            yield perm[i * self.batch:(i + 1) * self.batch][self.share].tolist()

    def __len__(self) -> int:
        return self.n // self.batch - self.start


class TensorBatches:
    """The prepared set held on the device; batch i of an epoch indexes it with the epoch's permutation.

    An epoch may visit the prepared set ``repeats`` times (Exemplar-CNN: K samples per surrogate class);
    the repeats are indices into the same tensors (taken mod N), never copies of the images."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | None, repeats: int, batch: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.images, self.targets, self.batch, self.seed = images, targets, batch, seed
        self.share = slice(rank * batch // world, (rank + 1) * batch // world)  # this rank's part of a batch
        self.n_prepared = int(images.shape[0])
        self.n = self.n_prepared * repeats  # samples per epoch

    def __len__(self) -> int:  # steps per epoch
        return self.n // self.batch

    def epoch(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        perm = epoch_permutation(self.seed, epoch, self.n).remainder_(self.n_prepared).to(self.images.device)
        for i in range(start, len(self)):
            idx = perm[i * self.batch:(i + 1) * self.batch][self.share]
            yield self.images[idx], (self.targets[idx] if self.targets is not None else None)

    def close(self) -> None:
        pass


class StreamingBatches:
    """Files decoded by DataLoader workers into pinned uint8 batches, then copied to the device
    (``non_blocking``: the copy overlaps the previous step). Same epoch order as TensorBatches."""

    def __init__(self, samples: list[tuple[str, int]], size: int, channels: int, batch: int, seed: int,
                 device: torch.device, workers: int, rank: int = 0, world: int = 1, full_image: bool = False):
        self.n, self.batch, self.device = len(samples), batch, device
        self.sampler = EpochBatchSampler(seed, self.n, batch, rank, world)
        self.loader = torch.utils.data.DataLoader(
            DecodedImages(samples, size, channels, full_image), batch_sampler=self.sampler, num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # the loader's base seed is drawn from this generator, not the global RNG (saved in checkpoints)
            generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.n // self.batch

    def epoch(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, None]]:
        self.sampler.set_epoch(epoch, start)
        for x, _ in self.loader:  # labels of a folder are not pretext targets
            yield x.to(self.device, non_blocking=True), None

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)  # the persistent workers' iterator
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


def data_source(spec: PretrainSpec, method: torch.nn.Module, device: torch.device, rank: int = 0,
                world: int = 1) -> TensorBatches | StreamingBatches:
    """In memory when the split fits (after the method's prepare_data), else streamed from disk; this
    rank's share of every global batch."""
    d = spec.data
    # an image folder with a storage size is kept whole and larger, for the augmentation to crop from
    size, channels, full = d.storage_size or d.resolved_image_size, d.resolved_channels, d.storage_size is not None
    samples = streaming_samples(d.dataset, d.resolved_split, path=d.path, image_size=size, channels=channels,
                                subset=d.subset, seed=spec.seed)
    if samples is None:
        ds = load_dataset(d.dataset, d.resolved_split, path=d.path, image_size=size, channels=channels,
                          subset=d.subset, seed=spec.seed, full_image=full)
        prep_gen = torch.Generator(device=device).manual_seed(spec.seed)  # fresh on resume: same result
        images, targets = method.prepare_data(ds.images.to(device), prep_gen)
        return TensorBatches(images, targets, int(getattr(method, "epoch_repeats", 1)), spec.batch_size, spec.seed,
                             rank, world)
    if type(method).prepare_data is not SSLMethod.prepare_data:
        raise SpecError(
            f"data: {d.path} is too big to hold in memory at {size} px (PRETEXTLAB_MAX_IN_MEMORY_BYTES), and "
            f"method {spec.method.name} builds its training set from the whole split in memory (prepare_data), "
            "so it cannot stream it; lower data.image_size or raise PRETEXTLAB_MAX_IN_MEMORY_BYTES")
    return StreamingBatches(samples, size, channels, spec.batch_size, spec.seed, device, loader_workers(), rank, world,
                            full)
