"""One plain dataclass per job: the CLI and the app build the same objects."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSES: tuple[str, ...] = ("Spiral", "Elliptical", "Uncertain")
"""Class names in the order of every probability vector the package produces."""

ARCHITECTURES: tuple[str, ...] = ("resnet_small", "plain_cnn")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
BALANCE_TARGETS: tuple[str, ...] = ("median", "max")
DEFAULT_CATALOGUE_URL = "https://data.galaxyzoo.org/galaxy-zoo-1/GalaxyZoo1_DR_table2.csv.gz"
DEFAULT_CUTOUT_URL = "https://skyserver.sdss.org/dr16/SkyServerWS/ImgCutout/getjpeg"


class GalaxyError(Exception):
    """Base class for errors a user can fix; the CLI and app show only the message."""


class ConfigError(GalaxyError):
    """A setting is out of range or inconsistent."""


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else a ConfigError naming the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
    return precision


def default_model_dir() -> Path:
    """The shipped model, overridable with GALAXY_MODEL_DIR."""
    env = os.environ.get("GALAXY_MODEL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models" / "default"


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
    size: int = 128
    scale: float = 0.2
    workers: int = 16
    retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 30.0
    max_requests_per_s: float | None = None
    limit: int | None = None

    def validate(self) -> None:
        if not 8 <= self.size <= 2048:
            raise ConfigError(f"--size must be between 8 and 2048 pixels, got {self.size}")
        if not 0.01 <= self.scale <= 10:
            raise ConfigError(f"--scale must be between 0.01 and 10 arcsec/pixel, got {self.scale}")
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"--workers must be between 1 and 256, got {self.workers}")
        if self.retries < 0:
            raise ConfigError(f"retries must be >= 0, got {self.retries}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.max_requests_per_s is not None and not self.max_requests_per_s > 0:
            raise ConfigError(f"--max-rate must be positive, got {self.max_requests_per_s}")
        if not 0 < self.timeout_s <= 3600:
            raise ConfigError(f"--timeout must be between 0 and 3600 seconds, got {self.timeout_s}")
        if not 0 <= self.backoff_s <= 600:
            raise ConfigError(f"backoff must be between 0 and 600 seconds, got {self.backoff_s}")
        if not self.cutout_url.startswith(("http://", "https://")):
            raise ConfigError(f"--cutout-url must be an http(s) URL, got {self.cutout_url!r}")


@dataclass(frozen=True)
class DatasetConfig:
    """How to split one packed dataset; the split is a pure function of these fields."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be between 0 and 0.5, got {value}")


@dataclass
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
    image_size: int = 64
    crop: int = 96
    arch: str = "resnet_small"
    width: int = 32
    depth: int = 2
    balance: bool = True
    balance_target: str = "median"
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

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 < self.lr <= 1:
            raise ConfigError(f"learning rate must be in (0, 1], got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.aux_weight <= 10:
            raise ConfigError(f"aux weight must be in [0, 10], got {self.aux_weight}")
        if not 16 <= self.image_size <= 512:
            raise ConfigError(f"image size must be between 16 and 512, got {self.image_size}")
        if self.crop < self.image_size // 2 or self.crop < 16:
            raise ConfigError(f"crop ({self.crop}) is too small for image size {self.image_size}")
        if self.width < 4:
            raise ConfigError(f"width must be at least 4, got {self.width}")
        if not 1 <= self.depth <= 8:
            raise ConfigError(f"depth must be between 1 and 8, got {self.depth}")
        if self.balance_target not in BALANCE_TARGETS:
            raise ConfigError(f"balance target must be median or max, got {self.balance_target!r}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.arch!r}: choose from {', '.join(ARCHITECTURES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        check_precision(self.precision)
        if self.max_galaxies is not None and self.max_galaxies < 3:
            raise ConfigError(f"max galaxies must be at least 3, got {self.max_galaxies}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.num_threads}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be between 0 and 2**32 - 1, got {self.seed}")
        DatasetConfig(self.val_fraction, self.test_fraction, self.seed).validate()

    @property
    def dataset(self) -> DatasetConfig:
        return DatasetConfig(self.val_fraction, self.test_fraction, self.seed)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data_dir"] = str(self.data_dir)
        out["out_dir"] = str(self.out_dir)
        out["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        kwargs["data_dir"] = Path(kwargs["data_dir"])
        kwargs["out_dir"] = Path(kwargs["out_dir"])
        if kwargs.get("cache_dir") is not None:
            kwargs["cache_dir"] = Path(kwargs["cache_dir"])
        return cls(**kwargs)


@dataclass(frozen=True)
class PredictConfig:
    """How to classify images with a saved model bundle."""

    model_dir: Path = field(default_factory=default_model_dir)
    tta: bool | None = None
    precision: str | None = None  # None: as the model was trained, float32 where bf16 is emulated
    batch_size: int = 64
    max_pixels: int = 50_000_000
