"""Per-channel statistics of the training images, and image <-> normalised tensor conversions.

The same preprocessing serves training (batched uint8 tensors from the cache) and prediction
(one PIL image): centre crop, resize, scale to [0, 1], subtract mean, divide by std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import resize_square


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation per RGB channel, in units of [0, 1] pixel values."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> "ChannelStats":
        return cls(tuple(map(float, values["mean"])), tuple(map(float, values["std"])))


@dataclass(frozen=True)
class InputGeometry:
    """How a cutout becomes network input: crop ``crop`` of ``source_size`` px, resize to ``size``."""

    source_size: int = 128
    crop: int = 96
    size: int = 64


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


def crop_and_resize(batch_uint8: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """uint8 NHWC (source_size square) -> float NCHW in [0, 1] at the network's input size."""
    x = batch_uint8
    side = x.shape[1]
    crop = min(round(geometry.crop * side / geometry.source_size), side)
    start = (side - crop) // 2
    x = x[:, start:start + crop, start:start + crop, :].permute(0, 3, 1, 2).float().div_(255.0)
    if crop != geometry.size:
        x = F.interpolate(x, size=(geometry.size, geometry.size), mode="bilinear",
                          antialias=True, align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def normalise(x01: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    mean = torch.tensor(stats.mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(stats.std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def denormalise(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    mean = torch.tensor(stats.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(stats.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * std + mean


def image_to_array(image: Image.Image, geometry: InputGeometry) -> np.ndarray:
    """Any RGB image -> uint8 HxWx3 framed like an SDSS cutout of ``source_size`` pixels."""
    return resize_square(image.convert("RGB"), geometry.source_size)


def image_to_tensor(image: Image.Image, stats: ChannelStats, geometry: InputGeometry) -> torch.Tensor:
    """One PIL image -> normalised float tensor (1, 3, size, size), as the network expects."""
    array = torch.from_numpy(image_to_array(image, geometry)).unsqueeze(0)
    return normalise(crop_and_resize(array, geometry), stats)


def tensor_to_image(tensor: torch.Tensor, stats: ChannelStats) -> Image.Image:
    """Normalised (3, H, W) or (1, 3, H, W) tensor -> PIL RGB image (inverse of normalisation)."""
    x = tensor.detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    pixels = denormalise(x, stats)[0].clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square (k % 4 quarter turns, then a flip if k >= 4)."""
    out = torch.rot90(x, k % 4, dims=(-2, -1))
    return out.flip(-1) if k >= 4 else out


def dihedral_per_sample(x: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``ks[i]`` to sample ``i`` (NCHW, square images)."""
    out = torch.empty_like(x)
    for k in torch.unique(ks).tolist():
        where = ks == k
        out[where] = dihedral(x[where], int(k))
    return out
