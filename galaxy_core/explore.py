"""What the dashboard needs beyond the pipeline itself: its folders, safe names, listings of
datasets and models, sample galaxies, pixel statistics, single cutouts, and tables for charts.

Everything here is plain Python on files and arrays, so the app's pages stay thin and these
functions are tested without a browser.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .atomic import write_bytes_atomic
from .bundle import CARD_NAME, BundleError, read_card, read_evaluation
from .catalogue import CatalogueFormat, read_catalogue
from .checkpoint import CHECKPOINT_NAME, discard_checkpoint
from .config import CLASSES, ConfigError, DownloadConfig, GalaxyError, TrainConfig
from .dataset import DatasetError, PackedDataset, image_path, load_catalogue_with_images
from .download import IMAGES_DIR, CutoutClient, DownloadProgress, DownloadReport, download_cutouts
from .images import ImageLoadError, load_image
from .jobs import Task
from .normalise import compute_channel_stats
from .predict import Classifier, Prediction, overlay_heatmap
from .train import TrainProgress, TrainResult, train

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SHIPPED_MODEL = "default"
UPLOADED_CATALOGUE = "source-catalogue.csv"


class InvalidNameError(GalaxyError):
    """A dataset or model name that could escape its folder or clash with the shipped model."""


class CutoutError(GalaxyError):
    """One cutout could not be fetched for the coordinates given."""


# --- folders and names -------------------------------------------------------------------------

@dataclass(frozen=True)
class AppFolders:
    """Where the app reads and writes: datasets, models and the packed image cache."""

    data_root: Path
    models_root: Path
    cache_root: Path

    @classmethod
    def from_env(cls, repo: Path, environ: Mapping[str, str] = os.environ) -> "AppFolders":
        """GALAXY_DATA_ROOT / GALAXY_MODELS_ROOT / GALAXY_CACHE_DIR, else folders in the repo."""
        data_root = Path(environ.get("GALAXY_DATA_ROOT") or Path(repo) / "data")
        models_root = Path(environ.get("GALAXY_MODELS_ROOT") or Path(repo) / "models")
        cache_root = Path(environ.get("GALAXY_CACHE_DIR") or data_root / ".cache")
        return cls(data_root, models_root, cache_root)


def validate_name(name: str, what: str) -> str:
    """The only names the app joins to its folders for writing: no separators, dots or spaces."""
    name = name.strip()
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(f"{what} name {name!r} is not allowed: use 1 to 64 letters, digits, "
                               "'-' or '_' (no spaces, dots or slashes)")
    return name


def new_dataset_dir(data_root: Path, name: str) -> Path:
    return Path(data_root) / validate_name(name, "dataset")


def model_dir_for_training(models_root: Path, name: str) -> Path:
    """The folder a training run may write to; a finished model without a checkpoint is kept.

    A folder with a checkpoint belongs to an earlier run of the app (or CLI) and resumes; a bare
    bundle (like the shipped model) would be overwritten by a fresh run, so it is refused.
    """
    name = validate_name(name, "model")
    if name == SHIPPED_MODEL:
        raise InvalidNameError(f"'{SHIPPED_MODEL}' is the shipped model; choose another name")
    out_dir = Path(models_root) / name
    if (out_dir / CARD_NAME).is_file() and not (out_dir / CHECKPOINT_NAME).is_file():
        raise InvalidNameError(f"a finished model named {name!r} already exists in {models_root}; "
                               "choose another name")
    return out_dir


# --- datasets ------------------------------------------------------------------------------------

def is_dataset_dir(path: Path) -> bool:
    return (Path(path) / "catalogue.csv").is_file()


def list_datasets(data_root: Path) -> list[Path]:
    """Folders directly under ``data_root`` that hold a catalogue.csv, by name."""
    root = Path(data_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and is_dataset_dir(p))


def check_dataset_dir(text: str) -> Path:
    """A folder typed by the user, to read from: it must hold catalogue.csv and images/."""
    text = text.strip()
    if not text:
        raise DatasetError("type the path of a folder that holds catalogue.csv and images/")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder")
    if not is_dataset_dir(path):
        raise DatasetError(f"{path} has no catalogue.csv: pick a folder made by a download "
                           "(catalogue.csv + images/)")
    if not (path / IMAGES_DIR).is_dir():
        raise DatasetError(f"{path} has no {IMAGES_DIR}/ folder of cutouts")
    return path.resolve()


def sample_galaxies(data_dir: Path, per_class: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Up to ``per_class`` random galaxies of each class whose image exists: id, path, votes."""
    frame = load_catalogue_with_images(data_dir)
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, Any]]] = {}
    for name in CLASSES:
        members = frame[frame["label"] == name]
        take = rng.choice(len(members), size=min(per_class, len(members)), replace=False)
        out[name] = [{"id": str(r.id), "path": Path(data_dir) / r.image,
                      "frac_smooth": float(r.frac_smooth), "frac_features": float(r.frac_features)}
                     for r in members.iloc[np.sort(take)].itertuples()]
    return out


