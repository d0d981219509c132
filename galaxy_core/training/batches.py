"""Training batches: which views each step trains on, and how they become augmented network input.

Every epoch draws its shuffling and augmentation from the seed and the epoch number alone, so a
resumed run sees the same batches, and any number of processes split the same global batches.
Batches are prepared in a background thread while the network trains on the previous one.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from galaxy_core.base.config import TrainConfig
from galaxy_core.data.cache import PackedDataset
from galaxy_core.data.dataset import Balanced, training_targets
from galaxy_core.data.geometry import (
    InputGeometry,
    compose_dihedral,
    crop_and_resize,
    crop_and_resize_nchw,
    dihedral_per_sample,
)
from galaxy_core.data.normalise import ChannelStats, normalise
from galaxy_core.model.tree import training_tree
from galaxy_core.training.distributed import Distributed


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffling, augmentation and dropout: a run resumed at ``epoch``
    draws exactly what an uninterrupted one would."""
    return seed * 100_003 + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def random_jitter(n: int, gen: torch.Generator, max_zoom: float = 0.1,
                  max_shift_px: float = 3.0) -> torch.Tensor:
    """Per-view (angle, zoom, shift x, shift y): any rotation, +-10% zoom, +-3 px shifts."""
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    return torch.stack([u[:, 0] * 2 * math.pi, 1 + max_zoom * (2 * u[:, 1] - 1),
                        max_shift_px * (2 * u[:, 2] - 1), max_shift_px * (2 * u[:, 3] - 1)], 1).float()


