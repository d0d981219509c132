"""Grad-CAM of the answer shown: the 8 views' maps turned back before averaging (so the map of a
turned galaxy is the turned map), its peak in the input image's pixels, and predict --saliency."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_galaxy
from PIL import Image

from galaxy_core.base.config import PredictConfig
from galaxy_core.cli import main
from galaxy_core.data.framing import Framing
from galaxy_core.data.geometry import InputGeometry, dihedral
from galaxy_core.model.network import Architecture, build_model
from galaxy_core.serving.gradcam import cam_features, grad_cam, peak_in_cutout, undo_dihedral
from galaxy_core.serving.predict import CSV_COLUMNS, Classifier, peak_in_image


@pytest.mark.parametrize("k", range(8))
def test_undo_dihedral_inverts_each_symmetry(k: int):
    x = torch.arange(20.0).view(4, 5)[:4, :4]
    assert torch.equal(undo_dihedral(dihedral(x, k), k), x)


def test_the_map_of_a_turned_galaxy_is_the_turned_map(trained_tiny_model: Path):
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model))
    assert classifier.tta
    pixels = synthetic_galaxy(0, np.random.default_rng(1))
    heat = grad_cam(classifier.bundle, Image.fromarray(pixels), 0)
    turned = grad_cam(classifier.bundle, Image.fromarray(np.ascontiguousarray(np.rot90(pixels))), 0)
    assert np.allclose(np.rot90(heat), turned, atol=0.02)
    one_view = grad_cam(classifier.bundle, Image.fromarray(pixels), 0, tta=False)
    assert not np.allclose(heat, one_view, atol=0.02)  # the 8 views make another map than one


def test_each_network_names_the_stage_its_saliency_reads() -> None:
    stages = [torch.zeros(1, 1, side, side) for side in (32, 16, 8, 4)]
    assert cam_features(stages, 2).shape[-1] == 8  # twice the final side: the plain ResNet's 8 x 8
    assert cam_features(stages, 4).shape[-1] == 16
    assert cam_features(stages, 64).shape[-1] == 4  # none that fine: the final map
    sides = {name: build_model(Architecture(name, width=8, depth=1)).saliency_side
             for name in ("resnet_small", "plain_cnn", "d4_resnet")}
    assert sides == {"resnet_small": 2, "plain_cnn": 2, "d4_resnet": 4}


def test_the_peak_is_given_in_the_input_images_pixels():
    geometry = InputGeometry(source_size=128, crop=96, input_size=64)
    heat = np.zeros((64, 64))
    heat[31, 31] = heat[31, 32] = heat[32, 31] = heat[32, 32] = 1.0  # the centre of the view
    u, v = peak_in_cutout(heat, geometry)
    assert (u, v) == pytest.approx((16 + 31.5 * 1.5, 16 + 31.5 * 1.5))
    # A 200-px box at (300, 100) of an image decoded at half its file's size.
    framing = Framing(np.zeros((128, 128, 3), np.uint8), (300.0, 100.0, 200.0), None, None, None)  # type: ignore[arg-type]
    x, y = peak_in_image(heat, geometry, framing, (2.0, 2.0))
    assert (x, y) == pytest.approx(((300 + u * 200 / 128) * 2 - 0.5, (100 + v * 200 / 128) * 2 - 0.5))


def test_predict_writes_a_heat_map_per_image_and_the_peak_columns(trained_tiny_model: Path, tmp_path: Path):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        canvas = np.full((300, 400, 3), 12, np.uint8)
        canvas[50:178, 200:328] = synthetic_galaxy(1, rng)  # off centre, in a wider field
        Image.fromarray(canvas).save(images / f"g{i}.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(images / "blank.png")
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    assert main(["predict", str(images), "--model", str(trained_tiny_model), "--out", str(out),
                 "--saliency", str(maps)]) == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert list(rows["g0.png"])[-2:] == ["saliency_peak_x", "saliency_peak_y"] and list(rows["g0.png"]) == CSV_COLUMNS
    assert sorted(p.name for p in maps.iterdir()) == ["g0.png", "g1.png"]  # none for the blank image
    assert Image.open(maps / "g0.png").size == (32, 32)
    for name in ("g0.png", "g1.png"):
        x, y = float(rows[name]["saliency_peak_x"]), float(rows[name]["saliency_peak_y"])
        assert 0 <= x < 400 and 0 <= y < 300
    assert rows["blank.png"]["saliency_peak_x"] == "" and rows["blank.png"]["label"] == ""
