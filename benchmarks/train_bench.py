"""Training throughput: our packed-cache pipeline against a JPEG-decoding DataLoader reference.

Both train the same architecture with the same batch size, optimiser and loss; they differ only
in how batches are made. Ours is the real code path (``BatchSource`` batches, prefetched, fed to
``train_one_epoch``). The reference decodes each JPEG with PIL and augments it with torchvision
transforms in a standard ``Dataset``/``DataLoader``, every epoch, as most tutorials do.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from benchmarks.common import peak_rss_mb
from galaxy_core.base.config import CLASSES, TrainConfig
from galaxy_core.data.cache import PackedDataset
from galaxy_core.data.dataset import training_targets
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import ChannelStats, input_statistics
from galaxy_core.model.bundle import CARD_NAME, read_card
from galaxy_core.sources.folder import DatasetFolder
from galaxy_core.training.batches import BatchSource, prefetch
from galaxy_core.training.distributed import Distributed
from galaxy_core.training.train import new_model, open_training_data, train_one_epoch, training_loss

SETTING_KEYS = ("arch", "width", "depth", "input_size", "crop", "batch_size", "lr", "weight_decay",
                "label_smoothing", "aux_weight", "balance", "soft_labels", "augment", "jitter",
                "seed", "precision")


def shipped_settings(model_dir: Path | None) -> dict[str, Any]:
    """The settings the shipped model was trained with (its card), else TrainConfig defaults."""
    config = TrainConfig(Path("."), Path("."))
    if model_dir is not None and (Path(model_dir) / CARD_NAME).is_file():
        provenance = read_card(Path(model_dir)).provenance
        if provenance is not None:
            config = provenance.config
    return {key: getattr(config, key) for key in SETTING_KEYS}


@dataclass
class Trainer:
    """A network, AdamW and a constant learning rate, set up as ``train`` sets them up."""

    model: nn.Module
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig

    @classmethod
    def create(cls, config: TrainConfig, channels_last: bool) -> Trainer:
        """The network, AdamW and the loss as ``train`` sets them up (constant learning rate)."""
        model = new_model(config)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
        return cls(model, optimiser, scheduler, config)

    def step(self, x: torch.Tensor, targets: torch.Tensor) -> float:
        """The step ``train_one_epoch`` takes: forward (in the config's precision), the training
        loss, AdamW."""
        self.model.train()
        loss, _ = training_loss(self.model, x, targets, self.config)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.scheduler.step()
        return float(loss.detach())


@dataclass
class OurPipeline:
    config: TrainConfig
    dataset: PackedDataset
    source: BatchSource
    train_rows: np.ndarray
    stats: ChannelStats
    geometry: InputGeometry


def train_config(data_dir: Path, cache_root: Path, settings: dict[str, Any],
                 max_galaxies: int | None = None) -> TrainConfig:
    return TrainConfig(Path(data_dir), Path(cache_root) / "unused-out", cache_dir=Path(cache_root),
                       max_galaxies=max_galaxies, **settings)


def our_pipeline(data_dir: Path, cache_root: Path, settings: dict[str, Any],
                 max_galaxies: int | None = None) -> OurPipeline:
    """Cache, split, balance and channel statistics exactly as ``train`` prepares them."""
    config = train_config(data_dir, cache_root, settings, max_galaxies)
    dataset, plan = open_training_data(config, world=1)
    geometry = InputGeometry(source_size=dataset.source_size, crop=config.crop, input_size=config.input_size)
    stats = input_statistics(dataset, plan.split.train, geometry)
    source = BatchSource(dataset, plan.views, stats, geometry, config)
    return OurPipeline(config, dataset, source, plan.split.train, stats, geometry)


def train_steps(trainer: Trainer, pipe: OurPipeline, epoch: int, steps: int | None) -> int:
    """``train_one_epoch`` on our batches, stopped after ``steps`` steps (None: the whole epoch)."""
    stop = threading.Event()
    done = 0

    def on_batch(batch: int, batches: int, loss: float, accuracy: float) -> None:
        nonlocal done
        done = batch
        if steps is not None and batch >= steps:
            stop.set()

    train_one_epoch(trainer.model, pipe.source, trainer.optimiser, trainer.scheduler, epoch,
                    torch.device("cpu"), Distributed(), on_batch, stop)
    return done


class QuarterTurn:
    """A random multiple of 90 degrees: the rotations that are symmetries of a square cutout."""

    def __init__(self) -> None:
        self.choice = T.RandomChoice([T.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)])

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.choice(image)


class JpegDataset(Dataset):
    """The reference: open, decode and transform one JPEG per item, every epoch."""

    def __init__(self, paths: list[Path], targets: np.ndarray, transform: T.Compose):
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[i]) as image:
            x = self.transform(image.convert("RGB"))
        return x, torch.from_numpy(self.targets[i])


def reference_loader(pipe: OurPipeline, data_dir: Path, workers: int) -> DataLoader:
    """The same training galaxies and targets, read from the JPEG files."""
    rows = pipe.train_rows
    folder = DatasetFolder(data_dir)
    paths = [folder.root / rel for rel in pipe.dataset.index["image"].to_numpy()[rows]]
    targets = training_targets(pipe.dataset, rows, pipe.config.soft_labels, pipe.config.aux_outputs)
    transform = T.Compose([
        T.CenterCrop(pipe.geometry.crop),
        T.Resize(pipe.geometry.input_size),
        T.RandomHorizontalFlip(), T.RandomVerticalFlip(), QuarterTurn(),
        T.ToTensor(), T.Normalize(pipe.stats.mean, pipe.stats.std),
    ])
    return DataLoader(JpegDataset(paths, targets, transform), batch_size=pipe.config.batch_size,
                      shuffle=True, drop_last=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(pipe.config.seed))


def _take(iterator: Iterator, steps: int) -> Iterator:
    for _, item in zip(range(steps), iterator):
        yield item


def reference_steps(trainer: Trainer, loader: DataLoader, steps: int) -> int:
    done = 0
    for x, targets in _take(iter(loader), steps):
        trainer.step(x, targets)
        done += 1
    return done


def bench_train(data_dir: Path, cache_root: Path, settings: dict[str, Any], *, steps: int,
                blocks: int, reference_workers: int) -> dict[str, float]:
    """Images/s of both pipelines over the same number of steps, in alternating blocks."""
    pipe = our_pipeline(data_dir, cache_root, settings)
    batch = pipe.config.batch_size
    if steps > pipe.source.steps_per_epoch():
        raise ValueError(f"{steps} steps per block is more than an epoch of {pipe.source.steps_per_epoch()}")
    loader = reference_loader(pipe, data_dir, reference_workers)
    # The reference is a plain float32 loop; ours trains as the shipped model was trained.
    ours = Trainer.create(pipe.config, channels_last=True)
    reference = Trainer.create(dataclasses.replace(pipe.config, precision="fp32"), channels_last=False)
    train_steps(ours, pipe, epoch=1000, steps=2)  # first calls build the kernels: not timed
    reference_steps(reference, loader, 2)
    ours_s = reference_s = 0.0
    ours_n = reference_n = 0
    for block in range(blocks):
        start = time.perf_counter()
        reference_n += reference_steps(reference, loader, steps)
        reference_s += time.perf_counter() - start
        start = time.perf_counter()
        ours_n += train_steps(ours, pipe, epoch=block, steps=steps)
        ours_s += time.perf_counter() - start
    if ours_n != reference_n:
        raise RuntimeError(f"ran {ours_n} steps of ours but {reference_n} of the reference")
    out = {
        "train_batch_size": batch, "train_steps_each": ours_n,
        "train_images_per_s": ours_n * batch / ours_s,
        "train_reference_images_per_s": reference_n * batch / reference_s,
        "train_speedup_vs_reference": reference_s / ours_s,
        "train_reference_loader_workers": reference_workers,
        "train_precision": pipe.config.precision,
    }
    out.update(bench_batches_only(pipe, loader, steps=max(4, steps), blocks=blocks))
    return out


def bench_batches_only(pipe: OurPipeline, loader: DataLoader, *, steps: int, blocks: int) -> dict[str, float]:
    """Batch making alone, without the network: where the two pipelines actually differ."""
    ours_s = reference_s = 0.0
    ours_n = reference_n = 0
    for block in range(blocks):
        start = time.perf_counter()
        reference_n += sum(len(x) for x, _ in _take(iter(loader), steps))
        reference_s += time.perf_counter() - start
        start = time.perf_counter()
        batches = prefetch(pipe.source.batches(block, Distributed()))
        ours_n += sum(len(x) for x, _ in _take(batches, steps))
        batches.close()
        ours_s += time.perf_counter() - start
    return {"batches_images_per_s": ours_n / ours_s,
            "batches_reference_images_per_s": reference_n / reference_s,
            "batches_speedup_vs_reference": (ours_n / ours_s) / (reference_n / reference_s)}


def bench_step_options(config: TrainConfig, *, repeats: int, threads: tuple[int, ...]) -> dict[str, float]:
    """One training step on a fixed batch under different settings, interleaved.

    Measures memory format (channels-last against contiguous NCHW), intra-op thread count, and
    bfloat16 autocast against float32 (``--precision``), all else as ``config``.
    """
    size, batch = config.input_size, config.batch_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = torch.eye(len(CLASSES))[torch.arange(batch) % len(CLASSES)]
    if config.aux_outputs:
        targets = torch.cat([targets, torch.full((batch, config.aux_outputs), 0.5)], dim=1)
    variants: dict[str, tuple[Trainer, torch.Tensor, int]] = {}
    base_threads = torch.get_num_threads()
    cl = x.contiguous(memory_format=torch.channels_last)
    fp32 = dataclasses.replace(config, precision="fp32")
    bf16 = dataclasses.replace(config, precision="bf16")
    variants["channels_last"] = (Trainer.create(fp32, True), cl, base_threads)
    variants["contiguous"] = (Trainer.create(fp32, False), x, base_threads)
    variants["bf16_autocast"] = (Trainer.create(bf16, True), cl, base_threads)
    for n in threads:
        if n != base_threads:
            variants[f"threads_{n}"] = (Trainer.create(fp32, True), cl, n)

    def run(name: str) -> float:
        trainer, inputs, n_threads = variants[name]
        torch.set_num_threads(n_threads)
        start = time.perf_counter()
        trainer.step(inputs, targets)
        return time.perf_counter() - start

    try:
        for name in variants:
            run(name)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name in variants:
                times[name].append(run(name))
    finally:
        torch.set_num_threads(base_threads)
    median = {name: float(np.median(t)) for name, t in times.items()}
    median[f"threads_{base_threads}"] = median["channels_last"]
    out = {f"step_ms_{name}": 1000 * t for name, t in median.items()}
    out["channels_last_speedup"] = median["contiguous"] / median["channels_last"]
    out["bf16_autocast_speedup"] = median["channels_last"] / median["bf16_autocast"]
    return out


def epoch_seconds(data_dir: Path, cache_root: Path, settings: dict[str, Any],
                  galaxies: int | None) -> dict[str, float]:
    """One full training epoch on ``galaxies`` (a seeded subset), after two untimed warm-up steps."""
    pipe = our_pipeline(data_dir, cache_root, settings, max_galaxies=galaxies)
    setup_peak = peak_rss_mb()
    trainer = Trainer.create(pipe.config, channels_last=True)
    train_steps(trainer, pipe, epoch=1000, steps=2)
    start = time.perf_counter()
    steps = train_steps(trainer, pipe, epoch=0, steps=None)
    seconds = time.perf_counter() - start
    if steps != pipe.source.steps_per_epoch():
        raise RuntimeError(f"epoch ran {steps} of {pipe.source.steps_per_epoch()} steps")
    return {"seconds": seconds, "steps": steps, "views": len(pipe.source.views.rows),
            "galaxies": len(pipe.dataset) if galaxies is None else galaxies,
            "images_per_s": len(pipe.source.views.rows) / seconds, "setup_peak_rss_mb": setup_peak}
