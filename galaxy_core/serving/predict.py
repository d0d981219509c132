"""Classify images with a saved model bundle: files, folders or uploaded bytes, any size or mode;
a file that cannot be read gets its reason and the others are still classified."""

from __future__ import annotations

import csv
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from galaxy_core.base.atomic import write_text_atomic
from galaxy_core.base.config import ANSWERS, CLASSES, PredictConfig
from galaxy_core.data.framing import Framing, frame_image
from galaxy_core.data.geometry import model_view
from galaxy_core.model.bundle import ModelBundle, load_bundle
from galaxy_core.serving.gradcam import grad_cam, grad_cam_overlay
from galaxy_core.serving.inference import Outputs, iter_chunks, predict_outputs
from galaxy_core.sources.images import MAX_DECODED_SIDE, ImageLoadError, ImageSource, load_image

def framing_threads() -> int:
    """Threads that decode and frame a batch of inputs at once: the cores torch's own threads
    leave free, plus one. With torch on every core, one: its OpenMP threads keep spinning on the
    cores after a forward pass, and framing threads beside them ran 2x slower (a batch of 256
    cutouts, 2 cores: 22 against 50 images/s; with one torch thread, 2 framing threads gave 67
    against 57)."""
    return max(1, min(8, (os.cpu_count() or 1) - torch.get_num_threads() + 1))

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
CSV_COLUMNS = ["path", "label", *[f"p_{c.lower()}" for c in CLASSES], "error",
               *[f"vote_{a}" for a in ANSWERS], "warning"]
"""The columns of every predictions CSV; a model with a tree head adds one column per answer after
them, named by its GZ2 column stem (``t02_edgeon_a04_yes``): the predicted share of the volunteers
asked that question who would give that answer."""


def answer_warning(framing: Framing | None, probabilities: np.ndarray, floor: float) -> str | None:
    """Why not to trust an answer: what the framer saw, else a top class below the card's floor."""
    if framing is not None and framing.warning:
        return framing.warning
    top = int(np.argmax(probabilities))
    if float(probabilities[top]) < floor:
        return (f"low confidence: no class reaches {floor:.0%} "
                f"(most likely {CLASSES[top]}, {float(probabilities[top]):.0%})")
    return None


ANSWER_WORDS = {"smooth": "smooth", "features": "features or a disk", "artifact": "a star or artifact"}


def vote_sentence(votes: dict[str, float], label_rule: str) -> str:
    """The predicted vote fractions in words, most popular answer first."""
    order = sorted(votes, key=votes.get, reverse=True)  # type: ignore[arg-type]
    first, rest = order[0], order[1:]
    others = ", ".join(f"{votes[a]:.0%} {ANSWER_WORDS[a]}" for a in rest)
    text = f"bout {votes[first]:.0%} of volunteers would call it {ANSWER_WORDS[first]} ({others})."
    return f"A{text}" if label_rule == "votes" else f"Corrected for distance, a{text}"


