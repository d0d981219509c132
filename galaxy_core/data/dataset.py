"""The dataset layer: split galaxies (before any augmentation), balance the training split,
turn vote fractions into training targets, and plan a training job's data once.

Everything here works on galaxy ids, class indices and cache rows, never on pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galaxy_core.base.config import CLASS_THRESHOLD, CLASSES, ConfigError, SplitConfig, TrainConfig
from galaxy_core.data.cache import PackedDataset
from galaxy_core.sources.catalogue import rule_fractions, rule_labels
from galaxy_core.sources.folder import DatasetError, DatasetFolder

SOFT_LABEL_TEMPERATURE = 0.04


def soft_targets(frac_smooth: np.ndarray, frac_features: np.ndarray,
                 temperature: float = SOFT_LABEL_TEMPERATURE) -> np.ndarray:
    """Vote fractions -> class probabilities that soften the hard CLASS_THRESHOLD.

    A galaxy with 81% 'smooth' votes is barely Elliptical: the vote fraction itself is uncertain
    by several percent, so its target is split between Elliptical and Uncertain.
    """
    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    p_spiral = sigmoid((np.asarray(frac_features, float) - CLASS_THRESHOLD) / temperature)
    p_elliptical = sigmoid((np.asarray(frac_smooth, float) - CLASS_THRESHOLD) / temperature)
    p_uncertain = np.clip(1.0 - p_spiral - p_elliptical, 0.0, 1.0)
    out = np.stack([p_spiral, p_elliptical, p_uncertain], axis=1)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def vote_targets(fractions: np.ndarray) -> np.ndarray:
    """Vote fractions (n, 3) as a distribution over the three answers: debiased fractions need
    not sum to one, and a galaxy with no recorded votes gets no weight (all zeros)."""
    fractions = np.nan_to_num(np.asarray(fractions, dtype=np.float64), nan=0.0).clip(0, None)
    total = fractions.sum(axis=1, keepdims=True)
    return np.divide(fractions, total, out=np.zeros_like(fractions), where=total > 0).astype(np.float32)


def training_targets(dataset: PackedDataset, rows: np.ndarray, soft: bool, vote_outputs: int = 0,
                     tree_stems: Sequence[str] = ()) -> np.ndarray:
    """Class targets (n, 3); with a vote-fraction head, ``vote_outputs`` more columns: the smooth,
    features and artifact fractions as a distribution (3), or the smooth and features fractions
    of the first models' two-output head (2); with a tree head, then each of ``tree_stems``'
    raw vote counts (the tree loss's targets)."""
    rows = np.asarray(rows, dtype=np.int64)
    fractions = dataset.fractions(rows)
    if soft or vote_outputs:
        missing = np.isnan(fractions[:, :2]).any(axis=1)
        if missing.any():
            raise DatasetError(f"{int(missing.sum())} training galaxies have a class but no vote fractions "
                               f"({dataset.rule} rule), as in a plain image,label folder: train on the classes "
                               "alone and without the vote-fraction head (--no-soft-labels --aux-weight 0)")
    if soft:
        out = soft_targets(fractions[:, 0], fractions[:, 1])
    else:
        out = np.eye(len(CLASSES), dtype=np.float32)[dataset.labels[rows]]
    if vote_outputs == 3:
        out = np.concatenate([out, vote_targets(fractions)], axis=1)
    elif vote_outputs == 2:
        out = np.concatenate([out, fractions[:, :2].astype(np.float32)], axis=1)
    if tree_stems:
        if not dataset.has_tree(tree_stems):
            raise DatasetError("this dataset has no per-answer vote counts for the decision tree "
                               "(t01_..._count to t09_..._count): train with --tree-weight 0")
        out = np.concatenate([out, dataset.tree_answers(rows, tree_stems, "count").astype(np.float32)], axis=1)
    return out


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_dataset(ids: np.ndarray, labels: np.ndarray, config: SplitConfig) -> Split:
    """Stratified by class, seeded, by galaxy; independent of the catalogue's row order."""
    ids, labels = np.asarray(ids).astype(str), np.asarray(labels)
    rng = np.random.default_rng(config.seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls in range(len(CLASSES)):
        members = np.flatnonzero(labels == cls)
        members = members[np.argsort(ids[members], kind="stable")]
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * config.test_fraction))
        n_val = int(round(len(members) * config.val_fraction))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test:n_test + n_val])
        parts["train"].append(members[n_test + n_val:])
    return Split(**{k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()})


@dataclass
class Balanced:
    """Training views: a galaxy row and the number of quarter turns to apply to it."""

    rows: np.ndarray
    rotations: np.ndarray
    counts_before: dict[str, int]
    counts_after: dict[str, int]


