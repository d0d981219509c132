"""Where the network looked: a gradient map (Grad-CAM, Selvaraju et al. 2017, in its HiResCAM
form) for the answer shown (the same 8 views it averages, each map turned back before the maps
are averaged), drawn over exactly the view of the image it was given."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from galaxy_core.data.geometry import SYMMETRIES, InputGeometry, cutout_array, dihedral, model_view, undo_dihedral
from galaxy_core.model.bundle import ModelBundle
from galaxy_core.serving.inference import prepare_batch


def grad_cam(bundle: ModelBundle, image: Image.Image, class_index: int | None = None,
             tta: bool | None = None) -> np.ndarray:
    """A [0, 1] map at the network's input resolution of what drove ``class_index`` (default: the
    class of the answer shown). With test-time augmentation (the card's, unless ``tta`` says) the
    answer is the mean over the 8 symmetric views, so the map is too: each view's map is turned
    back to the image's frame before they are averaged. Hooks the shared model, so callers serving
    several users hold a lock."""
    model = bundle.model
    use_tta = bundle.card.tta if tta is None else tta
    views = SYMMETRIES if use_tta else 1
    x = prepare_batch(cutout_array(image, bundle.geometry)[None], bundle)
    outputs: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda _m, _i, output: outputs.append(output))
               for block in model.features.children()]
    try:
        with torch.enable_grad():
            batch = torch.cat([dihedral(x, k) for k in range(views)]).clone().requires_grad_(True)
            logits = model(batch).float()
            answer = torch.log_softmax(logits, dim=1).mean(dim=0)
            index = int(answer.argmax()) if class_index is None else class_index
            features = cam_features(outputs, model.saliency_side)
            (grads,) = torch.autograd.grad(logits[:, index].sum(), features)
    finally:
        for handle in handles:
            handle.remove()
    # Each location's own gradient times its features (HiResCAM, Draelos & Carin 2020), rather
    # than Grad-CAM's gradients averaged over the map: the first-order share of the answer's score
    # at each place, so a strong gradient on the galaxy is not spread over the sky beside it.
    cams = F.relu((grads.float() * features.detach().float()).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = torch.stack([undo_dihedral(cams[k], k) for k in range(views)]).mean(dim=0)
    cam = cam - cam.min()
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).cpu().numpy()


def cam_features(outputs: list[torch.Tensor], side: int) -> torch.Tensor:
    """The feature maps Grad-CAM weighs: the last stage's output whose side is at least ``side``
    times the final one's (the network's ``saliency_side``). The final stage of a 64-pixel input is
    4 x 4 cells, too coarse to tell the galaxy from the sky beside it (its hottest cell is as often
    an edge or a corner); the stage before it, 8 x 8, still sees the whole galaxy (measured in
    benchmarks/saliency.py)."""
    final = outputs[-1].shape[-1]
    return next((o for o in reversed(outputs) if o.shape[-1] >= side * final), outputs[-1])


def peak_in_cutout(heat: np.ndarray, geometry: InputGeometry) -> tuple[float, float]:
    """Where ``heat`` (a map of the network's input view) is hottest, in the pixels of the
    ``source_size`` cutout that view was cropped from and resized."""
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    scale = geometry.crop / heat.shape[0]
    start = (geometry.source_size - geometry.crop) // 2  # as crop_and_resize cuts it
    return start + (col + 0.5) * scale, start + (row + 0.5) * scale


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
                     alpha: float = 0.7, tta: bool | None = None) -> Image.Image:
    """Where the network looked, drawn over the crop it actually sees (not the full upload)."""
    return overlay_heatmap(model_view(image, bundle.geometry), grad_cam(bundle, image, class_index, tta), alpha)