@dataclass(frozen=True)
class PixelStatistics:
    """Per-channel mean/std in [0, 1] units and 8-bit histograms, over ``images`` galaxies."""

    images: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bin_edges: np.ndarray
    counts: np.ndarray  # (3, bins): R, G, B

    def histogram_frame(self) -> pd.DataFrame:
        centres = (self.bin_edges[:-1] + self.bin_edges[1:]) / 2
        return pd.concat([pd.DataFrame({"value": centres, "channel": channel, "pixels": self.counts[i]})
                          for i, channel in enumerate(("red", "green", "blue"))], ignore_index=True)


def pixel_statistics(dataset: PackedDataset, max_images: int = 2000, bins: int = 32,
                     seed: int = 0, chunk: int = 256) -> PixelStatistics:
    """Statistics of a seeded sample of the packed cache: what normalisation will divide out."""
    if not 1 <= bins <= 256:
        raise ConfigError(f"bins must be between 1 and 256, got {bins}")
    n = len(dataset)
    rows = np.arange(n)
    if n > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
    per_value = np.zeros((3, 256), dtype=np.int64)
    batches = []
    for start in range(0, len(rows), chunk):
        batch = dataset.images(rows[start:start + chunk])
        for c in range(3):
            per_value[c] += np.bincount(batch[..., c].ravel(), minlength=256)
        batches.append(batch)
    stats = compute_channel_stats(batches)
    edges = np.linspace(0, 256, bins + 1)
    which = np.minimum((np.arange(256) * bins) // 256, bins - 1)
    counts = np.stack([np.bincount(which, weights=per_value[c], minlength=bins) for c in range(3)])
    return PixelStatistics(len(rows), stats.mean, stats.std, edges, counts.astype(np.int64))


# --- models --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    card_mtime: float
    card: dict[str, Any] | None
    error: str | None = None


def list_models(models_root: Path) -> list[ModelInfo]:
    """Every folder with a card.json under ``models_root``; unreadable cards carry their error."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(p for p in root.iterdir() if (p / CARD_NAME).is_file()):
        mtime = (path / CARD_NAME).stat().st_mtime
        try:
            found.append(ModelInfo(path.name, path, mtime, read_card(path)))
        except BundleError as exc:
            found.append(ModelInfo(path.name, path, mtime, None, str(exc)))
    return found


def model_summary(card: Mapping[str, Any]) -> dict[str, Any]:
    """The few facts a reader wants first: when, on how much data, how accurate."""
    metrics = card.get("metrics") or {}
    data = card.get("data") or {}
    size = (card.get("input") or {}).get("size")
    return {"trained_at": card.get("trained_at"), "galaxies": data.get("galaxies"),
            "test_galaxies": (data.get("split") or {}).get("test", metrics.get("n")),
            "accuracy": metrics.get("accuracy"), "balanced_accuracy": metrics.get("balanced_accuracy"),
            "ece": metrics.get("ece"), "arch": card.get("arch"), "input_size": size,
            "training_seconds": card.get("training_seconds"),
            "device": (card.get("machine") or {}).get("device")}


def load_evaluation(model_dir: Path) -> dict[str, Any] | None:
    try:
        return read_evaluation(model_dir)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{model_dir}/evaluation.json is unreadable ({exc})") from None


# --- tables for charts ---------------------------------------------------------------------------

def history_frame(history: list[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-epoch history -> long table (epoch, metric, split, value) for loss and accuracy curves."""
    rows = []
    for entry in history:
        for metric in ("loss", "accuracy"):
            for split, prefix in (("train", "train_"), ("validation", "val_")):
                value = entry.get(prefix + metric)
                if value is not None:
                    rows.append({"epoch": int(entry["epoch"]), "metric": metric, "split": split,
                                 "value": float(value)})
    return pd.DataFrame(rows, columns=["epoch", "metric", "split", "value"])


def row_normalise(matrix: np.ndarray | list[list[int]]) -> np.ndarray:
    """Confusion counts -> fraction of each true class (rows with no galaxies stay zero)."""
    m = np.asarray(matrix, dtype=float)
    totals = m.sum(axis=1, keepdims=True)
    return np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)


def per_class_frame(metrics: Mapping[str, Any]) -> pd.DataFrame:
    scores = metrics.get("per_class") or {}
    return pd.DataFrame([{"class": name, **{k: scores[name][k] for k in ("precision", "recall", "f1",
                                                                          "support")}}
                         for name in CLASSES if name in scores])


