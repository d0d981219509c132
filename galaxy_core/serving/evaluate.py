"""Measure a model on held-out galaxies: calibration on validation galaxies, metrics, the symmetry
checks, and the evaluation of a saved bundle on a labelled dataset folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from galaxy_core.base.config import EvaluateConfig
from galaxy_core.data.cache import ImageRows, PackedDataset
from galaxy_core.data.dataset import vote_targets
from galaxy_core.model.bundle import ModelBundle, load_bundle, read_evaluation
from galaxy_core.model.metrics import (
    Metrics,
    TurnedAgreement,
    ViewAgreement,
    classification_metrics,
    misclassified,
    tree_rmse,
    vote_rmse,
)
from galaxy_core.serving.inference import (
    Cutouts,
    TurnedImages,
    calibrated_votes,
    class_probabilities,
    predict_probs,
    tree_answers,
    view_log_probs,
)
from galaxy_core.sources.folder import DatasetError


@dataclass(frozen=True)
class EvaluateProgress:
    """Images put through the network so far, of all the passes an evaluation makes."""

    done: int
    total: int


class ProgressTally:
    """Counts the images that passes over ``wrap``-ped cutouts have finished, for a progress bar.

    Each pass reads its images a batch at a time; when the next batch is asked for, the one
    before it has gone through the network, so the count never runs ahead of the work.
    """

    def __init__(self, total: int, report: Callable[[EvaluateProgress], None] | None,
                 items: int | None = None):
        """``items``: report in those (the galaxies, each read once per pass) instead of reads."""
        self.total, self.report, self.done = total, report, 0
        self.items = total if items is None else items
        self._pending = 0

    def _report(self) -> None:
        if self.report is not None:
            done = min(self.done, self.total) * self.items // max(self.total, 1)
            self.report(EvaluateProgress(done, self.items))

    def wrap(self, images: Cutouts) -> CountedImages:
        return CountedImages(images, self)

    def read(self, n: int) -> None:
        self.done += self._pending
        self._pending = n
        self._report()

    def finish(self) -> None:
        self.done, self._pending = self.done + self._pending, 0
        self._report()


class CountedImages:
    """Cutouts whose reads are counted by a ``ProgressTally``."""

    def __init__(self, images: Cutouts, tally: ProgressTally):
        self.images, self.tally = images, tally

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, part: slice) -> np.ndarray:
        batch = self.images[part]
        self.tally.read(len(batch))
        return batch


HELD_OUT_PASSES = 3
"""Passes ``held_out_metrics`` makes over its images: the 8 views, then the turned and the mirrored copies."""


def fit_temperature(log_probs: torch.Tensor, targets: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017) on validation galaxies: one scalar, accuracy unchanged.
    ``targets`` are class indices, or distributions (the vote fractions of the vote head)."""
    logits = log_probs.double()
    target = torch.as_tensor(targets)
    if target.is_floating_point():
        target = target.double()
    grid = np.exp(np.linspace(np.log(0.3), np.log(5.0), 121))
    losses = [float(F.cross_entropy(logits / t, target)) for t in grid]
    return float(grid[int(np.argmin(losses))])


def calibrate(bundle: ModelBundle, images: Cutouts, labels: np.ndarray,
              fractions: np.ndarray | None = None) -> ModelBundle:
    """The bundle with its card's temperatures fitted on these (validation) galaxies: the class
    temperature on their labels, the vote temperature on their vote fractions."""
    classes, votes = view_log_probs(bundle, images).combined(bundle.card.tta)
    card = replace(bundle.card, temperature=fit_temperature(classes, labels))
    if votes is not None and fractions is not None:
        known = ~np.isnan(fractions).any(axis=1)
        if known.any():
            card = replace(card, vote_temperature=fit_temperature(votes[torch.from_numpy(known)],
                                                                  vote_targets(fractions[known])))
    return replace(bundle, card=card)


def agreement_from_views(view_logp: torch.Tensor) -> ViewAgreement:
    """How often the prediction for a galaxy's single view agrees with its 90-degree rotated copy,
    its mirror image, and all 8 symmetric copies at once."""
    preds = view_logp.argmax(dim=2)
    n = max(preds.shape[1], 1)
    return ViewAgreement(rot90=float((preds[1] == preds[0]).sum()) / n,
                         mirror=float((preds[4] == preds[0]).sum()) / n,
                         all_8=float((preds == preds[0]).all(0).sum()) / n)


def prediction_agreement(bundle: ModelBundle, images: Cutouts, probs: np.ndarray, tta: bool) -> TurnedAgreement:
    """How often the answer ``probs`` gives for each cutout stays the same when the cutout itself is
    turned by 90 degrees or mirrored and goes through the whole pipeline again (crop, resize,
    views): the invariance a user sees, as opposed to one view's."""
    out: dict[str, float] = {}
    labels = probs.argmax(1)
    for symmetry in ("rot90", "mirror"):
        turned = predict_probs(bundle, TurnedImages(images, symmetry), tta=tta)
        out[symmetry] = float((turned.argmax(1) == labels).mean()) if len(labels) else 1.0
        out[f"{symmetry}_max_probability_change"] = float(np.abs(turned - probs).max()) if len(labels) else 0.0
    return TurnedAgreement(**out)


