"""Evaluate a saved model bundle on a labelled dataset folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .bundle import load_bundle, read_evaluation
from .dataset import DatasetError, ImageRows, PackedDataset
from .inference import agreement_from_views, combine_views, prediction_agreement, view_log_probs
from .metrics import classification_metrics, misclassified


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
    views = view_log_probs(bundle.model, ImageRows(dataset, rows), bundle.stats, bundle.geometry,
                           precision=bundle.precision)
    temperature = float(bundle.card.get("temperature", 1.0))
    probs = torch.softmax(combine_views(views, use_tta) / temperature, dim=1).numpy()
    metrics = classification_metrics(labels, probs)
    metrics["symmetry_agreement"] = agreement_from_views(views)
    metrics["prediction_symmetry_agreement"] = prediction_agreement(
        bundle.model, ImageRows(dataset, rows), bundle.stats, bundle.geometry, probs, tta=use_tta,
        temperature=temperature, precision=bundle.precision)
    metrics["split"] = which
    metrics["tta"] = use_tta
    metrics["misclassified"] = misclassified(dataset.ids[rows], dataset.index["image"].to_numpy()[rows],
                                             labels, probs)
    return metrics
