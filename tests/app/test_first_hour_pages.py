"""The first hour on the pages (AppTest): the Train page fits a plain image,label folder and a
small one and says what it changed, a folder with no images is not offered for training, the
Dataset page offers the shipped examples, and Results of a model whose images are not here shows
the examples with its answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from app_fixtures import fresh_caches  # noqa: F401 (autouse)
from conftest import make_dataset
from test_app import by_label, open_page, texts, wait_for

from galaxy_core.serving.examples import EXAMPLES_DIR, list_examples


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    found = {"data": tmp_path / "data", "models": tmp_path / "models"}
    monkeypatch.setenv("GALAXY_DATA_ROOT", str(found["data"]))
    monkeypatch.setenv("GALAXY_MODELS_ROOT", str(found["models"]))
    found["data"].mkdir()
    return found


def plain(root: Path) -> Path:
    make_dataset(root, n_per_class=8)
    frame = pd.read_csv(root / "catalogue.csv")
    frame[["image", "label"]].to_csv(root / "catalogue.csv", index=False)
    return root


def test_a_plain_folder_trains_from_the_page_with_hard_labels_and_a_batch_that_fits(roots) -> None:
    plain(roots["data"] / "plain")
    at = open_page("app_pages/train.py")
    assert "classes but no vote fractions" in texts(at)
    assert by_label(at.number_input, "Vote-fraction head weight").disabled
    by_label(at.text_input, "Model name").input("plain-model")
    by_label(at.number_input, "Epochs").set_value(1)
    by_label(at.select_slider, "Image size (px)").set_value(32)
    by_label(at.number_input, "Network width").set_value(8)
    by_label(at.button, "Start training").click().run()  # batch 64, far more than the views
    wait_for(at, lambda a: bool(a.success) or bool(a.error))
    assert not at.error, [e.value for e in at.error]
    said = [i.value for i in at.info]
    assert any("learns the classes alone" in s for s in said) and any("The batch holds" in s for s in said)
    assert not any("--" in s for s in said)
    card = json.loads((roots["models"] / "plain-model" / "card.json").read_text())
    config = card["provenance"]["config"]
    assert config["soft_labels"] is False and config["aux_weight"] == 0 and config["batch_size"] < 64


def test_a_folder_without_images_is_not_offered_for_training(roots) -> None:
    folder = make_dataset(roots["data"] / "empty", n_per_class=2)
    shutil.rmtree(folder / "images")
    (folder / "images").mkdir()
    at = open_page("app_pages/train.py")
    assert "cannot be trained on" in texts(at) and "none of the images" in texts(at)
    assert not [b for b in at.button if b.label == "Start training"]


def test_the_dataset_page_offers_the_shipped_examples(roots) -> None:
    at = open_page("app_pages/dataset.py")
    assert f"the {len(list_examples())} example galaxies that ship with the app" in texts(at)
    by_label(at.button, "Use the examples").click().run()
    assert not at.exception
    assert by_label(at.selectbox, "Dataset folder").value == str(EXAMPLES_DIR)


def test_results_without_the_training_images_shows_the_examples_and_its_answers(
        roots, trained_tiny_model: Path) -> None:
    shutil.copytree(trained_tiny_model, roots["models"] / "tiny")
    at = open_page("app_pages/results.py")
    said = texts(at)
    assert "which this app does not have" in said and "Dataset page" in said
    n = len(list_examples())
    assert any(f"of {n} examples answered as the volunteers said" in c.value for c in at.caption)
    assert sum("volunteers **" in c.value for c in at.caption) == n
