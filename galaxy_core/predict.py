"""Classify images with a saved model bundle: files, folders or uploaded bytes, any size or mode;
a file that cannot be read gets its reason and the others are still classified."""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .atomic import write_text_atomic
from .bundle import ModelBundle, load_bundle
from .config import ANSWERS, CLASSES, PredictConfig
from .geometry import cutout_array, model_view
from .gradcam import grad_cam, grad_cam_overlay
from .images import MAX_DECODED_SIDE, ImageLoadError, ImageSource, load_image
from .inference import Outputs, predict_outputs

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
MAX_BATCH_BYTES = 256 * 1024**2
"""Decoded pixels held for one batch, whatever the batch size."""
CSV_COLUMNS = ["path", "label", *[f"p_{c.lower()}" for c in CLASSES], "error",
               *[f"vote_{a}" for a in ANSWERS], "warning"]


@dataclass
class Prediction:
    """One image's result: a label, probabilities and the vote fractions the model predicts, with
    a warning when the answer should not be trusted; or an error saying why there is none."""

    name: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    votes: dict[str, float] | None = None
    warning: str | None = None

    def row(self) -> dict[str, str]:
        probs, votes = self.probabilities or {}, self.votes or {}
        return {"path": self.name, "label": self.label or "",
                **{f"p_{c.lower()}": (f"{probs[c]:.6f}" if c in probs else "") for c in CLASSES},
                "error": self.error or "",
                **{f"vote_{a}": (f"{votes[a]:.6f}" if a in votes else "") for a in ANSWERS},
                "warning": self.warning or ""}


class Classifier:
    """A loaded model bundle that turns images into class probabilities."""

    def __init__(self, bundle: ModelBundle, config: PredictConfig | None = None):
        self.config = config or PredictConfig(model_dir=bundle.path or PredictConfig().model_dir)
        if self.config.precision is not None:
            bundle = replace(bundle, precision=self.config.precision)
        self.bundle = bundle
        self.tta = bundle.card.tta if self.config.tta is None else self.config.tta

    @classmethod
    def load(cls, config: PredictConfig | None = None, device: str = "cpu") -> "Classifier":
        config = config or PredictConfig()
        return cls(load_bundle(config.model_dir, device=device), config)

    @property
    def card(self):
        return self.bundle.card

    @property
    def precision(self) -> str:
        return self.bundle.precision

    def arrays(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([cutout_array(im, self.bundle.geometry) for im in images])

    def outputs(self, images: Sequence[Image.Image]) -> Outputs:
        """Calibrated class probabilities (n, 3) and vote fractions for PIL images of any size."""
        if not images:
            return Outputs(np.zeros((0, len(CLASSES)), dtype=np.float32))
        return predict_outputs(self.bundle, self.arrays(images), tta=self.tta, batch_size=self.config.batch_size)

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 3) calibrated probabilities for PIL images of any size, in CLASSES order."""
        return self.outputs(images).probs

    def predict(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Prediction]:
        """Classify many inputs; an unreadable one gets an error and the rest still get results."""
        names = list(names) if names is not None else [str(s) if isinstance(s, (str, os.PathLike))
                                                       else f"image {i + 1}" for i, s in enumerate(sources)]
        results = [Prediction(name) for name in names]
        # Each image is reduced as it is decoded and a batch holds at most batch_size images and
        # MAX_BATCH_BYTES of pixels: a folder of large photos never sits in memory whole.
        good: list[tuple[int, Image.Image]] = []
        held = 0
        for i, source in enumerate(sources):
            try:
                image = load_image(source, max_pixels=self.config.max_pixels, max_side=MAX_DECODED_SIDE)
            except ImageLoadError as exc:
                results[i].error = str(exc)
            else:
                good.append((i, image))
                held += image.width * image.height * 3
            if good and (len(good) >= self.config.batch_size or held >= MAX_BATCH_BYTES or i == len(sources) - 1):
                self._fill(results, good)
                good, held = [], 0
        return results

    def _fill(self, results: list[Prediction], good: list[tuple[int, Image.Image]]) -> None:
        outputs = self.outputs([image for _, image in good])
        for j, (i, _) in enumerate(good):
            p = outputs.probs[j]
            results[i].probabilities = {c: float(v) for c, v in zip(CLASSES, p)}
            results[i].label = CLASSES[int(np.argmax(p))]
            if outputs.votes is not None:
                results[i].votes = {a: float(v) for a, v in zip(ANSWERS, outputs.votes[j])}

    def grad_cam(self, image: Image.Image, class_index: int | None = None) -> np.ndarray:
        return grad_cam(self.bundle, image, class_index)

    def grad_cam_overlay(self, image: Image.Image, class_index: int | None = None) -> Image.Image:
        return grad_cam_overlay(self.bundle, image, class_index)

    def model_view(self, image: Image.Image) -> Image.Image:
        """The crop of ``image`` that the network sees, at its input size (for overlays)."""
        return model_view(image, self.bundle.geometry)


@dataclass
class Classified:
    """One input's prediction, with small copies of its image for display and explanation."""

    prediction: Prediction
    preview: Image.Image | None = None
    framed: Image.Image | None = None
    size: tuple[int, int] | None = None


def classify_uploads(classifier: Classifier, items: Sequence[tuple[str, bytes]],
                     preview_size: int = 256) -> list[Classified]:
    """Classify uploads (name, bytes), decoding one at a time and keeping only a preview and the
    square cutout frame the network reads: many large photos then fit in memory, and the
    predictions equal those for the full images. A bad file gets an error; the rest carry on."""
    out: list[Classified] = []
    for name, data in items:
        try:
            image = load_image(data, max_pixels=classifier.config.max_pixels, max_side=MAX_DECODED_SIDE)
        except ImageLoadError as exc:
            out.append(Classified(Prediction(name, error=str(exc))))
            continue
        preview = image.copy()
        preview.thumbnail((preview_size, preview_size))
        framed = Image.fromarray(classifier.arrays([image])[0])
        out.append(Classified(Prediction(name), preview, framed, image.size))
    good = [c for c in out if c.framed is not None]
    for item, prediction in zip(good, classifier.predict([c.framed for c in good],
                                                         [c.prediction.name for c in good])):
        item.prediction = prediction
    return out


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
