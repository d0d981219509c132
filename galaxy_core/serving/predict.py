"""Classify images with a saved model bundle: files, folders or uploaded bytes, any size or mode;
a file that cannot be read gets its reason and the others are still classified."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from galaxy_core.base.atomic import write_bytes_atomic, write_text_atomic
from galaxy_core.base.config import ANSWERS, CLASSES, PredictConfig
from galaxy_core.data.framing import NO_GALAXY, Framing, frame_image, runs_past
from galaxy_core.data.geometry import model_view
from galaxy_core.model.bundle import ModelBundle, load_bundle
from galaxy_core.model.card import ModelCard
from galaxy_core.serving.gradcam import grad_cam, grad_cam_overlay, overlay_heatmap, peak_in_cutout
from galaxy_core.serving.inference import Outputs, iter_chunks, predict_outputs
from galaxy_core.sources.images import (
    MAX_DECODED_SIDE,
    ImageLoadError,
    ImageSource,
    is_greyscale,
    load_image,
    source_size,
)


def framing_threads() -> int:
    """Threads that decode and frame a batch of inputs at once: the cores torch's own threads
    leave free, plus one. With torch on every core, one: its OpenMP threads keep spinning on the
    cores after a forward pass, and framing threads beside them ran 2x slower (a batch of 256
    cutouts, 2 cores: 22 against 50 images/s; with one torch thread, 2 framing threads gave 67
    against 57)."""
    return max(1, min(8, (os.cpu_count() or 1) - torch.get_num_threads() + 1))


LoadedImage = tuple[Framing, str | None, tuple[float, float]]
"""An input decoded and framed: its framing, its colour warning and the file's pixels per decoded pixel."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
CSV_COLUMNS = ["path", "label", *[f"p_{c.lower()}" for c in CLASSES], "error",
               *[f"vote_{a}" for a in ANSWERS], "warning", "saliency_peak_x", "saliency_peak_y"]
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


GREYSCALE_WARNING = ("greyscale image: the model was trained on colour images, so its answer may differ from "
                     "a colour one")


def colour_warning(image: Image.Image, card: ModelCard) -> str | None:
    """A warning for a greyscale image, unless the model's card says it was trained for them."""
    if card.trained_for_greyscale or not is_greyscale(image):
        return None
    return GREYSCALE_WARNING


