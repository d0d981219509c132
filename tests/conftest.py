"""Shared fixtures: synthetic datasets made on the fly, the real shared data by path, a cutout server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer, ServerOptions

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GALAXY_SHARED_DATA", REPO.parent / "shared" / "data"))
GZ2_DIR = SHARED_DATA / "gz2-sdss-128"
GZ1_SAMPLE = SHARED_DATA / "gz1-table2-sample.csv"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caches go to a per-session temporary folder, never to ~/.cache or the shared data."""
    root = tmp_path_factory.getbasetemp() / "galaxy-cache"
    monkeypatch.setenv("GALAXY_CACHE_DIR", str(root))
    return root


@pytest.fixture
def shared_gz2() -> Path:
    if not (GZ2_DIR / "catalogue.csv").is_file():
        pytest.skip(f"real Galaxy Zoo data not found at {GZ2_DIR} (it sits beside the repo in CI)")
    return GZ2_DIR


@pytest.fixture
def shared_gz1() -> Path:
    if not GZ1_SAMPLE.is_file():
        pytest.skip(f"Galaxy Zoo 1 sample not found at {GZ1_SAMPLE} (it sits beside the repo in CI)")
    return GZ1_SAMPLE


def synthetic_galaxy(kind: int, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Class-dependent toy galaxies a small CNN can tell apart: 0 two-armed spiral, 1 smooth
    round blob, 2 faint irregular clumps."""
    y, x = (np.mgrid[:size, :size] - size / 2 + rng.normal(0, 1.5, 2)[:, None, None])
    r = np.hypot(x, y) + 1e-6
    theta = np.arctan2(y, x) + rng.uniform(0, 2 * np.pi)
    if kind == 0:
        arms = 0.5 + 0.5 * np.cos(2 * theta - 0.35 * r)
        light = np.exp(-r / 14) * (0.35 + 0.65 * arms) + 0.8 * np.exp(-(r / 4) ** 2)
        colour = np.array([0.7, 0.8, 1.0])
    elif kind == 1:
        q = rng.uniform(0.6, 1.0)
        light = np.exp(-np.hypot(x, y / q) / rng.uniform(7, 11))
        colour = np.array([1.0, 0.85, 0.6])
    else:
        light = np.zeros((size, size))
        for _ in range(4):
            cx, cy = rng.normal(0, 10, 2)
            light += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rng.uniform(2, 5) ** 2))
        colour = np.array([0.9, 0.9, 0.9])
    image = light[..., None] * colour + rng.normal(0, 0.03, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def make_dataset(root: Path, n_per_class: int = 12, seed: int = 0, size: int = 128) -> Path:
    """A dataset folder (canonical catalogue.csv + images/) of synthetic galaxies."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    fractions = {0: (0.05, 0.92), 1: (0.93, 0.05), 2: (0.45, 0.45)}
    labels = {0: "Spiral", 1: "Elliptical", 2: "Uncertain"}
    for kind in range(3):
        for i in range(n_per_class):
            galaxy_id = f"syn{kind}_{i:04d}"
            ra, dec = 10.0 + kind + i * 0.001, -5.0 + i * 0.001
            rel = f"images/{galaxy_id}.jpg"
            Image.fromarray(synthetic_galaxy(kind, rng, size)).save(root / rel, quality=92)
            smooth, features = fractions[kind]
            rows.append({"id": galaxy_id, "ra": ra, "dec": dec, "frac_smooth": smooth,
                         "frac_features": features, "frac_artifact": 0.0, "label": labels[kind],
                         "image": rel})
    pd.DataFrame(rows).to_csv(root / "catalogue.csv", index=False)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny", n_per_class=12)


@pytest.fixture
def cutout_server_for():
    """Factory: ``with cutout_server_for(data_dir, ServerOptions(...)) as server: server.url``."""
    def start(data_dir: Path, options: ServerOptions | None = None) -> CutoutServer:
        return CutoutServer(CutoutIndex.from_catalogue(Path(data_dir)), options)
    return start


@pytest.fixture(scope="session")
def trained_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model bundle trained once per session on synthetic galaxies (a few seconds on CPU);
    its card's config.data_dir points at those galaxies."""
    from galaxy_core.base.config import TrainConfig
    from galaxy_core.training.train import train

    root = tmp_path_factory.mktemp("tiny-model")
    data_dir = make_dataset(root / "data", n_per_class=12)
    out_dir = root / "models" / "tiny"
    train(TrainConfig(data_dir=data_dir, out_dir=out_dir, epochs=1, batch_size=8, input_size=32,
                      crop=96, width=8, depth=1, cache_dir=root / "cache"))
    return out_dir
