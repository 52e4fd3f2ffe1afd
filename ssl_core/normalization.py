"""The per-channel mean/std a dataset is normalised with: one function for training, the kNN
monitor, evaluation and the exported backbone's metadata (torch-free)."""

from __future__ import annotations

from ssl_core.specs import DATASETS


def dataset_stats(dataset: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's per-channel mean and std for images read with ``channels`` channels.

    The native statistics when the channel counts agree; otherwise the first channel's, repeated
    to ``channels``: a grayscale set read as RGB (``data.channels: 3``) repeats its one value, an
    RGB set read as grayscale (``data.channels: 1``) keeps one value.
    """
    info = DATASETS[dataset]
    mean, std = tuple(info.mean), tuple(info.std)
    if len(mean) != channels:
        mean, std = mean[:1] * channels, std[:1] * channels
    return mean, std