def balance(rows: np.ndarray, labels: np.ndarray, seed: int, *, max_views: int = 4,
            target: int | str = "median") -> Balanced:
    """Rotate copies of rare classes (90/180/270 deg, at most ``max_views`` per galaxy) and cull
    common ones, towards ``target`` views per class: a number, the median class count, or the
    largest class count ("max": nothing is culled, every training galaxy is used)."""
    rows = np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    per_class = [rows[labels[rows] == c] for c in range(len(CLASSES))]
    counts = [len(m) for m in per_class]
    empty = [CLASSES[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise ConfigError(f"class(es) {', '.join(empty)} have no training examples; "
                          "use more galaxies or turn balancing off")
    if target == "median":
        target = int(np.median(counts))
    elif target == "max":
        target = int(max(counts))
    target = int(target)
    out_rows, out_rot = [], []
    for members in per_class:
        n = len(members)
        if n >= target:
            chosen = np.sort(rng.choice(members, size=target, replace=False))
            out_rows.append(chosen)
            out_rot.append(np.zeros(target, dtype=np.int64))
            continue
        extra = min(target, n * max_views) - n
        order = rng.permutation(members)
        j = np.arange(extra)
        out_rows.append(np.concatenate([members, order[j % n]]))
        out_rot.append(np.concatenate([np.zeros(n, dtype=np.int64), 1 + j // n]))
    result_rows, result_rot = np.concatenate(out_rows), np.concatenate(out_rot)
    after = np.bincount(labels[result_rows], minlength=len(CLASSES))
    return Balanced(result_rows, result_rot,
                    dict(zip(CLASSES, map(int, counts))), dict(zip(CLASSES, map(int, after))))


def class_counts_of(labels: np.ndarray) -> dict[str, int]:
    return dict(zip(CLASSES, map(int, np.bincount(labels, minlength=len(CLASSES)))))


def balanced_views(rows: np.ndarray, labels: np.ndarray, seed: int, choice: str) -> Balanced:
    """The training views for a balance choice (``off``, ``median`` or ``max``)."""
    if choice != "off":
        return balance(rows, labels, seed, target=choice)
    counts = class_counts_of(labels[rows])
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise ConfigError(f"class(es) {', '.join(missing)} have no training examples")
    return Balanced(rows, np.zeros(len(rows), np.int64), counts, counts)


@dataclass(frozen=True)
class TrainingPlan:
    """A training job's data, planned once: the split by galaxy and the balanced training views,
    both as rows of the galaxies they were planned on."""

    split: Split
    views: Balanced


def plan_training(ids: np.ndarray, labels: np.ndarray, config: TrainConfig, world: int = 1) -> TrainingPlan:
    """Subset, split and balance galaxies by id and class index; raises if they cannot train.

    Cheap (no pixels), so a job plans on the catalogue before any image is decoded, and settings
    the data cannot satisfy fail in a second.
    """
    plan = plan_views(ids, labels, config)
    views = plan.views
    if config.batch_size > len(views.rows):
        raise ConfigError(f"batch size {config.batch_size} is larger than the {len(views.rows)} "
                          "training views; lower it or use more galaxies")
    if config.batch_size < 2 * world:
        raise ConfigError(f"batch size {config.batch_size} is too small for {world} processes")
    return plan


def plan_views(ids: np.ndarray, labels: np.ndarray, config: TrainConfig) -> TrainingPlan:
    """The subset, split and balanced views of ``config``, whatever its batch size (which the
    caller checks, or fits to the number of views)."""
    rows = np.arange(len(ids))
    if config.max_galaxies is not None and config.max_galaxies < len(rows):
        rows = np.sort(np.random.default_rng(config.split.seed).choice(rows, config.max_galaxies, replace=False))
    local = split_dataset(ids[rows], labels[rows], config.split)
    split = Split(rows[local.train], rows[local.val], rows[local.test])
    if len(split.val) == 0 or len(split.test) == 0:
        raise ConfigError(f"{len(rows)} galaxies are too few to hold out validation and test "
                          "galaxies; download more")
    return TrainingPlan(split, balanced_views(split.train, labels, config.seed, config.balance))


def dataset_summary(data_dir: Path, config: SplitConfig | None = None, balance_choice: str = "median",
                    cache_root: Path | None = None, label_rule: str = TrainConfig.label_rule) -> dict[str, Any]:
    """Class counts, split sizes and the training views of one label rule and balance choice."""
    config = config or SplitConfig()
    dataset = PackedDataset.open(data_dir, label_rule=label_rule, cache_root=cache_root)
    split = split_dataset(dataset.ids, dataset.labels, config)
    views = balanced_views(split.train, dataset.labels, config.seed, balance_choice)
    return {"galaxies": len(dataset), "cache": str(dataset.cache_dir),
            "label_rule": label_rule, "class_counts": class_counts_of(dataset.labels), "split": split.sizes(),
            "balance": balance_choice, "train_before_balancing": views.counts_before,
            "train_after_balancing": views.counts_after}


def sample_galaxies(data_dir: Path, per_class: int, seed: int = 0,
                    label_rule: str = TrainConfig.label_rule) -> dict[str, list[dict[str, Any]]]:
    """Up to ``per_class`` random galaxies of each class (under ``label_rule``) whose image exists:
    id, path, and that rule's smooth and features vote fractions."""
    folder = DatasetFolder(data_dir)
    frame = folder.read_catalogue()
    classes, fractions = rule_labels(frame, label_rule), rule_fractions(frame, label_rule)
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, Any]]] = {}
    for k, name in enumerate(CLASSES):
        members = np.flatnonzero(classes == k)
        take = np.sort(rng.choice(len(members), size=min(per_class, len(members)), replace=False))
        out[name] = [{"id": str(frame["id"].iat[i]), "path": folder.root / frame["image"].iat[i],
                      "frac_smooth": float(fractions[i, 0]), "frac_features": float(fractions[i, 1])}
                     for i in members[take]]
    return out
