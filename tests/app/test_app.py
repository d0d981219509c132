"""Every page of the Streamlit app, driven in-process with AppTest: empty folders, a dataset and a
model, classifying uploads, downloading a dataset and training a model through the forms."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import fresh_caches  # noqa: F401 (autouse)
from PIL import Image
from streamlit.testing.v1 import AppTest

from galaxy_core.base.config import CLASSES
from galaxy_core.serving.examples import list_examples

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
PAGES = [f"app_pages/{name}.py" for name in ("home", "dataset", "train", "results", "classify")]
TIMEOUT = 60


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    roots = {"data": tmp_path / "data", "models": tmp_path / "models"}
    monkeypatch.setenv("GALAXY_DATA_ROOT", str(roots["data"]))
    monkeypatch.setenv("GALAXY_MODELS_ROOT", str(roots["models"]))
    monkeypatch.setenv("GALAXY_ALLOWED_HOSTS", "+127.0.0.1")  # the tests' stand-in servers
    return roots


@pytest.fixture
def stocked(folders: dict[str, Path], trained_tiny_model: Path) -> dict[str, Path]:
    """A data root holding the tiny model's own galaxies and a models root holding the model."""
    data_dir = Path(json.loads((trained_tiny_model / "card.json").read_text())["provenance"]["config"]["data_dir"])
    folders["data"].mkdir(parents=True)
    (folders["data"] / "tiny").symlink_to(data_dir, target_is_directory=True)
    shutil.copytree(trained_tiny_model, folders["models"] / "tiny")
    return folders


