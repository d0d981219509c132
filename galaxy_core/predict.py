"""Classify images with a saved model bundle; explain a prediction with Grad-CAM."""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .atomic import write_text_atomic
from .bundle import ModelBundle, load_bundle
from .config import CLASSES, PredictConfig, check_precision
from .images import ImageLoadError, ImageSource, load_image
from .inference import logits_for, prepare_batch
from .normalise import image_to_array

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
CSV_COLUMNS = ["path", "label", *[f"p_{c.lower()}" for c in CLASSES], "error"]


@dataclass
class Prediction:
    """One image's result: a label and probabilities, or an error saying why there is none."""

    name: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None

    def row(self) -> dict[str, str]:
        probs = self.probabilities or {}
        return {"path": self.name, "label": self.label or "",
                **{f"p_{c.lower()}": (f"{probs[c]:.6f}" if c in probs else "") for c in CLASSES},
                "error": self.error or ""}


class Classifier:
    """A loaded model bundle that turns images into class probabilities."""

    def __init__(self, bundle: ModelBundle, config: PredictConfig | None = None):
        self.bundle = bundle
        self.config = config or PredictConfig(model_dir=bundle.path)
        self.tta = bundle.tta if self.config.tta is None else self.config.tta
        chosen = self.config.precision
        self.precision = bundle.precision if chosen is None else check_precision(chosen)
        self.temperature = float(bundle.card.get("temperature", 1.0))

    @classmethod
    def load(cls, config: PredictConfig | None = None, device: str = "cpu") -> "Classifier":
        config = config or PredictConfig()
        return cls(load_bundle(config.model_dir, device=device), config)

    @property
    def card(self) -> dict:
        return self.bundle.card

    def arrays(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([image_to_array(im, self.bundle.geometry) for im in images])

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 3) probabilities for PIL images of any size, in CLASSES order."""
        if not images:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        out = []
        b = self.bundle
        with torch.inference_mode():
            for start in range(0, len(images), self.config.batch_size):
                batch = self.arrays(images[start:start + self.config.batch_size])
                x = prepare_batch(batch, b.stats, b.geometry, b.device)
                logp = logits_for(b.model, x, self.tta, self.precision) / self.temperature
                out.append(torch.softmax(logp, dim=1).cpu().numpy())
        return np.concatenate(out)

    def predict(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Prediction]:
        """Classify many inputs; an unreadable one gets an error and the rest still get results."""
        names = list(names) if names is not None else [str(s) if isinstance(s, (str, os.PathLike))
                                                       else f"image {i + 1}" for i, s in enumerate(sources)]
        results = [Prediction(name) for name in names]
        # One batch of decoded images at a time: a folder of large photos never sits in memory whole.
        step = max(1, self.config.batch_size)
        for start in range(0, len(sources), step):
            good: list[tuple[int, Image.Image]] = []
            for i in range(start, min(start + step, len(sources))):
                try:
                    good.append((i, load_image(sources[i], max_pixels=self.config.max_pixels)))
                except ImageLoadError as exc:
                    results[i].error = str(exc)
            probs = self.probabilities([image for _, image in good])
            for (i, _), p in zip(good, probs):
                results[i].probabilities = {c: float(v) for c, v in zip(CLASSES, p)}
                results[i].label = CLASSES[int(np.argmax(p))]
        return results

    def grad_cam(self, image: Image.Image, class_index: int | None = None) -> np.ndarray:
        """Grad-CAM (Selvaraju et al. 2017) on the last stage: where the network looked, in [0, 1],
        at the network's input resolution."""
        b = self.bundle
        model = b.model
        x = prepare_batch(self.arrays([image]), b.stats, b.geometry, b.device)
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

    def model_view(self, image: Image.Image) -> Image.Image:
        """The crop of ``image`` that the network sees, at its input size (for overlays)."""
        g = self.bundle.geometry
        array = image_to_array(image, g)
        start = (g.source_size - g.crop) // 2
        crop = Image.fromarray(array[start:start + g.crop, start:start + g.crop])
        return crop.resize((g.size, g.size), Image.Resampling.BILINEAR)


def overlay_heatmap(image: Image.Image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a [0, 1] heat map (red = high) over an image of the same size."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(image.size)
    h = np.asarray(heat_img, dtype=np.float32)[..., None] / 255.0
    colour = np.concatenate([h, np.clip(1.5 * h - 0.5, 0, 1) * 0.8, np.zeros_like(h)], axis=2)
    mixed = (1 - alpha * h) * base + alpha * h * colour
    return Image.fromarray((np.clip(mixed, 0, 1) * 255).astype(np.uint8))


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted, not recursive)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)
    return paths


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for p in predictions:
        writer.writerow(p.row())
    return buffer.getvalue()


def write_predictions_csv(predictions: Sequence[Prediction], path: Path | None) -> None:
    """To a file atomically, or to stdout when ``path`` is None."""
    text = predictions_csv(predictions)
    if path is None:
        sys.stdout.write(text)
        return
    write_text_atomic(Path(path), text)