def no_galaxy(framing: Framing | None) -> bool:
    """Whether the framer found no galaxy (blank, only point sources or noise, not the sky): such
    an image gets no class, only its warning."""
    return framing is not None and bool(framing.warning) and framing.warning.startswith(NO_GALAXY)


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
    # Clipped to the picture, so a square that runs past the image is still drawn (its part
    # inside the image), and a line along the border stays visible.
    width, height = out.size
    thick = max(2, round(max(width, height) / 128))
    x0, y0 = min(max(left, 0), width - thick), min(max(top, 0), height - thick)
    x1, y1 = max(min(left + side - 1, width - 1), x0 + thick), max(min(top + side - 1, height - 1), y0 + thick)
    ImageDraw.Draw(out).rectangle((x0, y0, x1, y1), outline=(80, 220, 255), width=thick)
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
    saliency_peak: tuple[float, float] | None = None  # Grad-CAM's hottest point, in the file's pixels

    @property
    def classified(self) -> bool:
        """Whether there is an answer: the image was read and the framer found a galaxy in it (a
        low-confidence answer is still an answer, shown with its warning)."""
        return self.error is None and self.label is not None

    def row(self) -> dict[str, str]:
        probs, votes = self.probabilities or {}, self.votes or {}
        return {"path": self.name, "label": self.label or "",
                **{f"p_{c.lower()}": (f"{probs[c]:.6f}" if c in probs else "") for c in CLASSES},
                "error": self.error or "",
                **{f"vote_{a}": (f"{votes[a]:.6f}" if a in votes else "") for a in ANSWERS},
                "warning": self.warning or "",
                **{f"saliency_peak_{axis}": (f"{v:.1f}" if self.saliency_peak else "")
                   for axis, v in zip("xy", self.saliency_peak or (0.0, 0.0))},
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
    def load(cls, config: PredictConfig | None = None, device: str = "cpu") -> Classifier:
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
            if no_galaxy(framing):  # nothing to classify: the warning says why, and no class is given
                result.warning = framing.warning
                continue
            p = outputs.probs[j]
            result.probabilities = {c: float(v) for c, v in zip(CLASSES, p)}
            result.label = CLASSES[int(np.argmax(p))]
            # A warning set before classifying (a greyscale image) comes after the answer's own.
            notes = [answer_warning(framing, p, self.card.confidence_floor), result.warning]
            result.warning = "; ".join(n for n in notes if n) or None
            if outputs.votes is not None:
                result.votes = {a: float(v) for a, v in zip(ANSWERS, outputs.votes[j])}
            if outputs.tree is not None and self.card.tree is not None:
                result.tree = {stem: float(v) for stem, v in zip(self.card.tree.stems, outputs.tree[j])}

    def predict(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None,
                progress: Callable[[int, int], None] | None = None,
                saliency_dir: Path | None = None) -> list[Prediction]:
        """Classify many inputs; an unreadable one gets an error and the rest still get results.
        ``progress(done, total)`` hears after each batch how many inputs are done. With
        ``saliency_dir``, each classified image also gets its Grad-CAM peak and a heat-map PNG there."""
        names = list(names) if names is not None else [str(s) if isinstance(s, (str, os.PathLike))
                                                       else f"image {i + 1}" for i, s in enumerate(sources)]
        results = [Prediction(name) for name in names]
        taken: set[Path] = set()  # heat-map files written by this run
        batches = self._framed_batches(sources, list(iter_chunks(len(sources), self.config.batch_size)))
        with contextlib.closing(batches):  # an error here cancels the framing ahead at once
            for part, loaded in batches:
                good: list[tuple[int, Framing]] = []
                scales: dict[int, tuple[float, float]] = {}  # file pixels per decoded pixel
                for i, one in zip(range(part.start, part.stop), loaded):
                    if isinstance(one, str):
                        results[i].error = one
                    else:
                        framed, results[i].warning, scales[i] = one
                        good.append((i, framed))
                self.classify_framed([f for _, f in good], [results[i] for i, _ in good])
                if saliency_dir is not None:
                    for i, framing in good:
                        if results[i].classified:
                            self._saliency(results[i], framing, scales[i], saliency_dir, names[i], taken)
                if progress is not None:
                    progress(part.stop, len(sources))
        return results

    def _framed_batches(self, sources: Sequence[ImageSource],
                        parts: list[slice]) -> Iterator[tuple[slice, list[LoadedImage | str]]]:
        """Each batch of inputs decoded and framed, in order. Each image is reduced as it is decoded
        and only its framed cutout is kept, so a folder of large photos never sits in memory. The
        images are framed on a thread per free core (PIL's decoders and scipy.ndimage release the
        GIL), and the next batch is framed while the caller classifies this one, so at most two
        batches of cutouts are held; stopping early (an error, Ctrl-C) cancels what has not begun."""
        with ThreadPoolExecutor(max_workers=framing_threads()) as pool:
            def submit(part: slice) -> list[Future]:
                return [pool.submit(self._load_and_frame, sources[k]) for k in range(part.start, part.stop)]

            try:
                ahead = submit(parts[0]) if parts else []
                for n, part in enumerate(parts):
                    current, ahead = ahead, submit(parts[n + 1]) if n + 1 < len(parts) else []
                    yield part, [future.result() for future in current]
            finally:
                pool.shutdown(wait=True, cancel_futures=True)

    def _load_and_frame(self, source: ImageSource) -> LoadedImage | str:
        """One input decoded and framed, with its colour warning and the file's pixels per decoded
        pixel; or why it cannot be read."""
        try:
            image = load_image(source, max_pixels=self.config.max_pixels, max_side=MAX_DECODED_SIDE)
            file_size = source_size(image)
            scale = (file_size[0] / image.width, file_size[1] / image.height)
            return self.frame(image), colour_warning(image, self.card), scale
        except ImageLoadError as exc:
            return str(exc)

    def _saliency(self, result: Prediction, framing: Framing, scale: tuple[float, float], folder: Path,
                  name: str, taken: set[Path]) -> None:
        """The answer's Grad-CAM over the framed galaxy: its peak, in the file's pixels, on
        ``result``, and the heat map over the network's view as a PNG in ``folder``."""
        framed = Image.fromarray(framing.image)
        heat = grad_cam(self.bundle, framed, CLASSES.index(result.label), tta=self.tta)
        result.saliency_peak = peak_in_image(heat, self.bundle.geometry, framing, scale)
        folder.mkdir(parents=True, exist_ok=True)
        picture = overlay_heatmap(model_view(framed, self.bundle.geometry), heat)
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        write_bytes_atomic(saliency_path(folder, name, taken), buffer.getvalue())

    def grad_cam(self, image: Image.Image, class_index: int | None = None) -> np.ndarray:
        """Grad-CAM of the answer this classifier gives (its views, its class)."""
        return grad_cam(self.bundle, image, class_index, tta=self.tta)

    def grad_cam_overlay(self, image: Image.Image, class_index: int | None = None) -> Image.Image:
        return grad_cam_overlay(self.bundle, image, class_index, tta=self.tta)

    def model_view(self, image: Image.Image) -> Image.Image:
        """The crop of ``image`` that the network sees, at its input size (for overlays)."""
        return model_view(image, self.bundle.geometry)


def peak_in_image(heat: np.ndarray, geometry, framing: Framing,  # noqa: ANN001 - an InputGeometry
                  scale: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """Grad-CAM's hottest point in the input image's pixels: from the network's view to the framed
    cutout, through the framing box to the decoded image, and by ``scale`` to the file's pixels."""
    u, v = peak_in_cutout(heat, geometry)
    left, top, side = framing.box
    per = side / geometry.source_size
    # Continuous coordinates (a pixel spans [i, i + 1)) until the end, then the pixel's index.
    return (left + u * per) * scale[0] - 0.5, (top + v * per) * scale[1] - 0.5


def saliency_path(folder: Path, name: str, taken: set[Path]) -> Path:
    """``folder/STEM.png`` for an input, or ``STEM-2.png`` ... when an earlier input of the same
    run (in ``taken``, which this adds to) has the same stem."""
    stem = Path(name).stem or "image"
    path, n = folder / f"{stem}.png", 1
    while path in taken:
        n += 1
        path = folder / f"{stem}-{n}.png"
    taken.add(path)
    return path


@dataclass
class Classified:
    """One input's prediction, with small copies of its image for display and explanation."""

    prediction: Prediction
    preview: Image.Image | None = None
    size: tuple[int, int] | None = None  # as decoded (reduced for a large photo): the framing box's scale
    framing: Framing | None = None
    file_size: tuple[int, int] | None = None  # the file's own width and height

    @property
    def caption(self) -> str:
        """What the upload picture shows, in true numbers: the file's size, and where the framed
        square lies (inside the image, or reaching past it into added sky)."""
        width, height = self.file_size or self.size or (0, 0)
        text = f"uploaded ({width}×{height})"
        if self.framing is None or self.size is None:
            return text
        if runs_past(self.framing.box, self.size):
            return f"{text}; the model reads the boxed part, with sky added where its square runs past the image"
        return f"{text}; the box is what the model reads"

    @property
    def framed(self) -> Image.Image | None:
        """The framed cutout the network reads, as a picture."""
        return None if self.framing is None else Image.fromarray(self.framing.image)


def classify_uploads(classifier: Classifier, items: Sequence[tuple[str, bytes]],
                     preview_size: int = 256, forward_lock: ContextManager[Any] | None = None) -> list[Classified]:
    """Classify uploads (name, bytes), decoding one at a time and keeping only a preview and the
    framed cutout the network reads: many large photos then fit in memory, and the predictions
    equal those for the full images. A bad file gets an error; the rest carry on.

    ``forward_lock`` (a model shared between threads) is held for the forward pass only, never
    while images are decoded and framed."""
    out: list[Classified] = []
    for name, data in items:
        try:
            image = load_image(data, max_pixels=classifier.config.max_pixels, max_side=MAX_DECODED_SIDE)
        except ImageLoadError as exc:
            out.append(Classified(Prediction(name, error=str(exc))))
            continue
        preview = image.copy()
        preview.thumbnail((preview_size, preview_size))
        prediction = Prediction(name, warning=colour_warning(image, classifier.card))
        out.append(Classified(prediction, preview, image.size, classifier.frame(image), source_size(image)))
    good = [c for c in out if c.framing is not None]  # batched by the forward pass itself
    with forward_lock if forward_lock is not None else contextlib.nullcontext():
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