def held_out_metrics(bundle: ModelBundle, images: Cutouts, labels: np.ndarray, tta: bool | None = None,
                     fractions: np.ndarray | None = None, tally: ProgressTally | None = None,
                     tree_observed: np.ndarray | None = None) -> tuple[Metrics, np.ndarray]:
    """Metrics and calibrated probabilities of held-out galaxies, with the symmetry checks (one
    8-view pass for the answers and single-view agreement, then the turned cutouts) and, for a
    model with a vote head, the error of its vote fractions against ``fractions``; for a model with
    a tree head, its answers' error against ``tree_observed`` (the weighted fractions, n x answers,
    in the card's tree order). ``tally`` counts the images of the HELD_OUT_PASSES passes as they
    are done."""
    if tally is not None:
        images = tally.wrap(images)
    use_tta = bundle.card.tta if tta is None else tta
    views = view_log_probs(bundle, images)
    classes, votes = views.combined(use_tta)
    tree = tree_answers(views.combined_tree(use_tta, bundle.card.tree))
    probs = class_probabilities(bundle, classes, tree)
    rmse = None
    if votes is not None and fractions is not None:
        observed = vote_targets(fractions)
        observed[np.isnan(fractions).any(axis=1)] = np.nan  # galaxies without votes are not scored
        rmse = vote_rmse(calibrated_votes(votes, bundle), observed)
    metrics = replace(classification_metrics(labels, probs), symmetry_agreement=agreement_from_views(views.classes),
                      prediction_symmetry_agreement=prediction_agreement(bundle, images, probs, use_tta),
                      tta=use_tta, vote_rmse=rmse)
    if tree is not None and tree_observed is not None:
        metrics = replace(metrics, tree_rmse=tree_rmse(tree, tree_observed, bundle.card.tree))
    return metrics, probs


def observed_tree(dataset: PackedDataset, rows: np.ndarray, bundle: ModelBundle) -> np.ndarray | None:
    """The volunteers' weighted fractions of the card's tree answers, when the dataset has them."""
    tree = bundle.card.tree
    if tree is None or not dataset.has_tree(tree.stems):
        return None
    return dataset.tree_answers(rows, tree.stems, "weighted_fraction")


def held_out_rows(dataset: PackedDataset, bundle: ModelBundle) -> tuple[np.ndarray, str]:
    """The model's own test galaxies when this is its training data; otherwise every galaxy.

    Evaluating a model on galaxies it was trained on would overstate its accuracy, so a dataset
    that overlaps the training split without containing the test split is refused.
    """
    evaluation = read_evaluation(bundle.path) if bundle.path is not None else None
    split_ids = evaluation.split_ids if evaluation is not None else {}
    ids = dataset.ids
    position = {galaxy: i for i, galaxy in enumerate(ids)}
    test_ids = [g for g in split_ids.get("test", []) if g in position]
    if test_ids:
        return np.sort(np.array([position[g] for g in test_ids], dtype=np.int64)), "test"
    trained = set(split_ids.get("train", [])) | set(split_ids.get("val", []))
    rows = np.array([i for i, galaxy in enumerate(ids) if galaxy not in trained], dtype=np.int64)
    return rows, "all not used in training"


@dataclass(frozen=True)
class EvaluationResult:
    metrics: Metrics
    misclassified: list[dict[str, Any]]
    question: str = ""  # what the model answers (its card's label rule), for whoever shows the metrics
    model_rule: str = ""  # the label rule the model was trained on
    labels_from_votes: bool = True  # the folder's classes come from its vote fractions, by metrics.label_rule

    def comparison(self) -> str:
        """What the figures compare, in one sentence: the rule the model answers, and the rule the
        folder's labels follow (made here from its vote fractions, or assumed for plain labels)."""
        rule = self.metrics.label_rule or self.model_rule
        answers = f"The model answers {self.question} ({self.model_rule} labels)"
        if self.labels_from_votes:
            if rule == self.model_rule:
                return f"{answers}; the folder's vote fractions were labelled by the same rule."
            return (f"{answers}; the folder's {rule} vote fractions were labelled by the {rule} rule, "
                    "which the model was not trained to answer: expect a lower figure.")
        return (f"{answers}; the folder has labels but no vote fractions, so the figures assume its labels "
                f"follow the {self.model_rule} rule (a folder labelled by another rule scores lower).")

    def to_dict(self) -> dict[str, Any]:
        return {**self.metrics.to_dict(), "misclassified": self.misclassified}


def evaluate_bundle(config: EvaluateConfig,
                    progress: Callable[[EvaluateProgress], None] | None = None) -> EvaluationResult:
    """Metrics, symmetry agreement and misclassified galaxies for one model on one dataset;
    ``progress`` hears how many images of the passes are done."""
    bundle = load_bundle(config.model_dir, device=config.device)
    dataset = PackedDataset.open(config.data_dir, source_size=bundle.geometry.source_size,
                                 label_rule=config.label_rule or bundle.card.label_rule, cache_root=config.cache_dir,
                                 framing=bundle.card.framing)
    rows, which = held_out_rows(dataset, bundle)
    if len(rows) == 0:
        raise DatasetError(f"every galaxy in {config.data_dir} was used to train {config.model_dir}: "
                           "there is nothing held out to evaluate on")
    labels = dataset.labels[rows]
    tally = ProgressTally(HELD_OUT_PASSES * len(rows), progress, items=len(rows))
    fractions = dataset.fractions(rows)
    metrics, probs = held_out_metrics(bundle, ImageRows(dataset, rows), labels, tta=config.tta,
                                      fractions=fractions, tally=tally,
                                      tree_observed=observed_tree(dataset, rows, bundle))
    tally.finish()
    wrong = misclassified(dataset.ids[rows], dataset.index["image"].to_numpy()[rows], labels, probs)
    return EvaluationResult(replace(metrics, split=which, label_rule=dataset.rule), wrong, bundle.card.question,
                            bundle.card.label_rule, bool(not np.isnan(fractions[:, :2]).any()))
