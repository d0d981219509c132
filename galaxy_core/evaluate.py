"""Evaluate a saved model bundle on a labelled dataset folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .bundle import load_bundle, read_evaluation
from .dataset import DatasetError, ImageRows, PackedDataset
from .inference import agreement_from_views, combine_views, prediction_agreement, view_log_probs
from .metrics import classification_metrics, misclassified
from .normalise import ChannelStats, InputGeometry


def held_out_rows(dataset: PackedDataset, model_dir: Path) -> tuple[np.ndarray, str]:
    """The model's own test galaxies when this is its training data; otherwise every galaxy.

    Evaluating a model on galaxies it was trained on would overstate its accuracy, so a dataset
    that overlaps the training split without containing the test split is refused.
    """
    evaluation = read_evaluation(model_dir) or {}
    split_ids = evaluation.get("split_ids") or {}
    ids = dataset.ids
    position = {galaxy: i for i, galaxy in enumerate(ids)}
    test_ids = [g for g in split_ids.get("test", []) if g in position]
    if test_ids:
        return np.sort(np.array([position[g] for g in test_ids], dtype=np.int64)), "test"
    trained = set(split_ids.get("train", [])) | set(split_ids.get("val", []))
    rows = np.array([i for i, galaxy in enumerate(ids) if galaxy not in trained], dtype=np.int64)
    return rows, "all (galaxies not used in training)"


def held_out_metrics(model: nn.Module, images_uint8: np.ndarray, labels: np.ndarray, stats: ChannelStats,
                     geometry: InputGeometry, *, tta: bool, temperature: float,
                     precision: str) -> tuple[dict, np.ndarray]:
    """Metrics and calibrated probabilities of held-out galaxies, with the symmetry checks: one
    8-view pass for the answers and single-view agreement, then the turned cutouts."""
    views = view_log_probs(model, images_uint8, stats, geometry, precision=precision)
    probs = torch.softmax(combine_views(views, tta) / temperature, dim=1).numpy()
    metrics = classification_metrics(labels, probs)
    metrics["symmetry_agreement"] = agreement_from_views(views)
    metrics["prediction_symmetry_agreement"] = prediction_agreement(
        model, images_uint8, stats, geometry, probs, tta=tta, temperature=temperature, precision=precision)
    return metrics, probs


def evaluate_bundle(model_dir: Path, data_dir: Path, *, tta: bool | None = None,
                    device: str = "cpu", cache_root: Path | None = None) -> dict:
    """Metrics, symmetry agreement and misclassified galaxies for one model on one dataset."""
    bundle = load_bundle(model_dir, device=device)
    dataset = PackedDataset.open(data_dir, image_size=bundle.geometry.source_size, cache_root=cache_root)
    rows, which = held_out_rows(dataset, Path(model_dir))
    if len(rows) == 0:
        raise DatasetError(f"every galaxy in {data_dir} was used to train {model_dir}: "
                           "there is nothing held out to evaluate on")
    use_tta = bundle.tta if tta is None else tta
    labels = dataset.labels[rows]
    metrics, probs = held_out_metrics(bundle.model, ImageRows(dataset, rows), labels, bundle.stats,
                                      bundle.geometry, tta=use_tta,
                                      temperature=float(bundle.card.get("temperature", 1.0)),
                                      precision=bundle.precision)
    metrics["split"] = which
    metrics["tta"] = use_tta
    metrics["misclassified"] = misclassified(dataset.ids[rows], dataset.index["image"].to_numpy()[rows],
                                             labels, probs)
    return metrics
