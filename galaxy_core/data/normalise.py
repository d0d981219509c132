"""Per-channel statistics of the training images, and image <-> normalised tensor conversions.

The mean and standard deviation are measured on the training galaxies' network input (never
hard-coded) and stored in the model card, so prediction divides out exactly what training did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from galaxy_core.base import fields
from galaxy_core.base.config import ConfigError
from galaxy_core.data.cache import PackedDataset
from galaxy_core.data.geometry import InputGeometry, crop_and_resize, cutout_array


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation per RGB channel, in units of [0, 1] pixel values."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "normalisation.") -> ChannelStats:
        values = fields.section(values, path.rstrip("."))
        return cls(fields.numbers(values, "mean", path, length=3, low=0, high=1),
                   fields.numbers(values, "std", path, length=3, low=1e-4, high=1))


def compute_channel_stats(batches: Iterable[np.ndarray | torch.Tensor]) -> ChannelStats:
    """Exact mean/std over all pixels of uint8 NHWC or float [0,1] NCHW batches (float64 sums)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for batch in batches:
        x = torch.as_tensor(batch)
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).to(torch.float64) / 255.0
        else:
            x = x.to(torch.float64)
        total += x.sum(dim=(0, 2, 3)).numpy()
        total_sq += (x * x).sum(dim=(0, 2, 3)).numpy()
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError("no pixels to compute statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return ChannelStats(tuple(map(float, mean)), tuple(map(float, std)))


def input_statistics(dataset: PackedDataset, rows: np.ndarray, geometry: InputGeometry,
                     chunk: int = 512) -> ChannelStats:
    """The statistics of these galaxies as the network sees them (cropped and resized), read a
    chunk at a time: the numbers a model's card stores."""
    return compute_channel_stats(crop_and_resize(torch.from_numpy(dataset.images(rows[i:i + chunk])), geometry)
                                 for i in range(0, len(rows), chunk))


def normalise(x01: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    mean = torch.tensor(stats.mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(stats.std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def denormalise(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    mean = torch.tensor(stats.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(stats.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * std + mean


def image_to_tensor(image: Image.Image, stats: ChannelStats, geometry: InputGeometry) -> torch.Tensor:
    """One PIL image -> normalised float tensor (1, 3, size, size), as the network expects."""
    array = torch.from_numpy(cutout_array(image, geometry)).unsqueeze(0)
    return normalise(crop_and_resize(array, geometry), stats)


def tensor_to_image(tensor: torch.Tensor, stats: ChannelStats) -> Image.Image:
    """Normalised (3, H, W) or (1, 3, H, W) tensor -> PIL RGB image (inverse of normalisation)."""
    x = tensor.detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    pixels = denormalise(x, stats)[0].clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


@dataclass(frozen=True)
class PixelStatistics:
    """Per-channel mean/std in [0, 1] units and 8-bit histograms, over ``images`` galaxies."""

    images: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bin_edges: np.ndarray
    counts: np.ndarray  # (3, bins): R, G, B


def pixel_statistics(dataset: PackedDataset, max_images: int = 2000, bins: int = 32,
                     seed: int = 0, chunk: int = 256) -> PixelStatistics:
    """Statistics of a seeded sample of the packed cache: what normalisation will divide out."""
    if not 1 <= bins <= 256:
        raise ConfigError(f"bins must be between 1 and 256, got {bins}")
    n = len(dataset)
    rows = np.arange(n)
    if n > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
    per_value = np.zeros((3, 256), dtype=np.int64)
    batches = []
    for start in range(0, len(rows), chunk):
        batch = dataset.images(rows[start:start + chunk])
        for c in range(3):
            per_value[c] += np.bincount(batch[..., c].ravel(), minlength=256)
        batches.append(batch)
    stats = compute_channel_stats(batches)
    edges = np.linspace(0, 256, bins + 1)
    which = np.minimum((np.arange(256) * bins) // 256, bins - 1)
    counts = np.stack([np.bincount(which, weights=per_value[c], minlength=bins) for c in range(3)])
    return PixelStatistics(len(rows), stats.mean, stats.std, edges, counts.astype(np.int64))
