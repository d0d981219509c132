"""Hostile values from users and files, each refused with one clear line: model cards, training
settings, cutout-server coordinates, a blank dataset, a hand-edited manifest, a huge field."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import requests
from conftest import make_dataset
from PIL import Image

from galaxy_core.base.config import DownloadConfig
from galaxy_core.cli import EXIT_USER_ERROR, main
from galaxy_core.data.cache import build_cache
from galaxy_core.sources.catalogue import CatalogueError, read_catalogue
from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer
from galaxy_core.sources.download import download_cutouts
from galaxy_core.sources.folder import MANIFEST_NAME, DatasetError

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "default"


def set_field(card: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    target = card
    for key in parents:
        target = target[key]
    target[last] = value
    return card


HOSTILE_CARDS = {
    "temperature hot": ("temperature", "hot", "temperature must be a finite number at least 0.05"),
    "temperature 0": ("temperature", 0, "temperature must be a finite number at least 0.05"),
    "temperature -1": ("temperature", -1, "temperature must be a finite number at least 0.05"),
    "source_size 0": ("input.source_size", 0, "input.source_size must be an integer between 8"),
    "mean of length 2": ("normalisation.mean", [0.1, 0.2], "normalisation.mean must be a list of 3 numbers"),
    "NaN mean": ("normalisation.mean", [math.nan, 0.1, 0.1], r"normalisation.mean\[0\] must be a finite number"),
    "std 0": ("normalisation.std", [0, 0.1, 0.1], r"normalisation.std\[0\] must be a finite number above|at least"),
    "size 100000": ("input.input_size", 100000, "input.input_size must be an integer between 8 and 512"),
    "width 100000": ("architecture.width", 100000, "architecture.width must be an integer between 4 and 128"),
    "classes null": ("classes", None, r"classes must be \['Spiral', 'Elliptical', 'Uncertain'\], got None"),
}


@pytest.fixture(scope="module")
def galaxy_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "g.png"
    Image.new("RGB", (64, 64), (90, 80, 70)).save(path)
    return path


def predict_with(card_bytes: bytes, tmp_path: Path, image: Path, capsys) -> tuple[int, str]:
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    (model / "card.json").write_bytes(card_bytes)
    code = main(["predict", str(image), "--model", str(model)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize("case", sorted(HOSTILE_CARDS))
def test_a_hostile_card_is_one_clear_line_through_cli_predict(case: str, tmp_path: Path, galaxy_png: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    field, value, message = HOSTILE_CARDS[case]
    card = set_field(json.loads((SHIPPED / "card.json").read_text()), field, value)
    code, said = predict_with(json.dumps(card).encode(), tmp_path, galaxy_png, capsys)
    lines = said.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(lines) == 1 and lines[0].startswith("error: "), said
    assert re.search(message, lines[0]), lines[0]
    assert "Spiral,nan" not in said and "Traceback" not in said


def test_a_card_that_is_not_utf8_is_one_clear_line(tmp_path: Path, galaxy_png: Path, capsys) -> None:
    code, said = predict_with(b"\xff\xfe{}", tmp_path, galaxy_png, capsys)
    assert code == EXIT_USER_ERROR and said.strip().endswith("card.json is not UTF-8 text")


@pytest.mark.parametrize("flag, value, message", [
    ("--width", "100000", "network width must be between 4 and 128, got 100000"),
    ("--crop", "1000", "crop must be at most the 128-pixel cutout it is taken from, got 1000"),
])
def test_training_settings_beyond_their_bounds_are_refused(flag: str, value: str, message: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), flag, value])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and message in err and "Traceback" not in err


@pytest.mark.parametrize("ra", ["nan", "inf", "-inf", "1e400", "NaN"])
def test_the_cutout_server_answers_400_for_coordinates_that_are_not_finite(
        ra: str, tiny_dataset: Path, capfd: pytest.CaptureFixture) -> None:
    with CutoutServer(CutoutIndex.from_catalogue(tiny_dataset)) as server:
        answer = requests.get(server.url, params={"ra": ra, "dec": "1.0"}, timeout=10)
        good = requests.get(server.url, params={"ra": "10.0", "dec": "-5.0"}, timeout=10)
    assert answer.status_code == 400 and good.status_code == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_dataset_of_blank_images_is_refused_for_having_no_signal(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    data = make_dataset(tmp_path / "black", n_per_class=8)
    for image in (data / "images").glob("*.jpg"):
        Image.new("RGB", (128, 128), (0, 0, 0)).save(image)
    with pytest.raises(DatasetError, match="no signal: every one of the 24 images .* is a single flat colour"):
        build_cache(data, cache_root=tmp_path / "cache")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "1", "--batch-size", "4",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "no signal" in err and "Traceback" not in err
    assert not (tmp_path / "m" / "card.json").exists()


def test_one_blank_image_among_real_ones_is_kept(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "mixed", n_per_class=3)
    Image.new("RGB", (128, 128), (0, 0, 0)).save(next((data / "images").glob("*.jpg")))
    assert build_cache(data, cache_root=tmp_path / "cache").galaxies == 9


def test_a_hand_edited_manifest_does_not_stop_a_download(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps({"failed": "x", "present": "many", "size": 128}))
    catalogue = read_catalogue(tiny_dataset / "catalogue.csv").iloc[:3]
    with CutoutServer(CutoutIndex.from_catalogue(tiny_dataset)) as server:
        report = download_cutouts(catalogue, DownloadConfig(out_dir=out, cutout_url=server.url))
    assert report.ok and report.downloaded == 3
    assert json.loads((out / MANIFEST_NAME).read_text())["failed"] == {}


def test_a_huge_field_is_cut_short_in_the_message(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["g1", "g2"], "ra": ["10.0", "9" * 5_000_000 + "x"], "dec": ["1", "2"],
                          "frac_smooth": [0.9, 0.1], "frac_features": [0.05, 0.85], "frac_artifact": [0.05, 0.05],
                          "label": ["Elliptical", "Spiral"]})
    frame.to_csv(tmp_path / "cat.csv", index=False)
    with pytest.raises(CatalogueError) as caught:
        read_catalogue(tmp_path / "cat.csv")
    message = str(caught.value)
    assert "line 3, column ra" in message and "5,000,003 characters" in message and len(message) < 400
