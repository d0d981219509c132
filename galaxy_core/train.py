"""The training loop: seeded, resumable, data-parallel under torchrun, with progress callbacks.

Shape follows torchvision's reference script: ``train_one_epoch``, ``evaluate_split``, ``train``.
Every epoch draws its shuffling and augmentation from ``seed`` and the epoch number alone, and a
checkpoint is written at each epoch end, so a stopped run resumes to the same result.
"""

from __future__ import annotations

import math
import os
import platform
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .bundle import save_bundle
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, no_lock, output_lock, save_checkpoint
from .config import CLASSES, ConfigError, TrainConfig
from .dataset import (
    Balanced,
    ImageRows,
    PackedDataset,
    Split,
    balance,
    load_catalogue_with_images,
    split_dataset,
)
from .distributed import Distributed, pick_device, setup_distributed
from .evaluate import held_out_metrics
from .inference import combine_views, predict_probs, view_log_probs
from .metrics import misclassified
from .model import build_model
from .model_card import write_model_card
from .normalise import (
    ChannelStats,
    InputGeometry,
    compute_channel_stats,
    crop_and_resize,
    dihedral_per_sample,
    normalise,
)
from .precision import autocast


@dataclass
class TrainProgress:
    """One event for the CLI's progress bar or the app's live charts."""

    phase: str
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    loss: float | None = None
    accuracy: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""
    history: list[dict] = field(default_factory=list)


