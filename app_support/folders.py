"""Where the dashboard reads and writes, and the names it accepts for what it creates (not a page)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from galaxy_core.base import GalaxyError
from galaxy_core.model import CARD_NAME
from galaxy_core.training import CHECKPOINT_NAME

NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
SHIPPED_MODEL = "default"
SHIPPED_MODELS = (SHIPPED_MODEL, "first-question", "debiased")  # in git; never overwritten by training


class InvalidNameError(GalaxyError):
    """A dataset or model name that could escape its folder or clash with the shipped model."""


@dataclass(frozen=True)
class AppFolders:
    """Where the app reads and writes: datasets, models and the packed image cache."""

    data_root: Path
    models_root: Path
    cache_root: Path
    read_roots: tuple[Path, ...] = ()
    """Other folders whose dataset folders a visitor may name (read-only); nothing else is looked at."""
    repo: Path | None = None

    @classmethod
    def from_env(cls, repo: Path, environ: Mapping[str, str] = os.environ) -> AppFolders:
        """GALAXY_DATA_ROOT / GALAXY_MODELS_ROOT / GALAXY_CACHE_DIR, else folders in the repo;
        GALAXY_READ_ROOTS: more folders (separated by ':') holding dataset folders to read."""
        data_root = Path(environ.get("GALAXY_DATA_ROOT") or Path(repo) / "data")
        models_root = Path(environ.get("GALAXY_MODELS_ROOT") or Path(repo) / "models")
        cache_root = Path(environ.get("GALAXY_CACHE_DIR") or data_root / ".cache")
        read_roots = tuple(Path(p) for p in environ.get("GALAXY_READ_ROOTS", "").split(os.pathsep) if p.strip())
        return cls(data_root, models_root, cache_root, read_roots, Path(repo))

    def public_names(self) -> list[tuple[Path, str]]:
        """Each server folder and the name a visitor sees for it instead of its path."""
        names = [(self.data_root, "data"), (self.models_root, "models"), (self.cache_root, "cache")]
        names += [(root, root.name or "read") for root in self.read_roots]
        return names + ([(self.repo, "app")] if self.repo is not None else [])

    def roots(self) -> list[Path]:
        """The folders whose dataset subfolders the app may read: the data root first."""
        return [self.data_root, *self.read_roots]


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
    if name in SHIPPED_MODELS:
        raise InvalidNameError(f"'{name}' is a shipped model; choose another name")
    out_dir = Path(models_root) / name
    if (out_dir / CARD_NAME).is_file() and not (out_dir / CHECKPOINT_NAME).is_file():
        raise InvalidNameError(f"a finished model named {name!r} already exists; choose another name")
    return out_dir
