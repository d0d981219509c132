"""The training loop: ``train_one_epoch``, ``evaluate`` and ``train`` (torchvision's reference shape).

Seeded and resumable (a checkpoint at every epoch end holds model, optimiser, scheduler, epoch,
config and history), data-parallel under torchrun, and reporting progress through a callback
that the CLI turns into a terminal bar and the app into live charts.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from galaxy_core.base.config import CLASSES, ConfigError, GalaxyError, TrainConfig
from galaxy_core.data.cache import ImageRows, PackedDataset
from galaxy_core.data.dataset import TrainingPlan, plan_training
from galaxy_core.data.framing import framing_spec
from galaxy_core.data.geometry import InputGeometry
from galaxy_core.data.normalise import input_statistics
from galaxy_core.model.bundle import Evaluation, ModelBundle, load_bundle, new_card, read_evaluation, save_bundle
from galaxy_core.model.card import DataSummary, EpochRecord, ModelCard
from galaxy_core.model.card_markdown import write_model_card
from galaxy_core.model.metrics import Metrics, misclassified
from galaxy_core.model.network import Architecture, build_model
from galaxy_core.model.precision import autocast
from galaxy_core.model.tree import training_tree, tree_loss
from galaxy_core.serving.evaluate import (
    HELD_OUT_PASSES,
    EvaluateProgress,
    ProgressTally,
    calibrate,
    held_out_metrics,
    observed_tree,
)
from galaxy_core.serving.inference import predict_probs
from galaxy_core.sources.catalogue import rule_labels
from galaxy_core.sources.folder import DatasetFolder
from galaxy_core.training.batches import BatchSource, epoch_seed, prefetch
from galaxy_core.training.checkpoint import (
    CHECKPOINT_NAME,
    DATA_KEY,
    data_fingerprint,
    load_checkpoint,
    no_lock,
    output_lock,
    save_checkpoint,
)
from galaxy_core.training.distributed import Distributed, pick_device, setup_distributed


class TrainingDiverged(GalaxyError):
    """The loss became NaN or infinite: the weights are lost, only the last good checkpoint is kept."""


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
    history: list[EpochRecord] = field(default_factory=list)


@dataclass
class TrainResult:
    out_dir: Path
    stopped: bool
    epochs_done: int
    history: list[EpochRecord]
    metrics: Metrics | None
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    split_sizes: dict[str, int]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def training_loss(model: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                  config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft cross-entropy on the classes, plus (with ``aux_weight``) the vote-fraction head's
    cross-entropy against the volunteers' answers as a distribution over smooth, features and
    artifact (the multinomial likelihood of the votes, per vote): the fractions say how far a
    galaxy is from the 0.8 threshold, which the class label alone does not."""
    with autocast(x.device, config.precision):
        outputs = model(x)
    tree = training_tree(config.tree_weight)
    if config.aux_weight <= 0 and tree is None:
        return soft_cross_entropy(outputs, targets, config.label_smoothing), outputs
    k, aux_k = len(CLASSES), len(CLASSES) + config.aux_outputs
    loss = soft_cross_entropy(outputs.logits, targets[:, :k], config.label_smoothing)
    if config.aux_weight > 0:
        loss = loss + config.aux_weight * soft_cross_entropy(outputs.aux, targets[:, k:aux_k], 0.0)
    if tree is not None:
        loss = loss + config.tree_weight * tree_loss(outputs.tree, targets[:, aux_k:], tree)
    return loss, outputs.logits


def one_cycle_schedule(optimiser: torch.optim.Optimizer, total_steps: int,
                       warmup: float = 0.25) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/25 over the first quarter, then cosine decay towards zero (the
    one-cycle shape); a pure function of the step, so a checkpoint only needs the step count."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return 0.04 + 0.96 * step / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def new_model(config: TrainConfig) -> nn.Module:
    """The untrained network of a run, initialised from its seed."""
    torch.manual_seed(config.seed)
    tree = training_tree(config.tree_weight)
    return build_model(Architecture(config.arch, config.width, config.depth, config.aux_outputs,
                                    0 if tree is None else len(tree.stems)))


