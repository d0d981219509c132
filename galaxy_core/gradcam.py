"""Where the network looked: Grad-CAM (Selvaraju et al. 2017) on its last convolutional stage,
drawn over exactly the view of the image it was given."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .bundle import ModelBundle
from .geometry import cutout_array, model_view
from .inference import prepare_batch


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


def overlay_heatmap(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a [0, 1] heat map (red = high) over an image of the same size."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(image.size)
    h = np.asarray(heat_img, dtype=np.float32)[..., None] / 255.0
    colour = np.concatenate([h, np.clip(1.5 * h - 0.5, 0, 1) * 0.8, np.zeros_like(h)], axis=2)
    mixed = (1 - alpha * h) * base + alpha * h * colour
    return Image.fromarray((np.clip(mixed, 0, 1) * 255).astype(np.uint8))


def grad_cam_overlay(bundle: ModelBundle, image: Image.Image, class_index: int | None = None,
                     alpha: float = 0.45) -> Image.Image:
    """Where the network looked, drawn over the crop it actually sees (not the full upload)."""
    return overlay_heatmap(model_view(image, bundle.geometry), grad_cam(bundle, image, class_index), alpha)
