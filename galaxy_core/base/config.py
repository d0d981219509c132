"""One plain dataclass per job, validated once when it is made: the CLI and the app build the
same objects, and the CLI's defaults are read from them."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSES: tuple[str, ...] = ("Spiral", "Elliptical", "Uncertain")
"""Class names in the order of every probability vector the package produces."""
ANSWERS: tuple[str, ...] = ("smooth", "features", "artifact")
"""The first Galaxy Zoo question's answers (smooth; features or disk; star or artifact), in the
order of every vote-fraction vector."""

ARCHITECTURES: tuple[str, ...] = ("resnet_small", "plain_cnn", "d4_resnet")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
BALANCE_CHOICES: tuple[str, ...] = ("off", "median", "max")
"""Class balancing of the training views: none, towards the median class count, or the largest."""
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
LABEL_RULES: tuple[str, ...] = ("votes", "debiased")
"""Which vote fractions make a galaxy's class: the volunteers' own (weighted) fractions, or Galaxy
Zoo's redshift-debiased ones; either way a class needs more than CLASS_THRESHOLD."""
DEFAULT_LABEL_RULE = "votes"
"""The rule a new model is trained with: what volunteers see in the image."""
LEGACY_LABEL_RULE = "debiased"
"""The rule of models and checkpoints saved before the rule was a setting (the only one then)."""
CLASS_THRESHOLD = 0.8
"""A class needs a vote fraction above this (Galaxy Zoo 1's SPIRAL / ELLIPTICAL flags)."""
DEFAULT_CATALOGUE_URL = "https://data.galaxyzoo.org/galaxy-zoo-1/GalaxyZoo1_DR_table2.csv.gz"
DEFAULT_CUTOUT_URL = "https://skyserver.sdss.org/dr16/SkyServerWS/ImgCutout/getjpeg"
CUTOUT_SIZE = 128
"""Side in pixels of the SDSS cutouts the project downloads, caches and trains on."""
PIXEL_SCALE = 0.2
"""Arcseconds per pixel of those cutouts (the ImgCutout ``scale``)."""


class GalaxyError(Exception):
    """Base class for errors a user can fix; the CLI and app show only the message."""


class ConfigError(GalaxyError):
    """A setting is out of range or inconsistent."""


@dataclass(frozen=True)
class Setting:
    """One training setting as every front end shows it: the form's words, the help text, and the
    range TrainConfig accepts (the CLI, the Train page and the card reader all read it here)."""

    label: str
    help: str
    low: float | None = None
    high: float | None = None

    def check(self, value: float | None) -> None:
        """A ConfigError naming the setting and its range when ``value`` lies outside it (NaN too)."""
        if value is None:
            return
        words = self.label.split(" (")[0].lower()
        low_ok = self.low is None or value >= self.low
        high_ok = self.high is None or value <= self.high
        if low_ok and high_ok:
            return
        if self.low is not None and self.high is not None:
            raise ConfigError(f"{words} must be between {self.low:g} and {self.high:g}, got {value}")
        bound = f"at least {self.low:g}" if self.low is not None else f"at most {self.high:g}"
        raise ConfigError(f"{words} must be {bound}, got {value}")


