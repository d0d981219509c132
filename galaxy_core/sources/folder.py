"""The dataset folder's layout, in one place: ``catalogue.csv`` beside ``images/``, the download
manifest, an uploaded source catalogue, and the rule that keeps every image path inside the folder.

The core, the app, the stand-in cutout server and the benchmarks all go through this module, so
the layout can only change here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from galaxy_core.base.config import GalaxyError
from galaxy_core.sources.catalogue import read_catalogue

CATALOGUE_NAME = "catalogue.csv"
IMAGES_DIR = "images"
MANIFEST_NAME = "download-manifest.json"
SOURCE_CATALOGUE_NAME = "source-catalogue.csv"
"""An uploaded catalogue, kept in the folder so the same download can resume without it."""


class DatasetError(GalaxyError):
    """The dataset folder is missing, empty or inconsistent."""


@dataclass(frozen=True)
class DatasetFolder:
    """A folder of SDSS cutouts and the catalogue that labels them."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def catalogue(self) -> Path:
        return self.root / CATALOGUE_NAME

    @property
    def images(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def source_catalogue(self) -> Path:
        return self.root / SOURCE_CATALOGUE_NAME

    @property
    def name(self) -> str:
        return self.root.name

    def exists(self) -> bool:
        return self.catalogue.is_file()

    def image(self, relpath: str) -> Path | None:
        """The image file a catalogue row names, or None if it is missing or outside the folder.

        Containment is judged where the catalogue points, not where a link there leads: a folder
        of symlinks to images kept on another disk is fine, a path climbing out with ../ is not.
        """
        root = Path(os.path.abspath(self.root))
        path = Path(os.path.normpath(root / str(relpath)))
        return path if path.is_relative_to(root) and path.is_file() else None

    def served_image(self, relpath: str) -> Path | None:
        """The real file a catalogue row names (links followed), or None unless that file lies
        inside the folder too: for handing images to others, where a link out of the folder
        would hand out whatever it points at."""
        path = self.image(relpath)
        if path is None:
            return None
        real = path.resolve()
        return real if real.is_relative_to(self.root.resolve()) and real.is_file() else None

    def require_catalogue(self) -> Path:
        if not self.catalogue.is_file():
            raise DatasetError(f"no {CATALOGUE_NAME} in {self.root}: run `python -m galaxy_core download` "
                               f"first, or point --data at a folder with {CATALOGUE_NAME} and {IMAGES_DIR}/")
        return self.catalogue

    def read_catalogue(self) -> pd.DataFrame:
        """The canonical catalogue restricted to rows whose image file exists."""
        frame = read_catalogue(self.require_catalogue())
        if "image" not in frame.columns:
            raise DatasetError(f"{self.catalogue} has no 'image' column: it does not describe "
                               "downloaded images")
        # A plain image,label list may name files by themselves: they are looked for in images/.
        frame["image"] = [rel if self.image(rel) is not None or self.image(f"{IMAGES_DIR}/{rel}") is None
                          else f"{IMAGES_DIR}/{rel}" for rel in frame["image"]]
        present = np.fromiter((self.image(rel) is not None for rel in frame["image"]), bool, len(frame))
        frame = frame[present].reset_index(drop=True)
        if frame.empty:
            raise DatasetError(f"none of the images listed in {self.catalogue} exist yet")
        return frame

    def fingerprint(self) -> tuple[int, int]:
        """Changes when the catalogue is rewritten or images are added (for caches of tables)."""
        images = self.images
        return (self.catalogue.stat().st_mtime_ns, images.stat().st_mtime_ns if images.is_dir() else 0)

    @classmethod
    def from_user(cls, text: str) -> DatasetFolder:
        """A folder typed by a user, to read from: it must hold the catalogue and the images."""
        text = text.strip()
        if not text:
            raise DatasetError(f"type the path of a folder that holds {CATALOGUE_NAME} and {IMAGES_DIR}/")
        path = Path(text).expanduser()
        if not path.is_dir():
            raise DatasetError(f"{path} is not a folder")
        folder = cls(path.resolve())
        if not folder.exists():
            raise DatasetError(f"{path} has no {CATALOGUE_NAME}: pick a folder made by a download "
                               f"({CATALOGUE_NAME} + {IMAGES_DIR}/)")
        if not folder.images.is_dir():
            raise DatasetError(f"{path} has no {IMAGES_DIR}/ folder of cutouts")
        return folder


def list_datasets(data_root: Path) -> list[Path]:
    """Dataset folders directly under ``data_root``, by name (hidden folders are not datasets)."""
    root = Path(data_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and DatasetFolder(p).exists())