def open_page(page: str | None = None, at: AppTest | None = None) -> AppTest:
    at = at or AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rendered(markdown: str) -> str:
    """Markdown as a visitor reads it, for the backslash escapes of untrusted text: ``\\[`` reads ``[``."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(markdown))


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in (at.info, at.warning, at.error, at.success, at.title, at.header, at.subheader):
        parts += [e.value for e in kind]
    return "\n".join(rendered(p) for p in parts)


def by_label(widgets, label: str):
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r}: {[w.label for w in widgets]}"
    return found[0]


def png_bytes(size=(200, 150), mode="RGB") -> bytes:
    rng = np.random.default_rng(0)
    array = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_home_links_to_the_pages_and_the_sidebar_picks_the_model(stocked):
    at = open_page()
    assert at.title[0].value == "Galaxy Zoo morphology classifier"
    links = [link.proto.page for link in at.get("page_link")]
    assert sorted(set(links)) == ["classify", "dataset", "results", "train"]
    assert links.count("classify") == 4  # "Classify a galaxy" and one shipped example per class
    picker = at.sidebar.selectbox[0]
    assert picker.label == "Active model" and picker.value == str(stocked["models"] / "tiny")


@pytest.mark.parametrize("page", [None, *PAGES])
def test_every_page_opens_with_nothing_and_says_what_to_do(folders, page):
    at = open_page(page)
    said = texts(at)
    expected = {None: "There is no model yet", "app_pages/home.py": "There is no model yet",
                "app_pages/dataset.py": "No dataset under", "app_pages/train.py": "no dataset to train on",
                "app_pages/results.py": "no trained model to inspect",
                "app_pages/classify.py": "no model to classify with"}[page]
    assert expected in said
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_with_a_dataset_and_a_model(stocked, page):
    at = open_page(page)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["model_dir"] == str(stocked["models"] / "tiny")


def test_home_shows_an_example_of_each_class_and_the_model_card(stocked):
    at = open_page()
    assert len(at.image) >= 3  # one shipped SDSS example per class
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Model"] == "tiny"
    assert metrics["Galaxies"] == "36"
    split = json.loads((stocked["models"] / "tiny" / "card.json").read_text())["provenance"]["data"]["split"]
    assert f"36 galaxies: {split['train']} train / {split['val']} validation / {split['test']} test" in texts(at)
    assert metrics["Test accuracy"].endswith("%")


def test_dataset_page_shows_counts_splits_samples_and_pixels(stocked):
    at = open_page("app_pages/dataset.py")
    metrics = {m.label: m.value for m in at.metric}
    assert sum(int(metrics[k]) for k in ("Training galaxies", "Validation galaxies", "Test galaxies")) == 36
    assert "36 galaxies" in texts(at)
    assert len(at.image) == 18  # six samples of each class
    assert len(at.dataframe) == 1  # the per-channel statistics table
    stats = at.dataframe[0].value
    assert stats["channel"].tolist() == ["red", "green", "blue"]
    assert all(0 < float(v) < 1 for v in stats["mean"])


def test_dataset_page_reads_a_typed_folder_and_rejects_a_bad_one(folders, tiny_dataset, tmp_path, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset.rglob("*")}
    at = open_page("app_pages/dataset.py")
    answers = []
    for typed in (tmp_path / "nowhere", tiny_dataset, Path("/etc")):  # outside the app's folders
        by_label(at.text_input, "Or read another folder (read-only)").input(str(typed))
        by_label(at.button, "Use this folder").click().run()
        answers.append(at.error[0].value.split(" is not ", 1)[1])
    # one answer whether the folder exists or not: the box does not probe the server's disk
    assert len(set(answers)) == 1 and answers[0].startswith("a dataset folder this server offers")
    monkeypatch.setenv("GALAXY_READ_ROOTS", str(tmp_path))
    by_label(at.text_input, "Or read another folder (read-only)").input(str(tiny_dataset))
    by_label(at.button, "Use this folder").click().run()
    assert not at.exception and not at.error
    assert "36 galaxies" in texts(at) and len(at.image) == 18
    assert {p: p.stat().st_mtime_ns for p in tiny_dataset.rglob("*")} == before, "read-only use"


def test_results_page_shows_confusion_scores_curves_and_mistakes(stocked):
    at = open_page("app_pages/results.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test accuracy"].endswith("%") and metrics["Balanced accuracy"].endswith("%")
    scores = at.dataframe[0].value
    assert scores["class"].tolist() == list(CLASSES)
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # confusion matrix, training curves, reliability diagram
    said = texts(at)
    assert "wrong predictions" in said
    by_label(at.toggle, "Row-normalised (fraction of each true class)").set_value(True).run()
    assert not at.exception


def test_results_page_filters_the_misclassified_gallery(stocked):
    at = open_page("app_pages/results.py")
    listed = [c.value for c in at.caption if "wrong predictions" in c.value][0]
    total = int(listed.split(" of ")[1].split()[0])
    for name in CLASSES:
        by_label(at.multiselect, "True class").set_value([name]).run()
        assert not at.exception
        shown = [c.value for c in at.caption if "wrong predictions" in c.value][0]
        assert int(shown.split()[0]) <= total


def test_classify_uploads_returns_a_class_and_keeps_going_after_a_bad_file(stocked, tiny_dataset):
    at = open_page("app_pages/classify.py")
    galaxy = (tiny_dataset / "images" / "syn1_0003.jpg").read_bytes()
    at.file_uploader[0].set_value([("galaxy.jpg", galaxy, "image/jpeg"),
                                   ("broken.png", b"not an image at all", "image/png"),
                                   ("big-grey.png", png_bytes((640, 480), "L"), "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    said = texts(at)
    predicted = [m.value for m in at.markdown if m.value.startswith("### Predicted: ")]
    assert len(predicted) == 1  # the grey noise holds no galaxy: not classified, and said apart
    assert all(p.removeprefix("### Predicted: ") in CLASSES for p in predicted)
    assert "1 of 3 image(s) classified" in said and "not classified, no galaxy found: 1" in said
    assert any(w.value.startswith("Not classified: no galaxy found") for w in at.warning)
    assert any("broken.png" not in e.value and "not an image" in e.value for e in at.error)
    assert "ms from receiving the images to the result" in said
    assert len(at.get("download_button")) == 1
    # the galaxy and its Grad-CAM view, the image with no galaxy, the colour scale, and the examples
    assert len(at.image) == 3 + 1 + len(list_examples())
    assert any("bright yellow = drove the prediction" in c.value for c in at.caption)


def test_classify_by_coordinates_uses_the_cutout_server(stocked, tiny_dataset, cutout_server_for):
    import pandas as pd

    row = pd.read_csv(tiny_dataset / "catalogue.csv").iloc[20]
    at = open_page("app_pages/classify.py")
    with cutout_server_for(tiny_dataset) as server:
        by_label(at.number_input, "RA (degrees)").set_value(float(row.ra))
        by_label(at.number_input, "Dec (degrees)").set_value(float(row.dec))
        by_label(at.text_input, "Cutout URL").input(server.url)
        by_label(at.button, "Fetch and classify").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert any(m.value.startswith("### Predicted: ") for m in at.markdown)
        assert any(m.value == f"**SDSS RA {row.ra:.5f} Dec {row.dec:+.5f}**" for m in at.markdown)
        by_label(at.number_input, "RA (degrees)").set_value(123.0)
        by_label(at.button, "Fetch and classify").click().run()
    assert any("no cutout for RA 123.00000" in e.value for e in at.error)


def wait_for(at: AppTest, done, seconds: float = 120.0) -> AppTest:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if done(at):
            return at
    raise AssertionError(f"timed out; page says: {texts(at)}")


def test_train_page_runs_a_job_to_completion_and_activates_the_model(stocked):
    at = open_page("app_pages/train.py")
    by_label(at.text_input, "Model name").input("from-the-form")
    by_label(at.number_input, "Epochs").set_value(2)
    by_label(at.number_input, "Batch size").set_value(8)
    by_label(at.select_slider, "Image size (px)").set_value(32)
    by_label(at.number_input, "Network width").set_value(8)
    by_label(at.number_input, "Blocks per stage").set_value(1)
    by_label(at.toggle, "Any-angle rotation, zoom and shift").set_value(True)
    by_label(at.number_input, "Vote-fraction head weight").set_value(1.0)
    by_label(at.selectbox, "Class balancing").set_value("max")
    by_label(at.selectbox, "Arithmetic").set_value("bf16")
    by_label(at.button, "Start training").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    wait_for(at, lambda a: bool(a.success) or bool(a.error))
    assert not at.error, [e.value for e in at.error]
    assert "from-the-form** finished" in at.success[0].value
    model = stocked["models"] / "from-the-form"
    assert (model / "card.json").is_file() and (model / "model.safetensors").is_file()
    trained = json.loads((model / "card.json").read_text())["provenance"]["config"]
    assert (trained["jitter"], trained["aux_weight"], trained["balance"], trained["precision"]) == (
        True, 1.0, "max", "bf16")
    assert len(at.get("plotly_chart")) == 2  # loss and accuracy curves
    by_label(at.button, "Use it as the active model").click().run()
    assert at.session_state["model_dir"] == str(model)


def test_train_page_refuses_unsafe_names_and_the_shipped_model(stocked):
    at = open_page("app_pages/train.py")
    for name, message in [("../outside", "not allowed"), ("default", "shipped model")]:
        by_label(at.text_input, "Model name").input(name)
        by_label(at.button, "Start training").click().run()
        assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert sorted(p.name for p in stocked["models"].iterdir()) == ["tiny"]
    assert not (stocked["models"].parent / "outside").exists()


def test_dataset_page_downloads_through_a_background_job(folders, tiny_dataset, cutout_server_for):
    at = open_page("app_pages/dataset.py")
    with cutout_server_for(tiny_dataset) as server:
        by_label(at.radio, "Catalogue").set_value("Upload a file").run()
        assert not [t for t in at.text_input if t.label == "Catalogue URL"]  # only the chosen source's input
        by_label(at.text_input, "Dataset name").input("fetched")
        at.file_uploader[0].set_value(("catalogue.csv", (tiny_dataset / "catalogue.csv").read_bytes(),
                                       "text/csv"))
        by_label(at.number_input, "How many galaxies").set_value(30)
        by_label(at.text_input, "Cutout URL").input(server.url)
        by_label(at.button, "Download").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        wait_for(at, lambda a: bool(a.success) or bool(a.warning) or bool(a.error), 60)
    assert not at.error, [e.value for e in at.error]
    assert "30 downloaded" in at.success[0].value
    assert len(list((folders["data"] / "fetched" / "images").glob("*.jpg"))) == 30
    by_label(at.button, "Use this dataset").click().run()
    assert "30 galaxies" in texts(at)


def fill_tiny_training(at: AppTest, name: str, epochs: int) -> None:
    by_label(at.text_input, "Model name").input(name)
    by_label(at.number_input, "Epochs").set_value(epochs)
    by_label(at.number_input, "Batch size").set_value(4)
    by_label(at.select_slider, "Image size (px)").set_value(32)
    by_label(at.number_input, "Network width").set_value(8)
    by_label(at.number_input, "Blocks per stage").set_value(1)


def test_one_training_job_across_tabs_and_only_its_own_tab_stops_it(stocked):
    first = open_page("app_pages/train.py")
    fill_tiny_training(first, "long-run", 5000)  # far longer than the test: only Stop can end it
    by_label(first.button, "Start training").click().run()
    assert not first.error, [e.value for e in first.error]

    second = open_page("app_pages/train.py")  # another browser tab: a new session, same server
    assert any("busy training a model for another visitor" in i.value for i in second.info)
    assert by_label(second.button, "Start training").disabled
    assert not [b for b in second.button if b.label == "Stop"]
    wait_for(first, lambda a: any("epoch" in str(p.proto.text) for p in a.get("progress")), 60)
    by_label(first.button, "Stop").click().run()
    wait_for(first, lambda a: bool(a.warning) or bool(a.error) or bool(a.success), 60)
    assert not first.error, [e.value for e in first.error]
    assert "long-run** stopped" in first.warning[0].value
    assert not by_label(first.button, "Start training").disabled
    assert not (stocked["models"] / "long-run" / "card.json").exists()