def start_from(model: nn.Module, config: TrainConfig, split_ids: dict[str, np.ndarray]) -> None:
    """Load ``config.init_from``'s weights into ``model`` (heads it lacks keep their fresh start);
    a ConfigError when its network differs, or when it was trained on this run's validation or
    test galaxies (its figures would then be measured on galaxies it has seen)."""
    source = load_bundle(config.init_from)
    mine, theirs = Architecture(config.arch, config.width, config.depth), source.card.architecture
    if (theirs.name, theirs.width, theirs.depth) != (mine.name, mine.width, mine.depth):
        raise ConfigError(f"--init-from {config.init_from} is a {theirs.name} of width {theirs.width} and depth "
                          f"{theirs.depth}; this run trains a {mine.name} of width {mine.width} and depth {mine.depth}")
    evaluation = read_evaluation(config.init_from)
    seen = set() if evaluation is None else set(evaluation.split_ids.get("train", []))
    if evaluation is None or seen & (set(split_ids["val"]) | set(split_ids["test"])):
        raise ConfigError(f"--init-from {config.init_from}: its training galaxies overlap this run's validation "
                          "or test galaxies (or it has no evaluation.json saying which they were)")
    state = source.model.state_dict()
    ours = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in ours and ours[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)


def train_one_epoch(model: nn.Module, source: BatchSource, optimiser: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, device: torch.device,
                    dist_info: Distributed, on_batch: Callable[[int, int, float, float], None],
                    stop: threading.Event | None) -> tuple[float, float, bool]:
    """One pass over the training views; returns (loss, accuracy, stopped)."""
    model.train()
    torch.manual_seed(epoch_seed(source.config.seed, epoch))
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


def evaluate(bundle: ModelBundle, dataset: PackedDataset, rows: np.ndarray,
             dist_info: Distributed) -> tuple[float, float]:
    """Loss and accuracy on un-augmented galaxies (one view, hard labels), reduced across processes."""
    mine = rows[dist_info.rank::dist_info.world]
    probs = predict_probs(bundle, ImageRows(dataset, mine), tta=False)
    labels = dataset.labels[mine]
    nll = float(-np.log(np.clip(probs[np.arange(len(mine)), labels], 1e-12, 1)).sum()) if len(mine) else 0.0
    correct = float((probs.argmax(1) == labels).sum()) if len(mine) else 0.0
    nll, correct, n = dist_info.sum([nll, correct, float(len(mine))], bundle.device)
    return nll / max(n, 1), correct / max(n, 1)


def open_training_data(config: TrainConfig, world: int) -> tuple[PackedDataset, TrainingPlan]:
    """Read the catalogue once, plan the split and balance on it (settings the data cannot satisfy
    fail here, before any image is decoded), then open the image cache, building it if needed.

    Every process opens the cache itself, so each machine may keep its own copy; the cache's
    build lock makes the processes sharing one cache folder decode the images only once.
    """
    frame = DatasetFolder(config.data_dir).read_catalogue()
    plan = plan_training(frame["id"].to_numpy(str), rule_labels(frame, config.label_rule), config, world)
    dataset = PackedDataset.open(config.data_dir, label_rule=config.label_rule, cache_root=config.cache_dir,
                                 catalogue=frame, framing=framing_spec(config.framing))
    if len(dataset) != len(frame):  # images that could not be decoded are not in the cache
        plan = plan_training(dataset.ids, dataset.labels, config, world)
    if config.crop > dataset.source_size:
        raise ConfigError(f"crop {config.crop} is larger than the {dataset.source_size}-pixel cutouts")
    return dataset, plan


def train(config: TrainConfig, progress: Callable[[TrainProgress], None] | None = None,
          stop: threading.Event | None = None, command: str | None = None,
          restart: bool = False) -> TrainResult:
    """Train, checkpoint every epoch, evaluate on the test galaxies and save a model bundle.

    ``restart`` discards an existing checkpoint, but only once the settings are known to fit the
    data and no other job holds the folder. Under torchrun the same call trains data-parallel:
    each process takes its share of every global batch, and only rank 0 reads and writes the
    output folder.
    """
    device = pick_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    dist_info = setup_distributed(device)
    try:
        return _train(config, device, dist_info, progress, stop, command, restart)
    finally:
        dist_info.close()


@dataclass
class _Run:
    """One training run's moving parts, set up once, then resumed from a checkpoint if there is one."""

    model: nn.Module
    card: ModelCard
    source: BatchSource
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data_print: str  # the catalogue, split and cache it trains on: a resume must find the same
    history: list[EpochRecord] = field(default_factory=list)
    start_epoch: int = 0
    earlier_s: float = 0.0  # training time of earlier sessions of this run


