"""Batched inference on uint8 cutouts, optionally averaged over the 8 symmetries of the square.

Every function takes a ``ModelBundle``: the network with the card that says how to feed it
(geometry, statistics, temperature, test-time augmentation) and the precision resolved at load.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch

from .bundle import ModelBundle
from .geometry import crop_and_resize, dihedral
from .normalise import normalise
from .precision import autocast

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


def _log_probs(bundle: ModelBundle, x: torch.Tensor) -> torch.Tensor:
    with autocast(x.device, bundle.precision):
        logits = bundle.model(x)
    return torch.log_softmax(logits.float(), dim=1)


@torch.inference_mode()
def batch_view_log_probs(bundle: ModelBundle, x: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of a normalised batch in each of the 8 symmetric views, (8, n, classes)."""
    out = []
    for part in _passes(x, 8):
        views = torch.cat([dihedral(part, k) for k in range(8)])
        out.append(_log_probs(bundle, views).view(8, part.shape[0], -1))
    return torch.cat(out, dim=1)


@torch.inference_mode()
def logits_for(bundle: ModelBundle, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Mean of log-probabilities over the 8 dihedral views when ``tta``; else one view."""
    if tta:
        return combine_views(batch_view_log_probs(bundle, x), tta=True)
    return torch.cat([_log_probs(bundle, part) for part in _passes(x, 1)])


def combine_views(view_logp: torch.Tensor, tta: bool) -> torch.Tensor:
    """(8, n, classes) view log-probabilities -> (n, classes): their mean, or the first view."""
    return torch.log_softmax(view_logp.mean(dim=0), dim=1) if tta else view_logp[0]


def calibrated(log_probs: torch.Tensor, bundle: ModelBundle) -> np.ndarray:
    """Class probabilities after the card's temperature scaling."""
    return torch.softmax(log_probs / bundle.card.temperature, dim=1).cpu().numpy()


def predict_probs(bundle: ModelBundle, images: Cutouts, *, tta: bool | None = None,
                  batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Calibrated class probabilities (n, classes) for uint8 NHWC cutouts; ``tta`` None: the card's."""
    bundle.model.eval()
    use_tta = bundle.card.tta if tta is None else tta
    out = [calibrated(logits_for(bundle, prepare_batch(images[part], bundle), use_tta), bundle)
           for part in iter_chunks(len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(bundle.card.classes)), dtype=np.float32)


@torch.inference_mode()
def view_log_probs(bundle: ModelBundle, images: Cutouts, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Log-probabilities of every galaxy in each of the 8 symmetric views, (8, n, classes):
    one pass serves test-time averaging, calibration and the symmetry check."""
    bundle.model.eval()
    out = [batch_view_log_probs(bundle, prepare_batch(images[part], bundle)).cpu()
           for part in iter_chunks(len(images), batch_size)]
    return torch.cat(out, dim=1) if out else torch.zeros(8, 0, len(bundle.card.classes))


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
