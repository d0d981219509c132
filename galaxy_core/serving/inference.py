"""Batched inference on uint8 cutouts, optionally averaged over the 8 symmetries of the square.

Every function takes a ``ModelBundle``: the network with the card that says how to feed it
(geometry, statistics, temperature, test-time augmentation) and the precision resolved at load.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from galaxy_core.base.config import ANSWERS
from galaxy_core.data.geometry import SYMMETRIES, crop_and_resize, dihedral
from galaxy_core.data.normalise import normalise
from galaxy_core.model.bundle import ModelBundle
from galaxy_core.model.precision import autocast
from galaxy_core.model.tree import TreeSchema, apply_class_rule, tree_log_probs

# Views per forward pass on a CPU. A few dozen 64-px views keep a pass's activations in the
# cores' caches: on two EPYC cores, passes of 32 views ran about 1.5x faster per view than passes
# of 512 (a TTA batch of 64 images); see benchmarks/README.md. GPUs take the batch whole.
CPU_VIEWS_PER_PASS = 32
BATCH_SIZE = 256


class Cutouts(Protocol):
    """uint8 NHWC cutouts that can be sliced a batch at a time (an array, or a lazy view)."""

    def __len__(self) -> int: ...

    def __getitem__(self, part: slice) -> np.ndarray: ...


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """The one batching loop: consecutive slices of at most ``size`` items."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def prepare_batch(images_uint8: np.ndarray | torch.Tensor, bundle: ModelBundle) -> torch.Tensor:
    """uint8 NHWC cutouts -> normalised float NCHW on the bundle's device."""
    x = torch.as_tensor(images_uint8).to(bundle.device, non_blocking=True)
    return normalise(crop_and_resize(x, bundle.geometry), bundle.stats)