def outline_framing(preview: Image.Image, framing: Framing, size: tuple[int, int]) -> Image.Image:
    """``preview`` (a thumbnail of an image of ``size``) with the square the framer cut outlined."""
    out = preview.copy()
    scale = preview.size[0] / size[0]
    left, top, side = (v * scale for v in framing.box)
    ImageDraw.Draw(out).rectangle((left, top, left + side - 1, top + side - 1), outline=(80, 220, 255),
                                  width=max(1, round(preview.size[0] / 128)))
    return out


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
    tree: dict[str, float] | None = None  # each tree answer's predicted share, by GZ2 column stem

    def row(self) -> dict[str, str]:
        probs, votes = self.probabilities or {}, self.votes or {}
        return {"path": self.name, "label": self.label or "",
                **{f"p_{c.lower()}": (f"{probs[c]:.6f}" if c in probs else "") for c in CLASSES},
                "error": self.error or "",
                **{f"vote_{a}": (f"{votes[a]:.6f}" if a in votes else "") for a in ANSWERS},
                "warning": self.warning or "",
                **{stem: f"{value:.6f}" for stem, value in (self.tree or {}).items()}}


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

    def frame(self, image: Image.Image) -> Framing:
        """The cutout the network reads: the galaxy found and framed as in training (or the centre
        square, for a model trained on cutouts as downloaded), with the framer's warning."""
        return frame_image(image, self.card.framing, self.bundle.geometry.source_size)

    def _outputs(self, cutouts: np.ndarray) -> Outputs:
        return predict_outputs(self.bundle, cutouts, tta=self.tta, batch_size=self.config.batch_size)

    def classify_framed(self, framings: Sequence[Framing], results: Sequence[Prediction]) -> None:
        """Fill ``results`` with the answers for these framed cutouts, warnings included."""
        if not framings:
            return
        outputs = self._outputs(np.stack([f.image for f in framings]))
        for j, (framing, result) in enumerate(zip(framings, results)):
            p = outputs.probs[j]
            result.probabilities = {c: float(v) for c, v in zip(CLASSES, p)}
            result.label = CLASSES[int(np.argmax(p))]
            result.warning = answer_warning(framing, p, self.card.confidence_floor)
            if outputs.votes is not None:
                result.votes = {a: float(v) for a, v in zip(ANSWERS, outputs.votes[j])}
            if outputs.tree is not None and self.card.tree is not None:
                result.tree = {stem: float(v) for stem, v in zip(self.card.tree.stems, outputs.tree[j])}

    def predict(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
        """Classify many inputs; an unreadable one gets an error and the rest still get results.
        ``progress(done, total)`` hears after each batch how many inputs are done."""
        names = list(names) if names is not None else [str(s) if isinstance(s, (str, os.PathLike))
                                                       else f"image {i + 1}" for i, s in enumerate(sources)]
        results = [Prediction(name) for name in names]
        # Each image is reduced as it is decoded and framed at once, so only its framed cutout is
        # kept: a folder of large photos never sits in memory, whatever the batch size.
        # A batch's images are decoded and framed on a thread per core (PIL's decoders and
        # scipy.ndimage release the GIL), so framing keeps pace with the batched forward pass.
        with ThreadPoolExecutor(max_workers=framing_threads()) as pool:
            for part in iter_chunks(len(sources), self.config.batch_size):
                good: list[tuple[int, Framing]] = []
                indices = range(part.start, part.stop)
                for i, framed in zip(indices, pool.map(lambda k: self._load_and_frame(sources[k]), indices)):
                    if isinstance(framed, str):
                        results[i].error = framed
                    else:
                        good.append((i, framed))
                self.classify_framed([f for _, f in good], [results[i] for i, _ in good])
                if progress is not None:
                    progress(part.stop, len(sources))
        return results

    def _load_and_frame(self, source: ImageSource) -> Framing | str:
        """One input decoded and framed, or why it cannot be read."""
        try:
            image = load_image(source, max_pixels=self.config.max_pixels, max_side=MAX_DECODED_SIDE)
            return self.frame(image)
        except ImageLoadError as exc:
            return str(exc)

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
    size: tuple[int, int] | None = None
    framing: Framing | None = None

    @property
    def framed(self) -> Image.Image | None:
        """The framed cutout the network reads, as a picture."""
        return None if self.framing is None else Image.fromarray(self.framing.image)


def classify_uploads(classifier: Classifier, items: Sequence[tuple[str, bytes]],
                     preview_size: int = 256) -> list[Classified]:
    """Classify uploads (name, bytes), decoding one at a time and keeping only a preview and the
    framed cutout the network reads: many large photos then fit in memory, and the predictions
    equal those for the full images. A bad file gets an error; the rest carry on."""
    out: list[Classified] = []
    for name, data in items:
        try:
            image = load_image(data, max_pixels=classifier.config.max_pixels, max_side=MAX_DECODED_SIDE)
        except ImageLoadError as exc:
            out.append(Classified(Prediction(name, error=str(exc))))
            continue
        preview = image.copy()
        preview.thumbnail((preview_size, preview_size))
        out.append(Classified(Prediction(name), preview, image.size, classifier.frame(image)))
    good = [c for c in out if c.framing is not None]  # batched by the forward pass itself
    classifier.classify_framed([c.framing for c in good], [c.prediction for c in good])
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


def csv_columns(predictions: Sequence[Prediction]) -> list[str]:
    """CSV_COLUMNS, then the tree answers' stems of the model that made these predictions."""
    stems = next((list(p.tree) for p in predictions if p.tree), [])
    return [*CSV_COLUMNS, *stems]


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns(predictions), lineterminator="\n", restval="")
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
