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

ARCHITECTURES: tuple[str, ...] = ("resnet_small", "plain_cnn")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
BALANCE_CHOICES: tuple[str, ...] = ("off", "median", "max")
"""Class balancing of the training views: none, towards the median class count, or the largest."""
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
LABEL_RULES: tuple[str, ...] = ("votes", "debiased")
"""Which vote fractions make a galaxy's class: the volunteers' own (weighted) fractions, or Galaxy
Zoo's redshift-debiased ones; either way a class needs more than 0.8."""
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


def default_model_dir() -> Path:
    """The shipped model, overridable with GALAXY_MODEL_DIR."""
    env = os.environ.get("GALAXY_MODEL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models" / "default"


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
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _require(0.0 < value < 0.5, f"{name} must be between 0 and 0.5, got {value}")
        _require(0 <= self.seed < 2**32, f"seed must be between 0 and 2**32 - 1, got {self.seed}")


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
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    num_threads: int | None = None
    device: str = "auto"
    max_galaxies: int | None = None
    cache_dir: Path | None = None
    precision: str = "fp32"
    labels: str = "votes"
    # Frame every cutout so the galaxy's r90 is this fraction of its side, as uploads are framed
    # (None: cutouts as downloaded). 0.3 is about the median of the SDSS cutouts at 0.2"/pixel.
    framing: float | None = 0.3

    def __post_init__(self) -> None:
        _paths(self, "data_dir", "out_dir", "cache_dir")
        _require(self.framing is None or 0.02 <= self.framing <= 0.5,
                 f"framing must be between 0.02 and 0.5 (the galaxy's r90 over the side), got {self.framing}")
        _require(self.labels in LABEL_RULES, f"labels must be {' or '.join(LABEL_RULES)}, got {self.labels!r}")
        _require(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _require(self.epochs <= 10_000, f"epochs must be at most 10000, got {self.epochs}")
        _require(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        _require(self.batch_size <= 65_536, f"batch size must be at most 65536, got {self.batch_size}")
        _require(0 < self.lr <= 1, f"learning rate must be in (0, 1], got {self.lr}")
        _require(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        _require(self.weight_decay <= 10, f"weight decay must be at most 10, got {self.weight_decay}")
        _require(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        _require(0 <= self.aux_weight <= 10, f"aux weight must be in [0, 10], got {self.aux_weight}")
        _require(16 <= self.input_size <= 512, f"image size must be between 16 and 512, got {self.input_size}")
        _require(self.crop >= 16 and self.crop >= self.input_size // 2,
                 f"crop ({self.crop}) is too small for image size {self.input_size}")
        _require(self.crop <= CUTOUT_SIZE, f"crop must be at most the {CUTOUT_SIZE}-pixel cutout it is taken from, "
                                           f"got {self.crop}")
        _require(self.width >= 4, f"width must be at least 4, got {self.width}")
        _require(self.width <= 128, f"width must be at most 128, got {self.width}")
        _require(1 <= self.depth <= 8, f"depth must be between 1 and 8, got {self.depth}")
        _require(self.balance in BALANCE_CHOICES,
                 f"balance must be {', '.join(BALANCE_CHOICES)}, got {self.balance!r}")
        _require(self.arch in ARCHITECTURES,
                 f"unknown architecture {self.arch!r}: choose from {', '.join(ARCHITECTURES)}")
        _require(self.device in DEVICES, f"device must be auto, cpu or cuda, got {self.device!r}")
        check_precision(self.precision)
        _require(self.max_galaxies is None or self.max_galaxies >= 3,
                 f"max galaxies must be at least 3, got {self.max_galaxies}")
        _require(self.num_threads is None or self.num_threads >= 1,
                 f"threads must be at least 1, got {self.num_threads}")
        _require(self.num_threads is None or self.num_threads <= 1024,
                 f"threads must be at most 1024, got {self.num_threads}")
        self.split  # validates the split fractions and the seed

    @property
    def split(self) -> SplitConfig:
        return SplitConfig(self.val_fraction, self.test_fraction, self.seed)

    @property
    def aux_outputs(self) -> int:
        """Outputs of the vote-fraction head (smooth, features, artifact), when it is trained at all."""
        return 3 if self.aux_weight > 0 else 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("data_dir", "out_dir", "cache_dir"):
            out[name] = None if out[name] is None else str(out[name])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """From a checkpoint's or card's config, including those saved before a setting was
        renamed (``image_size``; ``balance`` with ``balance_target``) or added (its default)."""
        values = dict(values)
        values.setdefault("labels", "debiased")  # the only rule before it was a setting
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
    labels: str | None = None  # None: the rule the model was trained on
    device: str = "cpu"
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        _paths(self, "data_dir", "model_dir", "cache_dir")
        _require(self.labels is None or self.labels in LABEL_RULES,
                 f"labels must be {' or '.join(LABEL_RULES)}, got {self.labels!r}")
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