def reliability_frame(bins: list[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(list(bins), columns=["low", "high", "count", "confidence", "accuracy"])


SortOrder = Literal["most confident first", "least confident first"]


def misclassified_frame(rows: list[Mapping[str, Any]], true: list[str] | None = None,
                        predicted: list[str] | None = None,
                        order: SortOrder = "most confident first") -> pd.DataFrame:
    """Filter wrong predictions by true/predicted class and sort by the winning probability."""
    prob_columns = [f"p_{c.lower()}" for c in CLASSES]
    frame = pd.DataFrame(list(rows), columns=["id", "image", "true", "predicted", *prob_columns])
    frame["confidence"] = frame[prob_columns].max(axis=1) if len(frame) else pd.Series(dtype=float)
    if true:
        frame = frame[frame["true"].isin(true)]
    if predicted:
        frame = frame[frame["predicted"].isin(predicted)]
    ascending = order == "least confident first"
    return frame.sort_values("confidence", ascending=ascending, kind="stable").reset_index(drop=True)


def page_bounds(n: int, page: int, per_page: int) -> tuple[int, int, int]:
    """(start, stop, pages) for 1-based ``page``, clamped to the pages that exist."""
    if per_page < 1:
        raise ConfigError(f"per_page must be at least 1, got {per_page}")
    pages = max(1, math.ceil(n / per_page))
    page = min(max(page, 1), pages)
    start = (page - 1) * per_page
    return start, min(start + per_page, n), pages


def gallery_image(data_dir: Path, relpath: str) -> Path | None:
    """An image listed in an evaluation, if it still exists inside its dataset folder."""
    return image_path(data_dir, relpath)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


# --- work the app runs in the background ------------------------------------------------------

def fetch_cutout(ra: float, dec: float, cutout_url: str, *, size: int = 128, scale: float = 0.2,
                 timeout_s: float = 20.0, retries: int = 2) -> bytes:
    """One validated SDSS JPEG for sky coordinates, as the download step would fetch it."""
    if not 0 <= ra < 360:
        raise CutoutError(f"RA must be in [0, 360) degrees, got {ra}")
    if not -90 <= dec <= 90:
        raise CutoutError(f"Dec must be in [-90, 90] degrees, got {dec}")
    # CutoutClient only reads the request settings; out_dir is never touched.
    config = DownloadConfig(out_dir=Path("."), cutout_url=cutout_url.strip(), size=size, scale=scale,
                            retries=retries, timeout_s=timeout_s, backoff_s=0.3, workers=1)
    config.validate()
    try:
        return CutoutClient(config).fetch(ra, dec)
    except ImageLoadError as exc:
        raise CutoutError(f"no cutout for RA {ra:.5f}, Dec {dec:+.5f} from {config.cutout_url}: "
                          f"{exc}") from None


def download_task(out_dir: Path, catalogue: str | bytes, config: DownloadConfig,
                  fmt: CatalogueFormat = "auto") -> Task:
    """A job that reads a catalogue (URL, path or uploaded bytes) and fetches its cutouts.

    Uploaded bytes are kept in the dataset folder, so the same download can be resumed later
    without uploading the file again.  Progress is a string while the catalogue is read, then
    ``DownloadProgress`` events.
    """
    out_dir = Path(out_dir)
    config = dataclasses.replace(config, out_dir=out_dir)
    config.validate()

    def run(report: Callable[[Any], None], stop: threading.Event) -> DownloadReport:
        source: str | Path = catalogue if isinstance(catalogue, str) else out_dir / UPLOADED_CATALOGUE
        if isinstance(catalogue, bytes):
            write_bytes_atomic(out_dir / UPLOADED_CATALOGUE, catalogue)
        report(f"reading catalogue {source}")
        frame = read_catalogue(source, fmt)
        report(DownloadProgress(0, min(len(frame), config.limit or len(frame)), 0, 0, 0.0))
        return download_cutouts(frame, config, report, stop)

    return run


def uploaded_catalogue(out_dir: Path) -> Path | None:
    """The catalogue file an earlier download into ``out_dir`` was started from, if uploaded."""
    path = Path(out_dir) / UPLOADED_CATALOGUE
    return path if path.is_file() else None


def training_task(config: TrainConfig, restart: bool = False) -> Task:
    """A job that trains, keeping the latest per-epoch history on every progress event.

    The core sends ``prepare`` messages without history; the app's charts would blink empty
    between epochs, so each event carries the last history seen.
    """
    config.validate()

    def run(report: Callable[[Any], None], stop: threading.Event) -> TrainResult:
        if restart:
            discard_checkpoint(config.out_dir)
        history: list[dict] = []

        def progress(event: TrainProgress) -> None:
            nonlocal history
            if event.history:
                history = list(event.history)
            report(dataclasses.replace(event, history=history))

        return train(config, progress, stop, command="streamlit app")

    return run


@dataclass
class Classified:
    """One input's prediction, with small copies of its image for display and explanation."""

    prediction: Prediction
    preview: Image.Image | None = None
    framed: Image.Image | None = None
    size: tuple[int, int] | None = None


def classify_images(classifier: Classifier, items: Sequence[tuple[str, bytes]],
                    preview_size: int = 256) -> list[Classified]:
    """Classify uploads (name, bytes), decoding one at a time and keeping only a preview and the
    square cutout frame the network reads: many large photos then fit in memory, and the
    predictions equal those for the full images.  A bad file gets an error; the rest carry on."""
    out: list[Classified] = []
    for name, data in items:
        try:
            image = load_image(data, max_pixels=classifier.config.max_pixels)
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


def grad_cam_overlay(classifier: Classifier, image: Image.Image, class_index: int | None = None,
                     alpha: float = 0.45) -> Image.Image:
    """Where the network looked, drawn over the crop it actually sees (not the full upload)."""
    view = classifier.model_view(image)
    return overlay_heatmap(view, classifier.grad_cam(image, class_index), alpha)