def jittered_crop(images_uint8: torch.Tensor, geometry: InputGeometry, jitter: torch.Tensor) -> torch.Tensor:
    """Like ``crop_and_resize``, then rotated, zoomed and shifted per view.

    A margin a quarter wider than the crop is resized at the same scale as the crop itself, and
    the network-size view is resampled from it, so with no jitter the result equals the plain
    crop (pixel centres coincide; only the outermost pixels differ, where the plain crop's resize
    filter is cut off); rotated corners that reach past the margin see the image mirrored.
    Galaxy Zoo CNNs (Dieleman et al. 2015) rely on such perturbations to stop a network
    memorising a few thousand galaxies.
    """
    side = images_uint8.shape[1]
    scale = geometry.input_size / geometry.crop
    margin = min(round(geometry.crop * 1.25 * scale), int(side * scale))
    margin -= (margin - geometry.input_size) % 2  # centred crops of the margin align only if this is even
    wide = InputGeometry(source_size=geometry.source_size, crop=round(margin / scale), input_size=margin,
                          pixel_scale=geometry.pixel_scale)
    x = crop_and_resize_nchw(images_uint8, wide)
    angle, zoom, dx, dy = jitter.unbind(1)
    ratio = geometry.input_size / margin / zoom
    cos, sin = torch.cos(angle) * ratio, torch.sin(angle) * ratio
    theta = torch.stack([torch.stack([cos, -sin, dx * 2 / margin], 1),
                         torch.stack([sin, cos, dy * 2 / margin], 1)], 1)
    size = geometry.input_size
    grid = F.affine_grid(theta, [x.shape[0], 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


LUMINANCE = (0.299, 0.587, 0.114)
"""ITU-R 601 weights: how a greyscale upload's one channel relates to the colour it came from."""


def random_colour(n: int, gen: torch.Generator, greyscale: float,
                  colour_jitter: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-view (greyscale?, per-channel gain): a ``greyscale`` share of views lose their colour,
    and every view's channels are scaled by gains within 1 +- ``colour_jitter`` (colour balance).
    None when neither is asked for, so such runs draw exactly what they drew before."""
    if greyscale <= 0 and colour_jitter <= 0:
        return None
    grey = torch.rand(n, generator=gen) < greyscale
    gains = 1 + colour_jitter * (2 * torch.rand(n, 3, generator=gen) - 1)
    return grey, gains


def recoloured(x: torch.Tensor, grey: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Views (n, 3, h, w) in [0, 1] with per-channel gains, then the greyscale ones turned to their
    luminance in all three channels, as a greyscale image is read; clipped to [0, 1]."""
    x = x * gains.to(x.dtype)[:, :, None, None]
    if grey.any():
        weights = torch.tensor(LUMINANCE, dtype=x.dtype)[None, :, None, None]
        luminance = (x * weights).sum(dim=1, keepdim=True).expand_as(x)
        x = torch.where(grey[:, None, None, None], luminance, x)
    return x.clamp(0, 1)


LOW_RES_FACTORS = (1.5, 2.0, 2.5, 3.0)
"""How many times coarser a low-resolution training view is seen."""


def random_low_res(n: int, gen: torch.Generator, share: float) -> torch.Tensor | None:
    """Per-view coarsening factor (1: as it is): a ``share`` of views get one of LOW_RES_FACTORS.
    None when not asked for, so such runs draw exactly what they drew before."""
    if share <= 0:
        return None
    chosen = torch.rand(n, generator=gen) < share
    factor = torch.tensor(LOW_RES_FACTORS)[torch.randint(0, len(LOW_RES_FACTORS), (n,), generator=gen)]
    return torch.where(chosen, factor, torch.ones(n))


def coarsened(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Views (n, 3, h, w) whose factor f > 1 are shrunk f times (antialiased) and enlarged back:
    a galaxy a few dozen pixels across in a wide-field image looks like this once the framer has
    enlarged it to a cutout's size."""
    size = x.shape[-1]
    out = x.clone()
    for f in torch.unique(factors).tolist():
        if f <= 1:
            continue
        where = factors == f
        small = F.interpolate(x[where], size=max(4, round(size / f)), mode="bilinear", antialias=True,
                              align_corners=False)
        out[where] = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return out


@dataclass
class BatchSource:
    """Training views (row, quarter turns) and how to turn them into network input."""

    dataset: PackedDataset
    views: Balanced
    stats: ChannelStats
    geometry: InputGeometry
    config: TrainConfig

    @property
    def tree_stems(self) -> tuple[str, ...]:
        tree = training_tree(self.config.tree_weight)
        return () if tree is None else tree.stems

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.views.rows) / self.config.batch_size)

    def batches(self, epoch: int, dist_info: Distributed) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Global batches are the same for any world size; each rank takes every world-th item."""
        gen = epoch_generator(self.config.seed, epoch)
        n, size = len(self.views.rows), self.config.batch_size
        perm = torch.randperm(n, generator=gen).numpy()
        steps = self.steps_per_epoch()
        perm = np.resize(perm, steps * size)
        flips = torch.randint(0, 8, (steps * size,), generator=gen)
        jitter = random_jitter(steps * size, gen, max_zoom=self.config.max_zoom) if self.config.jitter else None
        colour = random_colour(steps * size, gen, self.config.greyscale, self.config.colour_jitter)
        low_res = random_low_res(steps * size, gen, self.config.low_res)
        stems = self.tree_stems
        for step in range(steps):
            chunk = np.arange(step * size, (step + 1) * size)[dist_info.rank::dist_info.world]
            index = torch.from_numpy(chunk)  # this batch's draws from the epoch's augmentation
            picked = perm[chunk]
            rows = self.views.rows[picked]
            images = torch.from_numpy(self.dataset.images(rows))
            if jitter is None:
                x = crop_and_resize(images, self.geometry)
            else:
                x = jittered_crop(images, self.geometry, jitter[index])
            # The balancing turn and the random symmetry, composed and applied once to the small
            # network-size crop (they commute with a centred crop and resize), not to the cutout.
            symmetry = torch.from_numpy(self.views.rotations[picked])
            if self.config.augment:
                symmetry = compose_dihedral(flips[index], symmetry)
            x = dihedral_per_sample(x, symmetry)
            if low_res is not None:
                x = coarsened(x, low_res[index])
            if colour is not None:
                x = recoloured(x, *(part[index] for part in colour))
            x = normalise(x, self.stats)
            x = x.contiguous(memory_format=torch.channels_last)
            targets = torch.from_numpy(training_targets(self.dataset, rows, self.config.soft_labels,
                                                        self.config.aux_outputs, stems))
            yield x, targets


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Prepare the next batches in a thread while the current one trains."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        # Stop is heard before each batch is made, not after: a consumer that stops early (a
        # Stop, or a benchmark's few steps) waits for at most the batch in hand.
        try:
            while not stop.is_set():
                item = next(iterator, done)
                slots.put(item)
                if item is done:
                    return
        except BaseException as exc:  # surfaced in the consumer
            slots.put(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
