"""Where the network looked: Grad-CAM (Selvaraju et al. 2017) on its last convolutional stage,
drawn over exactly the view of the image it was given."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from galaxy_core.data.geometry import cutout_array, model_view
from galaxy_core.model.bundle import ModelBundle
from galaxy_core.serving.inference import prepare_batch


def grad_cam(bundle: ModelBundle, image: Image.Image, class_index: int | None = None) -> np.ndarray:
    """A [0, 1] map at the network's input resolution of what drove ``class_index`` (default: the
    predicted class). Hooks the shared model, so callers serving several users hold a lock."""
    model = bundle.model
    x = prepare_batch(cutout_array(image, bundle.geometry)[None], bundle)
    store: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        store["features"] = output

    handle = model.features.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = model(x)
            index = int(logits.argmax(1)) if class_index is None else class_index
            model.zero_grad(set_to_none=True)
            logits[0, index].backward()
    finally:
        handle.remove()
    features, grads = store["features"].detach(), store["features"].grad
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).cpu().numpy()


COLOUR_MAP = "inferno"
"""The one colour map of every Grad-CAM picture and its scale: black, purple, red, orange, then
bright yellow for the pixels that drove the prediction most (perceptually uniform, so brightness
alone reads as heat, also for colour-blind readers)."""
INFERNO = np.array([  # matplotlib's inferno at 0, 1/8, ..., 1
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164)], dtype=np.float32) / 255.0
CAPTION = "bright yellow = drove the prediction most; dark purple = little; clear = not at all"


def colourise(heat: np.ndarray) -> np.ndarray:
    """[0, 1] values -> RGB in [0, 1] through the inferno colour map."""
    h = np.clip(np.asarray(heat, dtype=np.float32), 0, 1) * (len(INFERNO) - 1)
    low = np.minimum(h.astype(int), len(INFERNO) - 2)
    t = (h - low)[..., None]
    return INFERNO[low] * (1 - t) + INFERNO[low + 1] * t


def colour_scale(width: int = 256, height: int = 16) -> Image.Image:
    """The legend: the colour map from no influence (left) to the most (right)."""
    row = colourise(np.linspace(0, 1, width))
    return Image.fromarray((np.repeat(row[None], height, axis=0) * 255).astype(np.uint8))


def overlay_heatmap(image: Image.Image, heat: np.ndarray, alpha: float = 0.7) -> Image.Image:
    """Blend a [0, 1] heat map in the inferno colours over an image of the same size; each pixel's
    opacity follows its heat, so where the network did not look the galaxy shows as it is."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    h = np.asarray(heat_img, dtype=np.float32) / 255.0
    weight = alpha * h[..., None]
    mixed = (1 - weight) * base + weight * colourise(h)
    return Image.fromarray((np.clip(mixed, 0, 1) * 255).astype(np.uint8))


def grad_cam_overlay(bundle: ModelBundle, image: Image.Image, class_index: int | None = None,
                     alpha: float = 0.7) -> Image.Image:
    """Where the network looked, drawn over the crop it actually sees (not the full upload)."""
    return overlay_heatmap(model_view(image, bundle.geometry), grad_cam(bundle, image, class_index), alpha)