@dataclass
class TrainResult:
    out_dir: Path
    stopped: bool
    epochs_done: int
    history: list[dict]
    metrics: dict | None
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    split_sizes: dict[str, int]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def training_loss(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                  config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft cross-entropy on the classes, plus (with ``aux_weight``) binary cross-entropy on the
    smooth and features vote fractions: the fractions say how far a galaxy is from the 0.8
    threshold, which the class label alone does not."""
    with autocast(x.device, config.precision):
        outputs = model(x)
    if config.aux_weight <= 0:
        return soft_cross_entropy(outputs, targets, config.label_smoothing), outputs
    logits, aux = outputs
    k = len(CLASSES)
    loss = soft_cross_entropy(logits, targets[:, :k], config.label_smoothing)
    aux_loss = F.binary_cross_entropy_with_logits(aux.float(), targets[:, k:])
    return loss + config.aux_weight * aux_loss, logits


def one_cycle_schedule(optimiser: torch.optim.Optimizer, total_steps: int,
                       warmup: float = 0.25) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/25 over the first quarter, then cosine decay towards zero (the
    one-cycle shape); a pure function of the step, so it works for any number of steps and a
    checkpoint only needs the step count."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return 0.04 + 0.96 * step / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


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
    scale = geometry.size / geometry.crop
    margin = min(round(geometry.crop * 1.25 * scale), int(side * scale))
    margin -= (margin - geometry.size) % 2  # centred crops of the margin align only if this is even
    wide = InputGeometry(source_size=geometry.source_size, crop=round(margin / scale), size=margin)
    x = crop_and_resize(images_uint8, wide)
    angle, zoom, dx, dy = jitter.unbind(1)
    ratio = geometry.size / margin / zoom
    cos, sin = torch.cos(angle) * ratio, torch.sin(angle) * ratio
    theta = torch.stack([torch.stack([cos, -sin, dx * 2 / margin], 1),
                         torch.stack([sin, cos, dy * 2 / margin], 1)], 1)
    grid = F.affine_grid(theta, [x.shape[0], 3, geometry.size, geometry.size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def compose_dihedral(k: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """The symmetry index of ``dihedral(dihedral(x, quarter_turns), k)`` for turns in 0..3."""
    return (k % 4 + quarter_turns) % 4 + 4 * (k >= 4)


@dataclass
class BatchSource:
    """Training views (row, quarter turns) and how to turn them into network input."""

    dataset: PackedDataset
    views: Balanced
    stats: ChannelStats
    geometry: InputGeometry
    config: TrainConfig

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
        jitter = random_jitter(steps * size, gen) if self.config.jitter else None
        for step in range(steps):
            chunk = np.arange(step * size, (step + 1) * size)[dist_info.rank::dist_info.world]
            picked = perm[chunk]
            rows = self.views.rows[picked]
            images = torch.from_numpy(self.dataset.images(rows))
            if jitter is None:
                x = crop_and_resize(images, self.geometry)
            else:
                x = jittered_crop(images, self.geometry, jitter[torch.from_numpy(chunk)])
            # The balancing turn and the random symmetry, composed and applied once to the small
            # network-size crop (they commute with a centred crop and resize), not to the cutout.
            symmetry = torch.from_numpy(self.views.rotations[picked])
            if self.config.augment:
                symmetry = compose_dihedral(flips[chunk], symmetry)
            x = normalise(dihedral_per_sample(x, symmetry), self.stats)
            x = x.contiguous(memory_format=torch.channels_last)
            targets = torch.from_numpy(self.dataset.targets(rows, self.config.soft_labels,
                                                            with_fractions=self.config.aux_weight > 0))
            yield x, targets


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Prepare the next batches in a thread while the current one trains."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                slots.put(item)
            slots.put(done)
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


def train_one_epoch(model: nn.Module, source: BatchSource, optimiser: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, device: torch.device,
                    dist_info: Distributed, on_batch: Callable[[int, int, float, float], None],
                    stop: threading.Event | None) -> tuple[float, float, bool]:
    """One pass over the training views; returns (loss, accuracy, stopped)."""
    model.train()
    torch.manual_seed(source.config.seed * 100_003 + epoch)
    loss_sum = correct = seen = 0.0
    steps = source.steps_per_epoch()
    for step, (x, targets) in enumerate(prefetch(source.batches(epoch, dist_info))):
        if stop is not None and stop.is_set():
            return loss_sum / max(seen, 1), correct / max(seen, 1), True
        x, targets = x.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss, logits = training_loss(model, x, targets, source.config)
        targets = targets[:, :len(CLASSES)]
        n = x.shape[0]
        # DDP averages gradients over ranks; weighting each rank's mean by its share of the
        # global batch makes that average the global batch's mean however the items split.
        share = n * dist_info.world / source.config.batch_size
        optimiser.zero_grad(set_to_none=True)
        (loss * share if share != 1 else loss).backward()
        optimiser.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * n
        correct += float((logits.argmax(1) == targets.argmax(1)).sum())
        seen += n
        on_batch(step + 1, steps, loss_sum / seen, correct / seen)
    loss_sum, correct, seen = dist_info.sum([loss_sum, correct, seen], device)
    return loss_sum / max(seen, 1), correct / max(seen, 1), False


def evaluate_split(model: nn.Module, dataset: PackedDataset, rows: np.ndarray, stats: ChannelStats,
                   geometry: InputGeometry, device: torch.device, dist_info: Distributed,
                   tta: bool = False, batch_size: int = 256, precision: str = "fp32") -> tuple[float, float]:
    """Loss and accuracy on un-augmented galaxies (hard labels), reduced across processes."""
    model.eval()
    mine = rows[dist_info.rank::dist_info.world]
    probs = predict_probs(model, ImageRows(dataset, mine), stats, geometry, tta=tta, batch_size=batch_size,
                          precision=precision)
    labels = dataset.labels[mine]
    nll = float(-np.log(np.clip(probs[np.arange(len(mine)), labels], 1e-12, 1)).sum()) if len(mine) else 0.0
    correct = float((probs.argmax(1) == labels).sum()) if len(mine) else 0.0
    nll, correct, n = dist_info.sum([nll, correct, float(len(mine))], device)
    return nll / max(n, 1), correct / max(n, 1)


def fit_temperature(log_probs: torch.Tensor, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017) on validation galaxies: one scalar, accuracy unchanged."""
    logits = log_probs.double()
    target = torch.as_tensor(labels)
    grid = np.exp(np.linspace(np.log(0.3), np.log(5.0), 121))
    losses = [float(F.cross_entropy(logits / t, target)) for t in grid]
    return float(grid[int(np.argmin(losses))])


def prepare_data(config: TrainConfig, dist_info: Distributed,
                 report: Callable[[str], None]) -> tuple[PackedDataset, Split, Balanced]:
    """Cache, split by galaxy before any augmentation, then balance the training galaxies.

    Every process opens the cache itself, so each machine may keep its own copy; the cache's
    build lock makes the processes sharing one cache folder decode the images only once, with no
    collective call (whose timeout a long build would overrun) while they wait.
    """
    report("building the image cache")
    dataset = PackedDataset.open(config.data_dir, cache_root=config.cache_dir)
    split, views = plan_split(dataset.ids, dataset.labels, config, dist_info.world)
    return dataset, split, views


def plan_split(ids: np.ndarray, labels: np.ndarray, config: TrainConfig,
               world: int) -> tuple[Split, Balanced]:
    """Subset, split and balance galaxies by id and class index; raises if they cannot train."""
    rows = np.arange(len(ids))
    if config.max_galaxies is not None and config.max_galaxies < len(rows):
        rows = np.sort(np.random.default_rng(config.seed).choice(rows, config.max_galaxies, replace=False))
    local = split_dataset(ids[rows], labels[rows], config.dataset)
    split = Split(rows[local.train], rows[local.val], rows[local.test])
    if len(split.val) == 0 or len(split.test) == 0:
        raise ConfigError(f"{len(rows)} galaxies are too few to hold out validation and test "
                          "galaxies; download more")
    if config.balance:
        views = balance(split.train, labels, config.seed, target=config.balance_target)
    else:
        counts = dict(zip(CLASSES, map(int, np.bincount(labels[split.train], minlength=3))))
        missing = [c for c, n in counts.items() if n == 0]
        if missing:
            raise ConfigError(f"class(es) {', '.join(missing)} have no training examples")
        views = Balanced(split.train, np.zeros(len(split.train), np.int64), counts, counts)
    if config.batch_size > len(views.rows):
        raise ConfigError(f"batch size {config.batch_size} is larger than the {len(views.rows)} "
                          "training views; lower it or use more galaxies")
    if config.batch_size < 2 * world:
        raise ConfigError(f"batch size {config.batch_size} is too small for {world} processes")
    return split, views


def check_data(config: TrainConfig) -> None:
    """The split and batch checks on the catalogue alone, so settings the data cannot satisfy
    fail in a second, before the image cache is built or the output folder is touched."""
    frame = load_catalogue_with_images(Path(config.data_dir))
    labels = frame["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    plan_split(frame["id"].to_numpy(str), labels, config, int(os.environ.get("WORLD_SIZE", "1")))


def train(config: TrainConfig, progress: Callable[[TrainProgress], None] | None = None,
          stop: threading.Event | None = None, command: str | None = None) -> TrainResult:
    """Train, checkpoint every epoch, evaluate on the test galaxies and save a model bundle.

    Under torchrun the same call trains data-parallel: each process takes its share of every
    global batch, and only rank 0 reads and writes the output folder.
    """
    config.validate()
    check_data(config)
    device = pick_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    dist_info = setup_distributed(device)
    try:
        return _train(config, device, dist_info, progress, stop, command)
    finally:
        dist_info.close()


def _train(config: TrainConfig, device: torch.device, dist_info: Distributed,
           progress: Callable[[TrainProgress], None] | None, stop: threading.Event | None,
           command: str | None) -> TrainResult:
    out_dir = Path(config.out_dir)
    emit = progress if (progress is not None and dist_info.main) else (lambda event: None)
    start = time.monotonic()

    def report(message: str) -> None:
        emit(TrainProgress("prepare", epochs=config.epochs, message=message,
                           elapsed_s=time.monotonic() - start))

    lock = output_lock(out_dir) if dist_info.main else no_lock()
    with lock:
        dataset, split, views = prepare_data(config, dist_info, report)
        report(f"training on {dist_info.world} process{'es' if dist_info.world > 1 else ''} "
               f"({dist_info.backend})")
        geometry = InputGeometry(source_size=dataset.image_size, crop=config.crop, size=config.image_size)
        report("computing channel statistics")
        stats = compute_channel_stats(
            crop_and_resize(torch.from_numpy(dataset.images(split.train[i:i + 512])), geometry)
            for i in range(0, len(split.train), 512))
        torch.manual_seed(config.seed)
        model = build_model(config.arch, len(CLASSES), config.width, config.depth,
                            aux_outputs=2 if config.aux_weight > 0 else 0).to(device)
        model = model.to(memory_format=torch.channels_last)
        source = BatchSource(dataset, views, stats, geometry, config)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = one_cycle_schedule(optimiser, config.epochs * source.steps_per_epoch())
        history: list[dict] = []
        start_epoch = 0
        checkpoint = load_checkpoint(out_dir / CHECKPOINT_NAME, config) if dist_info.main else None
        checkpoint = dist_info.from_main(checkpoint)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimiser.load_state_dict(checkpoint["optimiser"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            history, start_epoch = checkpoint["history"], checkpoint["epoch"]
            report(f"resuming from epoch {start_epoch}")
        net = model
        if dist_info.world > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        steps = source.steps_per_epoch()
        total_steps = config.epochs * steps
        run_start, run_steps = time.monotonic(), 0

        for epoch in range(start_epoch, config.epochs):
            epoch_start = time.monotonic()

            def on_batch(batch: int, batches: int, loss: float, acc: float) -> None:
                nonlocal run_steps
                run_steps += 1
                per_step = (time.monotonic() - run_start) / run_steps
                remaining = total_steps - (epoch * steps + batch)
                emit(TrainProgress("train", epoch + 1, config.epochs, batch, batches, loss, acc,
                                   time.monotonic() - start, per_step * remaining, history=history))

            loss, acc, stopped = train_one_epoch(net, source, optimiser, scheduler, epoch, device,
                                                 dist_info, on_batch, stop)
            if stopped:
                emit(TrainProgress("stopped", epoch, config.epochs, elapsed_s=time.monotonic() - start,
                                   message=f"stopped; resumes from epoch {epoch}", history=history))
                return TrainResult(out_dir, True, epoch, history, None, views.counts_before,
                                   views.counts_after, split.sizes())
            dist_info.sync_buffers(model)
            val_loss, val_acc = evaluate_split(model, dataset, split.val, stats, geometry, device, dist_info,
                                               precision=config.precision)
            history.append({"epoch": epoch + 1, "train_loss": loss, "train_accuracy": acc,
                            "val_loss": val_loss, "val_accuracy": val_acc,
                            "lr": scheduler.get_last_lr()[0],
                            "seconds": time.monotonic() - epoch_start})
            if dist_info.main:
                save_checkpoint(out_dir / CHECKPOINT_NAME, {
                    "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                    "config": config.to_dict(), "history": history})
            emit(TrainProgress("epoch", epoch + 1, config.epochs, steps, steps, loss, acc,
                               time.monotonic() - start, history=list(history),
                               message=f"val accuracy {val_acc:.3f}"))
            dist_info.barrier()

        metrics = None
        if dist_info.main:
            report("evaluating on the test galaxies")
            metrics = finish_bundle(model, dataset, split, views, stats, geometry, config, history,
                                    time.monotonic() - start, command, dist_info.world,
                                    backend=dist_info.backend)
            emit(TrainProgress("done", config.epochs, config.epochs, elapsed_s=time.monotonic() - start,
                               history=history, message=f"test accuracy {metrics['accuracy']:.3f}"))
        # No barrier here: the other ranks have nothing left to do, and waiting for rank 0's
        # test evaluation could outlast the process group's timeout on a large test split.
    return TrainResult(out_dir, False, config.epochs, history, metrics, views.counts_before,
                       views.counts_after, split.sizes())


def finish_bundle(model: nn.Module, dataset: PackedDataset, split: Split, views: Balanced,
                  stats: ChannelStats, geometry: InputGeometry, config: TrainConfig,
                  history: list[dict], seconds: float, command: str | None, world: int,
                  backend: str = "none") -> dict:
    """Calibrate on validation galaxies, measure on test galaxies, write weights + card.

    Images are read a batch at a time, so memory does not grow with the size of the splits.
    """
    model.eval()
    val_views = view_log_probs(model, ImageRows(dataset, split.val), stats, geometry,
                               precision=config.precision)
    temperature = fit_temperature(combine_views(val_views, config.tta), dataset.labels[split.val])
    labels = dataset.labels[split.test]
    metrics, probs = held_out_metrics(model, ImageRows(dataset, split.test), labels, stats, geometry,
                                      tta=config.tta, temperature=temperature, precision=config.precision)
    metrics["split"] = "test"
    ids = dataset.ids
    card = {
        "classes": list(CLASSES), "arch": config.arch, "width": config.width, "depth": config.depth,
        "aux_outputs": 2 if config.aux_weight > 0 else 0,
        "input": {"source_size": geometry.source_size, "crop": geometry.crop, "size": geometry.size},
        "normalisation": stats.to_dict(), "tta": config.tta, "precision": config.precision,
        "temperature": temperature,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "training_seconds": round(seconds, 1),
        "command": command, "seed": config.seed, "config": config.to_dict(),
        "machine": {"device": str(next(model.parameters()).device), "processes": world,
                    "backend": backend,
                    "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "data": {"galaxies": len(split.train) + len(split.val) + len(split.test),
                 "cache": dataset.meta["key"], "split": split.sizes(),
                 "train_before_balancing": views.counts_before,
                 "train_after_balancing": views.counts_after},
        "metrics": {k: v for k, v in metrics.items() if k != "reliability"},
        "history": history,
    }
    evaluation = {"metrics": metrics,
                  "split_ids": {name: ids[getattr(split, name)].tolist() for name in ("train", "val", "test")},
                  "misclassified": misclassified(ids[split.test], dataset.index["image"].to_numpy()[split.test],
                                                 labels, probs)}
    save_bundle(Path(config.out_dir), model, card, evaluation)
    write_model_card(Path(config.out_dir), card, metrics)
    return metrics
