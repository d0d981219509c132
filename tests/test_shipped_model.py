"""The default model in models/default: loads safely, classifies out of the box, and its card's
test metrics are reproduced by `evaluate` on the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from galaxy_core.bundle import load_bundle, read_card
from galaxy_core.cli import main
from galaxy_core.config import CLASSES, default_model_dir
from galaxy_core.predict import Classifier

SHIPPED = default_model_dir()


def test_shipped_bundle_is_complete() -> None:
    card = read_card(SHIPPED)
    assert card.classes == CLASSES
    assert (SHIPPED / "model.safetensors").stat().st_size < 20 * 1024**2
    assert (SHIPPED / "MODEL_CARD.md").is_file() and (SHIPPED / "reliability.png").is_file()
    assert card.provenance.command.startswith("python -m galaxy_core train")
    bundle = load_bundle(SHIPPED)
    assert sum(p.numel() for p in bundle.model.parameters()) > 10_000


def test_predict_without_model_flag_uses_the_shipped_model(shared_gz2: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    images = sorted((shared_gz2 / "images").glob("*.jpg"))[:4]
    out = tmp_path / "p.csv"
    assert main(["predict", *map(str, images), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 5 and all(line.split(",")[1] in CLASSES for line in lines[1:])


def test_card_metrics_are_reproduced_on_the_held_out_galaxies(shared_gz2: Path, tmp_path: Path) -> None:
    card = read_card(SHIPPED)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(shared_gz2), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["split"] == "test" and metrics["n"] == card.provenance.data.split["test"]
    if load_bundle(SHIPPED).precision == card.precision:  # the arithmetic it was tested in
        assert metrics["accuracy"] == pytest.approx(card.metrics.accuracy, abs=1e-9)
        assert metrics["confusion"] == card.metrics.confusion
    else:  # a bfloat16 model on a processor without native bfloat16 runs in float32
        assert metrics["accuracy"] == pytest.approx(card.metrics.accuracy, abs=0.01)


def test_spiral_and_elliptical_examples(shared_gz2: Path) -> None:
    """Galaxies whose votes are near-unanimous are classified as the volunteers saw them."""
    import pandas as pd

    evaluation = json.loads((SHIPPED / "evaluation.json").read_text())
    test_ids = set(evaluation["split_ids"]["test"])
    frame = pd.read_csv(shared_gz2 / "catalogue.csv")
    frame["id"] = frame["image"].map(lambda p: Path(p).stem)
    frame = frame[frame["id"].isin(test_ids)]
    smooth = frame["t01_smooth_or_features_a01_smooth_debiased"]
    features = frame["t01_smooth_or_features_a02_features_or_disk_debiased"]
    clear = pd.concat([frame[smooth > 0.9].assign(expected="Elliptical"),
                       frame[features > 0.95].head(40).assign(expected="Spiral")])
    assert len(clear) >= 30
    results = Classifier.load().predict([shared_gz2 / p for p in clear["image"]])
    agree = np.mean([r.label == e for r, e in zip(results, clear["expected"])])
    assert agree >= 0.85, agree
