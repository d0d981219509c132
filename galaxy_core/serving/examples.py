"""The example galaxies shipped in ``examples/``: real SDSS cutouts with their Galaxy Zoo class, so a
demo works offline in one click (the Classify page's "try an example", the Home page's cards).

``examples/catalogue.csv`` is a plain ``image,label`` catalogue (with RA/Dec and the volunteers'
vote fractions), so the folder is also a small dataset: ``evaluate --data examples`` scores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from galaxy_core.base.config import ANSWERS, CLASSES, GalaxyError
from galaxy_core.sources.folder import CATALOGUE_NAME, DatasetFolder

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
CREDIT = ("Image: SDSS (sdss.org); classification: Galaxy Zoo volunteers (Willett et al. 2013). "
          "SDSS images are public; acknowledge the Sloan Digital Sky Survey.")


class ExamplesError(GalaxyError):
    """The examples folder is damaged (a missing image, an unknown class)."""


@dataclass(frozen=True)
class Example:
    """One shipped galaxy: its image, the volunteers' class and their vote fractions."""

    id: str
    path: Path
    label: str
    ra: float
    dec: float
    votes: dict[str, float]

    @property
    def caption(self) -> str:
        return f"{self.id}: volunteers said {self.label}"


def list_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """The examples in catalogue order; none when the folder is absent (e.g. an installed wheel)."""
    data = DatasetFolder(folder)
    if not data.exists():
        return []
    try:
        frame = pd.read_csv(data.catalogue)
    except (OSError, ValueError) as exc:
        raise ExamplesError(f"cannot read {data.catalogue}: {exc}") from None
    missing = [c for c in ("image", "label", "ra", "dec") if c not in frame.columns]
    if missing:
        raise ExamplesError(f"{data.catalogue} lacks column(s) {', '.join(missing)}")
    out = []
    for row in frame.itertuples(index=False):
        path = data.image(str(row.image))
        if path is None:
            raise ExamplesError(f"{folder}/{CATALOGUE_NAME} names {row.image}, which is not in the folder")
        if row.label not in CLASSES:
            raise ExamplesError(f"{folder}/{CATALOGUE_NAME}: {row.label!r} is not one of {', '.join(CLASSES)}")
        votes = {a: float(getattr(row, f"volunteers_{a}")) for a in ANSWERS if hasattr(row, f"volunteers_{a}")}
        out.append(Example(path.stem, path, str(row.label), float(row.ra), float(row.dec), votes))
    return out


def example_by_id(galaxy_id: str, folder: Path = EXAMPLES_DIR) -> Example | None:
    return next((e for e in list_examples(folder) if e.id == galaxy_id), None)