TRAIN_SETTINGS: dict[str, Setting] = {
    "epochs": Setting("Epochs", "passes over the training views", 1, 10_000),
    "batch_size": Setting("Batch size", "images per step", 1, 65_536),
    "lr": Setting("Learning rate", "peak learning rate (one-cycle)", 1e-6, 1),
    "weight_decay": Setting("Weight decay", "AdamW decay", 0, 10),
    "label_smoothing": Setting("Label smoothing", "mix this much of a uniform distribution into the targets", 0, 0.99),
    "aux_weight": Setting("Vote-fraction head weight",
                          "weight of the vote-fraction loss; 0 trains no vote head (needed where the "
                          "dataset has no vote fractions)", 0, 10),
    "tree_weight": Setting("Decision-tree head weight",
                           "weight of the whole Galaxy Zoo 2 decision tree's loss (every question's vote "
                           "counts); 0 trains no tree head (needed where the dataset has no per-answer counts)",
                           0, 10),
    "greyscale": Setting("Greyscale share", "share of training views turned to greyscale, so a greyscale "
                                            "image gets the class of its colour original", 0, 1),
    "colour_jitter": Setting("Colour balance jitter", "random per-channel gain of up to this much (0.2: "
                                                      "x0.8 to x1.2) on training views", 0, 0.9),
    "low_res": Setting("Low-resolution share", "share of training views seen 1.5 to 3 times coarser, as a "
                                               "small galaxy in a wide-field image is once framed", 0, 1),
    "max_zoom": Setting("Zoom range", "with --jitter, random zoom of up to this much either way (0.1: "
                                      "x0.9 to x1.1)", 0, 0.9),
    "input_size": Setting("Image size (px)", "network input in pixels (the crop is resized to it)", 16, 512),
    "crop": Setting("Centre crop (px)", "centre crop of the cutout in pixels, before resizing", 16, None),
    "width": Setting("Network width", "channels of the first stage", 4, 128),
    "depth": Setting("Blocks per stage", "residual blocks per stage", 1, 8),
    "seed": Setting("Seed", "seeds the split (unless a split seed is given), balancing, shuffling and "
                            "augmentation", 0, 2**32 - 1),
    "split_seed": Setting("Split seed", "seeds the split alone (default: the seed), so models trained with "
                                        "different seeds can share their held-out galaxies", 0, 2**32 - 1),
    "val_fraction": Setting("Validation fraction", "share of galaxies held out for calibration", 0.001, 0.499),
    "test_fraction": Setting("Test fraction", "share of galaxies held out for the card's metrics", 0.001, 0.499),
    "num_threads": Setting("Threads", "CPU threads (default: all cores)", 1, 1024),
    "max_galaxies": Setting("Use at most N galaxies", "use a seeded random subset of this many galaxies", 3, None),
    "soft_labels": Setting("Train on vote fractions",
                           "soft targets from the vote fractions (off: the hard class; needed where the "
                           "dataset has no vote fractions)"),
    "augment": Setting("Random rotations and flips", "random rotations and flips"),
    "jitter": Setting("Any-angle rotation, zoom and shift", "random any-angle rotation, zoom and shift"),
    "tta": Setting("Average 8 symmetries at test time", "average the 8 symmetries at test time"),
    "precision": Setting("Arithmetic", "bf16: bfloat16 autocast, about twice as fast on CPUs and GPUs with "
                                       "native bfloat16 (slower where it is emulated)"),
    "balance": Setting("Class balancing", "rotate copies of rare classes and, towards the median, cull "
                                          "common ones"),
    "label_rule": Setting("Labels", "which vote fractions make the class: votes, what volunteers saw in the "
                                    "image; debiased, Galaxy Zoo's distance-corrected morphology (either way a "
                                    f"class needs more than {CLASS_THRESHOLD:g})"),
    "framing": Setting("Frame each galaxy as uploads are framed",
                       "frame each cutout (and later each upload) so the galaxy's r90 is this fraction of "
                       "the side", 0.02, 0.5),
}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else a ConfigError naming the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _paths(config: Any, *names: str) -> None:
    """Turn str fields into Paths on a frozen dataclass (the app and JSON hand in strings)."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(config, name, Path(value))


MODEL_DIR_ENV = "GALAXY_MODEL_DIR"
"""The environment variable that names the model ``predict`` and ``evaluate`` use by default."""


def default_model_dir() -> Path:
    """The shipped model, overridable with GALAXY_MODEL_DIR: ``models/default`` of a checkout, or
    the copy an installed package carries as package data (``galaxy_core/_models/default``)."""
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    installed = package / "_models" / "default"
    return installed if installed.is_dir() else package.parent / "models" / "default"


def default_cache_root() -> Path:
    """Where packed image caches live: GALAXY_CACHE_DIR, else the user's cache folder.

    Caches are keyed by their content, so one root serves every dataset, and the dataset folder
    itself (which may be read-only or shared) is never written to.
    """
    env = os.environ.get("GALAXY_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "galaxy-classification"


@dataclass(frozen=True)
class DownloadConfig:
    """How to fetch SDSS colour cutouts for a catalogue."""

    out_dir: Path
    cutout_url: str = DEFAULT_CUTOUT_URL
    cutout_size: int = CUTOUT_SIZE
    pixel_scale: float = PIXEL_SCALE
    workers: int = 16
    retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 30.0
    max_requests_per_s: float | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        _paths(self, "out_dir")
        _require(8 <= self.cutout_size <= 2048,
                 f"--size must be between 8 and 2048 pixels, got {self.cutout_size}")
        _require(0.01 <= self.pixel_scale <= 10,
                 f"--scale must be between 0.01 and 10 arcsec/pixel, got {self.pixel_scale}")
        _require(1 <= self.workers <= 256, f"--workers must be between 1 and 256, got {self.workers}")
        _require(self.retries >= 0, f"retries must be >= 0, got {self.retries}")
        _require(self.retries <= 100, f"retries must be at most 100, got {self.retries}")
        _require(self.limit is None or self.limit >= 1, f"--limit must be at least 1, got {self.limit}")
        _require(self.max_requests_per_s is None or self.max_requests_per_s > 0,
                 f"--max-rate must be positive, got {self.max_requests_per_s}")
        _require(0 < self.timeout_s <= 3600, f"--timeout must be between 0 and 3600 seconds, got {self.timeout_s}")
        _require(0 <= self.backoff_s <= 600, f"backoff must be between 0 and 600 seconds, got {self.backoff_s}")
        _require(self.cutout_url.startswith(("http://", "https://")),
                 f"--cutout-url must be an http(s) URL, got {self.cutout_url!r}")


@dataclass(frozen=True)
class SplitConfig:
    """How to split one dataset by galaxy; the split is a pure function of these fields and the
    galaxies' ids and classes."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction", "seed"):
            TRAIN_SETTINGS[name].check(getattr(self, name))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; stored in checkpoints and model cards."""

    data_dir: Path
    out_dir: Path
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    aux_weight: float = 0.0
    tree_weight: float = 0.0
    greyscale: float = 0.0
    colour_jitter: float = 0.0
    low_res: float = 0.0
    max_zoom: float = 0.1
    input_size: int = 64
    crop: int = 96
    arch: str = "resnet_small"
    width: int = 32
    depth: int = 2
    balance: str = "median"
    soft_labels: bool = True
    augment: bool = True
    jitter: bool = False
    tta: bool = True
    seed: int = 0
    # Seeds the split when set; otherwise ``seed`` does (a seed study or an ensemble keeps one split).
    split_seed: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    num_threads: int | None = None
    device: str = "auto"
    max_galaxies: int | None = None
    cache_dir: Path | None = None
    precision: str = "fp32"
    label_rule: str = DEFAULT_LABEL_RULE
    # Frame every cutout so the galaxy's r90 is this fraction of its side, as uploads are framed
    # (None: cutouts as downloaded). 0.3 is about the median of the SDSS cutouts at 0.2"/pixel.
    framing: float | None = 0.3
    # Start from this saved model's weights (same network; heads it lacks start fresh). Its
    # training galaxies must not be this run's validation or test galaxies.
    init_from: Path | None = None

    def __post_init__(self) -> None:
        _paths(self, "data_dir", "out_dir", "cache_dir", "init_from")
        _require(self.label_rule in LABEL_RULES,
                 f"labels must be {' or '.join(LABEL_RULES)}, got {self.label_rule!r}")
        for name, setting in TRAIN_SETTINGS.items():
            if setting.low is not None or setting.high is not None:
                setting.check(getattr(self, name))
        _require(self.crop >= self.input_size // 2, f"crop ({self.crop}) is too small for image size {self.input_size}")
        _require(self.crop <= CUTOUT_SIZE, f"crop must be at most the {CUTOUT_SIZE}-pixel cutout it is taken from, "
                                           f"got {self.crop}")
        _require(self.balance in BALANCE_CHOICES,
                 f"balance must be {', '.join(BALANCE_CHOICES)}, got {self.balance!r}")
        _require(self.arch in ARCHITECTURES,
                 f"unknown architecture {self.arch!r}: choose from {', '.join(ARCHITECTURES)}")
        _require(self.device in DEVICES, f"device must be auto, cpu or cuda, got {self.device!r}")
        check_precision(self.precision)
        _ = self.split  # validates the split fractions and the seed

    @property
    def split(self) -> SplitConfig:
        seed = self.seed if self.split_seed is None else self.split_seed
        return SplitConfig(self.val_fraction, self.test_fraction, seed)

    @property
    def aux_outputs(self) -> int:
        """Outputs of the vote-fraction head (smooth, features, artifact), when it is trained at all."""
        return 3 if self.aux_weight > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("data_dir", "out_dir", "cache_dir", "init_from"):
            out[name] = None if out[name] is None else str(out[name])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From a checkpoint's or card's config, including those saved before a setting was
        renamed (``image_size``; ``balance`` with ``balance_target``) or added (its default)."""
        values = dict(values)
        if "labels" in values:  # its name before it was label_rule
            values.setdefault("label_rule", values.pop("labels"))
        values.setdefault("label_rule", LEGACY_LABEL_RULE)
        values.setdefault("framing", None)  # nor were cutouts framed
        if "image_size" in values:
            values.setdefault("input_size", values.pop("image_size"))
        if isinstance(values.get("balance"), bool):
            values["balance"] = values.pop("balance_target", "median") if values["balance"] else "off"
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class EvaluateConfig:
    """Which model to measure on which labelled dataset folder."""

    data_dir: Path
    model_dir: Path = field(default_factory=default_model_dir)
    tta: bool | None = None  # None: as the model card says
    label_rule: str | None = None  # None: the rule the model was trained on
    device: str = "cpu"
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        _paths(self, "data_dir", "model_dir", "cache_dir")
        _require(self.label_rule is None or self.label_rule in LABEL_RULES,
                 f"labels must be {' or '.join(LABEL_RULES)}, got {self.label_rule!r}")
        _require(self.device in DEVICES, f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class PredictConfig:
    """How to classify images with a saved model bundle."""

    model_dir: Path = field(default_factory=default_model_dir)
    tta: bool | None = None
    precision: str | None = None  # None: as the model was trained, float32 where bf16 is emulated
    batch_size: int = 64
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        _paths(self, "model_dir")
        if self.precision is not None:
            check_precision(self.precision)
        _require(1 <= self.batch_size <= 4096, f"batch size must be between 1 and 4096, got {self.batch_size}")
        _require(1 <= self.max_pixels, f"max pixels must be positive, got {self.max_pixels}")
