"""How an image becomes the network's input square, and the 8 symmetries of that square.

One ``InputGeometry`` (stored in the model card) drives every path: batched uint8 cutouts from
the cache during training, uploaded photos at prediction time, and the "what the model sees"
view the app draws, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from galaxy_core.base import fields
from galaxy_core.base.config import CUTOUT_SIZE, PIXEL_SCALE
from galaxy_core.sources.images import resize_square


@dataclass(frozen=True)
class InputGeometry:
    """Crop the central ``crop`` pixels of a ``source_size`` cutout (``pixel_scale`` arcsec per
    pixel) and resize them to ``input_size`` pixels."""

    source_size: int = CUTOUT_SIZE
    crop: int = 96
    input_size: int = 64
    pixel_scale: float = PIXEL_SCALE

    def __post_init__(self) -> None:
        if not 1 <= self.crop <= self.source_size:
            raise fields.FieldError(f"input.crop must be between 1 and source_size {self.source_size}, "
                                    f"got {self.crop}")

    def to_dict(self) -> dict[str, Any]:
        return {"source_size": self.source_size, "crop": self.crop, "input_size": self.input_size,
                "pixel_scale": self.pixel_scale}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "input.") -> InputGeometry:
        values = fields.section(values, path.rstrip("."))
        return cls(source_size=fields.integer(values, "source_size", path, low=8, high=2048),
                   crop=fields.integer(values, "crop", path, low=8, high=2048),
                   input_size=fields.integer(values, "input_size", path, low=8, high=512),
                   pixel_scale=fields.number(values, "pixel_scale", path, low=0.01, high=10))


def cutout_array(image: Image.Image, geometry: InputGeometry) -> np.ndarray:
    """Any RGB image -> uint8 HxWx3 framed like an SDSS cutout of ``source_size`` pixels."""
    return resize_square(image.convert("RGB"), geometry.source_size)


def crop_and_resize(batch_uint8: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """uint8 NHWC (source_size square) -> float NCHW in [0, 1] at the network's input size,
    channels-last in memory (the network's format)."""
    return crop_and_resize_nchw(batch_uint8, geometry).contiguous(memory_format=torch.channels_last)


def crop_and_resize_nchw(batch_uint8: torch.Tensor, geometry: InputGeometry) -> torch.Tensor:
    """``crop_and_resize``, contiguous NCHW in memory: the antialiased resize is the same to the bit
    and about 1.4x faster in this layout than channels-last on a CPU (benchmarks/README.md)."""
    x = batch_uint8
    side = x.shape[1]
    crop = min(round(geometry.crop * side / geometry.source_size), side)
    start = (side - crop) // 2
    x = x[:, start:start + crop, start:start + crop, :].permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    if crop != geometry.input_size:
        x = F.interpolate(x, size=(geometry.input_size, geometry.input_size), mode="bilinear",
                          antialias=True, align_corners=False)
    return x


def model_view(image: Image.Image, geometry: InputGeometry) -> Image.Image:
    """What the network sees of ``image``, as an RGB picture at its input size (for overlays)."""
    x = crop_and_resize(torch.from_numpy(cutout_array(image, geometry)).unsqueeze(0), geometry)
    pixels = x[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(pixels, "RGB")


SYMMETRIES = 8
"""The symmetries of the square: 4 quarter turns, each with or without a mirror."""


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square (k % 4 quarter turns, then a flip if k >= 4)."""
    out = torch.rot90(x, k % 4, dims=(-2, -1))
    return out.flip(-1) if k >= 4 else out


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of ``dihedral(x, k)``: a map computed on the k-th view, back in the image's frame."""
    x = x.flip(-1) if k >= 4 else x
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def dihedral_per_sample(x: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Apply symmetry ``ks[i]`` to sample ``i`` (NCHW, square images)."""
    out = torch.empty_like(x)
    for k in torch.unique(ks).tolist():
        where = ks == k
        out[where] = dihedral(x[where], int(k))
    return out


def compose_dihedral(k: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """The symmetry index of ``dihedral(dihedral(x, quarter_turns), k)`` for turns in 0..3."""
    return (k % 4 + quarter_turns) % 4 + 4 * (k >= 4)