def _set_up(config: TrainConfig, dataset: PackedDataset, plan: TrainingPlan, device: torch.device,
            dist_info: Distributed, command: str | None, report: Callable[[str], None]) -> _Run:
    """Channel statistics of the training galaxies, a new network and its card, the optimiser."""
    split, views = plan.split, plan.views
    geometry = InputGeometry(source_size=dataset.source_size, crop=config.crop, input_size=config.input_size)
    report("computing channel statistics")
    stats = input_statistics(dataset, split.train, geometry)
    model = new_model(config)
    if config.init_from is not None and not (Path(config.out_dir) / CHECKPOINT_NAME).is_file():
        start_from(model, config, {name: dataset.ids[getattr(split, name)] for name in ("val", "test")})
    model = model.to(device).to(memory_format=torch.channels_last)
    data = DataSummary(galaxies=sum(split.sizes().values()), cache=dataset.meta["key"], split=split.sizes(),
                       train_before_balancing=views.counts_before, train_after_balancing=views.counts_after)
    card = new_card(config, geometry, stats, command=command, seconds=0.0, device=device,
                    world=dist_info.world, backend=dist_info.backend, data=data)
    source = BatchSource(dataset, views, stats, geometry, config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = one_cycle_schedule(optimiser, config.epochs * source.steps_per_epoch())
    ids = dataset.ids
    data_print = data_fingerprint(ids, dataset.labels, {name: ids[getattr(split, name)]
                                                       for name in ("train", "val", "test")}, dataset.meta["key"])
    return _Run(model, card, source, optimiser, scheduler, data_print)


def _resume(run: _Run, config: TrainConfig, dist_info: Distributed, report: Callable[[str], None]) -> None:
    """Continue from the output folder's checkpoint, read by rank 0 and shared with the others."""
    checkpoint = (load_checkpoint(Path(config.out_dir) / CHECKPOINT_NAME, config, run.data_print)
                  if dist_info.main else None)
    checkpoint = dist_info.from_main(checkpoint)
    if checkpoint is None:
        return
    run.model.load_state_dict(checkpoint["model"])
    run.optimiser.load_state_dict(checkpoint["optimiser"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.history = [EpochRecord(**h) for h in checkpoint["history"]]
    run.start_epoch = checkpoint["epoch"]
    # Earlier sessions' time; checkpoints from before it was kept: their epochs' time.
    saved = checkpoint.get("training_seconds")
    run.earlier_s = (float(saved) if isinstance(saved, (int, float)) and 0 <= saved < 1e9
                     else sum(h.seconds for h in run.history))
    report(f"resuming from epoch {run.start_epoch}")


def _save_checkpoint(run: _Run, config: TrainConfig, epoch: int, seconds: float) -> None:
    save_checkpoint(Path(config.out_dir) / CHECKPOINT_NAME, {
        "model": run.model.state_dict(), "optimiser": run.optimiser.state_dict(),
        "scheduler": run.scheduler.state_dict(), "epoch": epoch,
        "config": config.to_dict(), "history": [h.to_dict() for h in run.history],
        "training_seconds": seconds, DATA_KEY: run.data_print})


def _train(config: TrainConfig, device: torch.device, dist_info: Distributed,
           progress: Callable[[TrainProgress], None] | None, stop: threading.Event | None,
           command: str | None, restart: bool) -> TrainResult:
    out_dir = Path(config.out_dir)
    emit = progress if (progress is not None and dist_info.main) else (lambda event: None)
    start = time.monotonic()

    def report(message: str) -> None:
        emit(TrainProgress("prepare", epochs=config.epochs, message=message,
                           elapsed_s=time.monotonic() - start))

    report("reading the catalogue and building the image cache")
    dataset, plan = open_training_data(config, dist_info.world)
    split, views = plan.split, plan.views
    result = functools.partial(TrainResult, out_dir, counts_before=views.counts_before,
                               counts_after=views.counts_after, split_sizes=split.sizes())
    with output_lock(out_dir) if dist_info.main else no_lock():
        if restart and dist_info.main:
            (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        report(f"training on {dist_info.world} process{'es' if dist_info.world > 1 else ''} "
               f"({dist_info.backend})")
        run = _set_up(config, dataset, plan, device, dist_info, command, report)
        _resume(run, config, dist_info, report)
        net = run.model
        if dist_info.world > 1:
            net = nn.parallel.DistributedDataParallel(
                run.model, device_ids=[device.index] if device.type == "cuda" else None)
        steps = run.source.steps_per_epoch()
        total_steps = config.epochs * steps
        run_start, run_steps = time.monotonic(), 0

        for epoch in range(run.start_epoch, config.epochs):
            epoch_start = time.monotonic()

            def on_batch(batch: int, batches: int, loss: float, acc: float, epoch: int = epoch) -> None:
                nonlocal run_steps
                run_steps += 1
                per_step = (time.monotonic() - run_start) / run_steps
                remaining = total_steps - (epoch * steps + batch)
                emit(TrainProgress("train", epoch + 1, config.epochs, batch, batches, loss, acc,
                                   time.monotonic() - start, per_step * remaining, history=run.history))

            loss, acc, stopped = train_one_epoch(net, run.source, run.optimiser, run.scheduler, epoch, device,
                                                 dist_info, on_batch, stop)
            if stopped:
                emit(TrainProgress("stopped", epoch, config.epochs, elapsed_s=time.monotonic() - start,
                                   message=f"stopped; resumes from epoch {epoch}", history=run.history))
                return result(True, epoch, run.history, None)
            dist_info.sync_buffers(run.model)
            val_loss, val_acc = evaluate(ModelBundle(run.model, run.card, config.precision), dataset, split.val,
                                         dist_info)
            check_finite(epoch + 1, loss, val_loss)  # the same sums on every process: all stop together
            run.history.append(EpochRecord(epoch + 1, loss, acc, val_loss, val_acc,
                                           run.scheduler.get_last_lr()[0], time.monotonic() - epoch_start))
            if dist_info.main:
                _save_checkpoint(run, config, epoch + 1, run.earlier_s + time.monotonic() - start)
            emit(TrainProgress("epoch", epoch + 1, config.epochs, steps, steps, loss, acc,
                               time.monotonic() - start, history=list(run.history),
                               message=f"val accuracy {val_acc:.3f}"))
            dist_info.barrier()

        metrics = None
        if dist_info.main:
            metrics = _measure_and_save(run, dataset, plan, config, emit, start)
        # No barrier here: the other ranks have nothing left to do, and waiting for rank 0's
        # test evaluation could outlast the process group's timeout on a large test split.
    return result(False, config.epochs, run.history, metrics)


def _measure_and_save(run: _Run, dataset: PackedDataset, plan: TrainingPlan, config: TrainConfig,
                      emit: Callable[[TrainProgress], None], start: float) -> Metrics:
    """Rank 0's last step: the card gets the history and time, then ``finish`` measures and saves."""
    emit(TrainProgress("prepare", epochs=config.epochs, message="evaluating on the test galaxies",
                       elapsed_s=time.monotonic() - start))
    card = replace(run.card, history=tuple(run.history), provenance=replace(
        run.card.provenance, training_seconds=round(run.earlier_s + time.monotonic() - start, 1)))

    def evaluating(event: EvaluateProgress) -> None:
        emit(TrainProgress("evaluate", config.epochs, config.epochs, event.done, event.total,
                           elapsed_s=time.monotonic() - start, history=run.history,
                           message="evaluating on the validation and test galaxies"))

    metrics = finish(ModelBundle(run.model, card, config.precision), dataset, plan, evaluating)
    emit(TrainProgress("done", config.epochs, config.epochs, elapsed_s=time.monotonic() - start,
                       history=run.history, message=f"test accuracy {metrics.accuracy:.3f}"))
    return metrics


def check_finite(epoch: int, loss: float, val_loss: float) -> None:
    """Stop a run whose loss is no longer a number before its weights are saved anywhere."""
    if not (math.isfinite(loss) and math.isfinite(val_loss)):
        kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no checkpoint was saved"
        raise TrainingDiverged(f"training diverged in epoch {epoch} (training loss {loss:.4g}, validation loss "
                               f"{val_loss:.4g}); nothing of it was saved and {kept}: lower --lr, or use "
                               "--restart to start over")


def finish(bundle: ModelBundle, dataset: PackedDataset, plan: TrainingPlan,
           progress: Callable[[EvaluateProgress], None] | None = None) -> Metrics:
    """Calibrate on the validation galaxies, measure on the test galaxies, save the bundle.

    Images are read a batch at a time, so memory does not grow with the size of the splits;
    ``progress`` hears how many images of those passes are done.
    """
    split, ids = plan.split, dataset.ids
    bundle.model.eval()
    tally = ProgressTally(len(split.val) + HELD_OUT_PASSES * len(split.test), progress)
    bundle = calibrate(bundle, tally.wrap(ImageRows(dataset, split.val)), dataset.labels[split.val],
                       dataset.fractions(split.val))
    labels = dataset.labels[split.test]
    metrics, probs = held_out_metrics(bundle, ImageRows(dataset, split.test), labels,
                                      fractions=dataset.fractions(split.test), tally=tally,
                                      tree_observed=observed_tree(dataset, split.test, bundle))
    tally.finish()
    metrics = replace(metrics, split="test", label_rule=dataset.rule)
    card = replace(bundle.card, metrics=metrics.without_reliability())
    evaluation = Evaluation(metrics, {name: ids[getattr(split, name)].tolist() for name in ("train", "val", "test")},
                            misclassified(ids[split.test], dataset.index["image"].to_numpy()[split.test],
                                          labels, probs))
    out_dir = Path(card.provenance.config.out_dir)
    save_bundle(out_dir, bundle.model, card, evaluation.to_dict())
    write_model_card(out_dir, card, metrics)
    return metrics