def _passes(x: torch.Tensor, views: int) -> list[torch.Tensor]:
    """Split a batch so a CPU forward pass holds about CPU_VIEWS_PER_PASS views."""
    step = max(1, CPU_VIEWS_PER_PASS // views)
    if x.device.type != "cpu" or x.shape[0] <= step:
        return [x]
    return [x[i:i + step] for i in range(0, x.shape[0], step)]


@dataclass(frozen=True)
class ViewLogProbs:
    """Log-probabilities in each of the 8 symmetric views: classes (8, n, classes), for a model
    with a vote-fraction head the three answers' fractions (8, n, 3), and for a model with a tree
    head every question's answers (8, n, answers; each question's block a distribution)."""

    classes: torch.Tensor
    votes: torch.Tensor | None = None
    tree: torch.Tensor | None = None

    def combined(self, tta: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, classes) and (n, 3): the mean over the views, or the first view alone."""
        votes = None if self.votes is None else combine_views(self.votes, tta)
        return combine_views(self.classes, tta), votes

    def combined_tree(self, tta: bool, tree: TreeSchema | None) -> torch.Tensor | None:
        """(n, answers) log-probabilities, each question's views averaged on its own."""
        if self.tree is None or tree is None:
            return None
        return torch.cat([combine_views(self.tree[:, :, part], tta) for part in tree.slices()], dim=1)

    @staticmethod
    def cat(parts: list[ViewLogProbs], classes: int) -> ViewLogProbs:
        if not parts:
            return ViewLogProbs(torch.zeros(8, 0, classes))
        votes = None if parts[0].votes is None else torch.cat([p.votes for p in parts], dim=1)
        tree = None if parts[0].tree is None else torch.cat([p.tree for p in parts], dim=1)
        return ViewLogProbs(torch.cat([p.classes for p in parts], dim=1), votes, tree)


@dataclass(frozen=True)
class Outputs:
    """What a model says about some images, calibrated: class probabilities (n, classes) under the
    card's class rule; when it has a vote-fraction head, the volunteers' answers it predicts (n, 3);
    when it has a tree head, each answer's predicted share of the volunteers asked its question
    (n, answers, in the card's tree order)."""

    probs: np.ndarray
    votes: np.ndarray | None = None
    tree: np.ndarray | None = None


def _log_probs(bundle: ModelBundle, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    with autocast(x.device, bundle.precision):
        heads = bundle.model.heads(x)
    votes = torch.log_softmax(heads.aux.float(), dim=1) if has_vote_head(bundle) else None
    tree = None
    if heads.tree is not None and bundle.card.tree is not None:
        tree = tree_log_probs(heads.tree, bundle.card.tree)
    return torch.log_softmax(heads.logits.float(), dim=1), votes, tree


def has_vote_head(bundle: ModelBundle) -> bool:
    """Whether the model predicts the three answers' vote fractions (the first models' two-output
    regression head does not give a distribution)."""
    return bundle.card.architecture.aux_outputs == len(ANSWERS)


@torch.inference_mode()
def batch_view_log_probs(bundle: ModelBundle, x: torch.Tensor) -> ViewLogProbs:
    """Log-probabilities of a normalised batch in each of the 8 symmetric views."""
    out = []
    for part in _passes(x, 8):
        classes, votes, tree = _log_probs(bundle, torch.cat([dihedral(part, k) for k in range(SYMMETRIES)]))
        n = part.shape[0]
        out.append(ViewLogProbs(classes.view(8, n, -1), None if votes is None else votes.view(8, n, -1),
                                None if tree is None else tree.view(8, n, -1)))
    return ViewLogProbs.cat(out, len(bundle.card.classes))


@torch.inference_mode()
def all_outputs_for(bundle: ModelBundle, x: torch.Tensor,
                    tta: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Class, vote and tree log-probabilities: the mean over the 8 dihedral views when ``tta``, else one view."""
    if tta:
        views = batch_view_log_probs(bundle, x)
        return (*views.combined(tta=True), views.combined_tree(True, bundle.card.tree))
    parts = [_log_probs(bundle, part) for part in _passes(x, 1)]
    votes = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
    tree = None if parts[0][2] is None else torch.cat([p[2] for p in parts])
    return torch.cat([p[0] for p in parts]), votes, tree


def outputs_for(bundle: ModelBundle, x: torch.Tensor, tta: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class and vote log-probabilities: the mean over the 8 dihedral views when ``tta``, else one view."""
    return all_outputs_for(bundle, x, tta)[:2]


def combine_views(view_logp: torch.Tensor, tta: bool) -> torch.Tensor:
    """(8, n, k) view log-probabilities -> (n, k): their mean, or the first view."""
    return torch.log_softmax(view_logp.mean(dim=0), dim=1) if tta else view_logp[0]


def calibrated(log_probs: torch.Tensor, bundle: ModelBundle) -> np.ndarray:
    """Class probabilities after the card's temperature scaling (the class head's own)."""
    return torch.softmax(log_probs / bundle.card.temperature, dim=1).cpu().numpy()


def calibrated_votes(log_probs: torch.Tensor | None, bundle: ModelBundle) -> np.ndarray | None:
    """Vote fractions after the card's vote temperature scaling."""
    if log_probs is None:
        return None
    return torch.softmax(log_probs / bundle.card.vote_temperature, dim=1).cpu().numpy()


def tree_answers(log_probs: torch.Tensor | None) -> np.ndarray | None:
    """Tree log-probabilities -> each answer's predicted share of the volunteers asked its question."""
    return None if log_probs is None else torch.exp(log_probs).cpu().numpy()


def class_probabilities(bundle: ModelBundle, classes: torch.Tensor, tree: np.ndarray | None) -> np.ndarray:
    """Calibrated class probabilities under the card's class rule (which may read the tree)."""
    return apply_class_rule(calibrated(classes, bundle), tree, bundle.card.tree, bundle.card.class_rule,
                            spiral=bundle.card.classes.index("Spiral"),
                            elliptical=bundle.card.classes.index("Elliptical"))


def predict_outputs(bundle: ModelBundle, images: Cutouts, *, tta: bool | None = None,
                    batch_size: int = BATCH_SIZE) -> Outputs:
    """Calibrated class probabilities, vote fractions and tree answers for uint8 NHWC cutouts;
    ``tta`` None: the card's."""
    bundle.model.eval()
    use_tta = bundle.card.tta if tta is None else tta
    probs, votes, trees = [], [], []
    for part in iter_chunks(len(images), batch_size):
        classes, vote_logp, tree_logp = all_outputs_for(bundle, prepare_batch(images[part], bundle), use_tta)
        tree = tree_answers(tree_logp)
        probs.append(class_probabilities(bundle, classes, tree))
        votes.append(calibrated_votes(vote_logp, bundle))
        trees.append(tree)
    if not probs:
        empty = np.zeros((0, len(bundle.card.classes)), dtype=np.float32)
        answers = None if bundle.card.tree is None else np.zeros((0, len(bundle.card.tree.stems)), np.float32)
        return Outputs(empty, np.zeros((0, len(ANSWERS)), np.float32) if has_vote_head(bundle) else None, answers)
    return Outputs(np.concatenate(probs), None if votes[0] is None else np.concatenate(votes),
                   None if trees[0] is None else np.concatenate(trees))


def predict_probs(bundle: ModelBundle, images: Cutouts, *, tta: bool | None = None,
                  batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Calibrated class probabilities (n, classes) for uint8 NHWC cutouts."""
    return predict_outputs(bundle, images, tta=tta, batch_size=batch_size).probs


@torch.inference_mode()
def view_log_probs(bundle: ModelBundle, images: Cutouts, batch_size: int = BATCH_SIZE) -> ViewLogProbs:
    """Log-probabilities of every galaxy in each of the 8 symmetric views: one pass serves
    test-time averaging, calibration and the symmetry check."""
    bundle.model.eval()
    parts = []
    for part in iter_chunks(len(images), batch_size):
        views = batch_view_log_probs(bundle, prepare_batch(images[part], bundle))
        parts.append(ViewLogProbs(views.classes.cpu(), None if views.votes is None else views.votes.cpu(),
                                  None if views.tree is None else views.tree.cpu()))
    return ViewLogProbs.cat(parts, len(bundle.card.classes))


class TurnedImages:
    """Lazy uint8 NHWC cutouts, each turned by 90 degrees (``"rot90"``) or mirrored (``"mirror"``)."""

    def __init__(self, images_uint8: Cutouts, symmetry: str):
        if symmetry not in ("rot90", "mirror"):
            raise ValueError(f"unknown symmetry {symmetry!r}")
        self.images, self.symmetry = images_uint8, symmetry

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, part: slice) -> np.ndarray:
        batch = np.asarray(self.images[part])
        turned = np.rot90(batch, 1, axes=(1, 2)) if self.symmetry == "rot90" else batch[:, :, ::-1]
        return np.ascontiguousarray(turned)
