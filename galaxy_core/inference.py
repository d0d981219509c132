"""Batched inference on uint8 cutouts, optionally averaged over the 8 symmetries of the square."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn

from .normalise import ChannelStats, InputGeometry, crop_and_resize, dihedral, normalise
from .precision import autocast


def prepare_batch(images_uint8: np.ndarray | torch.Tensor, stats: ChannelStats,
                  geometry: InputGeometry, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC cutouts -> normalised float NCHW on ``device``."""
    x = torch.as_tensor(images_uint8).to(device, non_blocking=True)
    return normalise(crop_and_resize(x, geometry), stats)


# Views per forward pass on a CPU. A few dozen 64-px views keep a pass's activations in the
# cores' caches: on two EPYC cores, passes of 32 views ran about 1.5x faster per view than passes
# of 512 (a TTA batch of 64 images); see benchmarks/README.md. GPUs take the batch whole.
CPU_VIEWS_PER_PASS = 32


def _passes(x: torch.Tensor, views: int) -> list[torch.Tensor]:
    """Split a batch so a CPU forward pass holds about CPU_VIEWS_PER_PASS views."""
    step = max(1, CPU_VIEWS_PER_PASS // views)
    if x.device.type != "cpu" or x.shape[0] <= step:
        return [x]
    return [x[i:i + step] for i in range(0, x.shape[0], step)]


def _log_probs(model: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    with autocast(x.device, precision):
        logits = model(x)
    return torch.log_softmax(logits.float(), dim=1)


@torch.inference_mode()
def batch_view_log_probs(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Log-probabilities of a normalised batch in each of the 8 symmetric views, (8, n, classes)."""
    out = []
    for part in _passes(x, 8):
        views = torch.cat([dihedral(part, k) for k in range(8)])
        out.append(_log_probs(model, views, precision).view(8, part.shape[0], -1))
    return torch.cat(out, dim=1)


@torch.inference_mode()
def logits_for(model: nn.Module, x: torch.Tensor, tta: bool, precision: str = "fp32") -> torch.Tensor:
    """Mean of log-probabilities over the 8 dihedral views when ``tta``; else one view."""
    if tta:
        return combine_views(batch_view_log_probs(model, x, precision), tta=True)
    return torch.cat([_log_probs(model, part, precision) for part in _passes(x, 1)])


def predict_probs(model: nn.Module, images_uint8: np.ndarray, stats: ChannelStats,
                  geometry: InputGeometry, *, tta: bool = False, batch_size: int = 256,
                  temperature: float = 1.0, precision: str = "fp32") -> np.ndarray:
    """Class probabilities (n, classes) for uint8 NHWC cutouts."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(images_uint8), batch_size):
        x = prepare_batch(images_uint8[start:start + batch_size], stats, geometry, device)
        out.append(torch.softmax(logits_for(model, x, tta, precision) / temperature, dim=1).cpu())
    if not out:
        return np.zeros((0, 3), dtype=np.float32)
    return torch.cat(out).numpy()


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.inference_mode()
def view_log_probs(model: nn.Module, images_uint8: np.ndarray, stats: ChannelStats,
                   geometry: InputGeometry, batch_size: int = 256, precision: str = "fp32") -> torch.Tensor:
    """Log-probabilities of every galaxy in each of the 8 symmetric views, (8, n, classes):
    one pass serves test-time averaging, calibration and the symmetry check."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for part in iter_chunks(len(images_uint8), batch_size):
        x = prepare_batch(images_uint8[part], stats, geometry, device)
        out.append(batch_view_log_probs(model, x, precision).cpu())
    return torch.cat(out, dim=1) if out else torch.zeros(8, 0, 3)


def combine_views(view_logp: torch.Tensor, tta: bool) -> torch.Tensor:
    """(8, n, classes) view log-probabilities -> (n, classes): their mean, or the first view."""
    return torch.log_softmax(view_logp.mean(dim=0), dim=1) if tta else view_logp[0]


class TurnedImages:
    """Lazy uint8 NHWC cutouts, each turned by 90 degrees (``"rot90"``) or mirrored (``"mirror"``)."""

    def __init__(self, images_uint8: np.ndarray, symmetry: str):
        if symmetry not in ("rot90", "mirror"):
            raise ValueError(f"unknown symmetry {symmetry!r}")
        self.images, self.symmetry = images_uint8, symmetry

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, part: slice) -> np.ndarray:
        batch = np.asarray(self.images[part])
        turned = np.rot90(batch, 1, axes=(1, 2)) if self.symmetry == "rot90" else batch[:, :, ::-1]
        return np.ascontiguousarray(turned)


def prediction_agreement(model: nn.Module, images_uint8: np.ndarray, stats: ChannelStats,
                         geometry: InputGeometry, probs: np.ndarray, *, tta: bool,
                         temperature: float = 1.0, precision: str = "fp32") -> dict[str, float]:
    """How often the answer ``probs`` gives for each cutout stays the same when the cutout itself is
    turned by 90 degrees or mirrored and goes through the whole pipeline again (crop, resize,
    views): the invariance a user sees, as opposed to one view's."""
    out: dict[str, float] = {}
    labels = probs.argmax(1)
    for symmetry in ("rot90", "mirror"):
        turned = predict_probs(model, TurnedImages(images_uint8, symmetry), stats, geometry, tta=tta,
                               temperature=temperature, precision=precision)
        out[symmetry] = float((turned.argmax(1) == labels).mean()) if len(labels) else 1.0
        out[f"{symmetry}_max_probability_change"] = float(np.abs(turned - probs).max()) if len(labels) else 0.0
    return out


def agreement_from_views(view_logp: torch.Tensor) -> dict[str, float]:
    """How often the prediction for a galaxy's single view agrees with its 90-degree rotated copy,
    its mirror image, and all 8 symmetric copies at once."""
    preds = view_logp.argmax(dim=2)
    n = max(preds.shape[1], 1)
    return {"rot90": float((preds[1] == preds[0]).sum()) / n,
            "mirror": float((preds[4] == preds[0]).sum()) / n,
            "all_8": float((preds == preds[0]).all(0).sum()) / n}
