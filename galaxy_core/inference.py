"""Batched inference on uint8 cutouts, optionally averaged over the 8 symmetries of the square."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn

from .normalise import ChannelStats, InputGeometry, crop_and_resize, dihedral, normalise


def prepare_batch(images_uint8: np.ndarray | torch.Tensor, stats: ChannelStats,
                  geometry: InputGeometry, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 NHWC cutouts -> normalised float NCHW on ``device``."""
    x = torch.as_tensor(images_uint8).to(device, non_blocking=True)
    return normalise(crop_and_resize(x, geometry), stats)


@torch.inference_mode()
def logits_for(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """Mean of log-probabilities over the 8 dihedral views when ``tta``; else one view."""
    if not tta:
        return torch.log_softmax(model(x).float(), dim=1)
    views = torch.cat([dihedral(x, k) for k in range(8)])
    logp = torch.log_softmax(model(views).float(), dim=1).view(8, x.shape[0], -1)
    return torch.log_softmax(logp.mean(dim=0), dim=1)


def predict_probs(model: nn.Module, images_uint8: np.ndarray, stats: ChannelStats,
                  geometry: InputGeometry, *, tta: bool = False, batch_size: int = 256,
                  temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (n, classes) for uint8 NHWC cutouts."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(images_uint8), batch_size):
        x = prepare_batch(images_uint8[start:start + batch_size], stats, geometry, device)
        out.append(torch.softmax(logits_for(model, x, tta) / temperature, dim=1).cpu())
    if not out:
        return np.zeros((0, 3), dtype=np.float32)
    return torch.cat(out).numpy()


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def symmetry_agreement(model: nn.Module, images_uint8: np.ndarray, stats: ChannelStats,
                       geometry: InputGeometry, batch_size: int = 256) -> dict[str, float]:
    """How often single-view predictions for a galaxy agree with its rotated and mirrored copies."""
    device = next(model.parameters()).device
    agree = {"rot90": 0, "mirror": 0, "all_8": 0}
    n = len(images_uint8)
    with torch.inference_mode():
        for part in iter_chunks(n, batch_size):
            x = prepare_batch(images_uint8[part], stats, geometry, device)
            preds = torch.stack([model(dihedral(x, k)).argmax(1) for k in range(8)])
            agree["rot90"] += int((preds[1] == preds[0]).sum())
            agree["mirror"] += int((preds[4] == preds[0]).sum())
            agree["all_8"] += int((preds == preds[0]).all(0).sum())
    return {k: v / max(n, 1) for k, v in agree.items()}
