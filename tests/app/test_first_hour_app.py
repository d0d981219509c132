"""The first hour in the app (AppTest): a chosen dataset survives a reload and a new tab, a running
job shows on every page, "See its results" opens the model just trained, the shipped examples
classify in one click, and Results evaluates a plain image,label folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from app_fixtures import fresh_caches  # noqa: F401 (autouse)
from conftest import make_dataset
from streamlit.testing.v1 import AppTest
from test_app import APP, TIMEOUT, by_label, fill_tiny_training, open_page, texts, wait_for

from app_support.tables import job_fraction
from galaxy_core.serving.examples import CREDIT, list_examples
from galaxy_core.sources.download import DownloadProgress
from galaxy_core.training.train import TrainProgress


@pytest.fixture
def stocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_tiny_model: Path) -> dict[str, Path]:
    roots = {"data": tmp_path / "data", "models": tmp_path / "models"}
    monkeypatch.setenv("GALAXY_DATA_ROOT", str(roots["data"]))
    monkeypatch.setenv("GALAXY_MODELS_ROOT", str(roots["models"]))
    data_dir = Path(json.loads((trained_tiny_model / "card.json").read_text())["provenance"]["config"]["data_dir"])
    roots["data"].mkdir(parents=True)
    (roots["data"] / "tiny").symlink_to(data_dir, target_is_directory=True)
    shutil.copytree(trained_tiny_model, roots["models"] / "tiny")
    return roots


def test_a_typed_folder_is_still_chosen_after_a_reload_but_is_no_one_elses_default(
        stocked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_dataset(tmp_path / "shelf" / "elsewhere", n_per_class=2, seed=3)
    monkeypatch.setenv("GALAXY_READ_ROOTS", str(tmp_path / "shelf"))
    at = open_page("app_pages/dataset.py")
    by_label(at.text_input, "Or read another folder (read-only)").input(str(other))
    by_label(at.button, "Use this folder").click().run()
    assert not at.exception and not at.error
    shown = at.query_params["dataset"]
    assert shown in (["shelf/elsewhere"], "shelf/elsewhere")  # a name, never the server's path

    for page in ("app_pages/dataset.py", "app_pages/train.py"):
        reload = AppTest.from_file(APP, default_timeout=TIMEOUT)  # a reload keeps the URL
        reload.query_params["dataset"] = "shelf/elsewhere"
        reload.run()
        reload.switch_page(page).run()
        chosen = by_label(reload.selectbox, "Dataset folder" if "dataset" in page else "Dataset")
        assert chosen.value == str(other), page
        stranger = open_page(page)  # another visitor: the data root's own dataset, as before
        chosen = by_label(stranger.selectbox, "Dataset folder" if "dataset" in page else "Dataset")
        assert chosen.value == str(stocked["data"] / "tiny"), page


def test_a_url_may_name_a_known_dataset_but_not_a_new_folder(stocked, tmp_path: Path) -> None:
    stranger = make_dataset(tmp_path / "never-typed", n_per_class=1)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["dataset"] = str(stranger)
    at.run()
    at.switch_page("app_pages/dataset.py").run()
    assert by_label(at.selectbox, "Dataset folder").value == str(stocked["data"] / "tiny")


def test_a_running_job_shows_on_every_page(stocked) -> None:
    first = open_page("app_pages/train.py")
    fill_tiny_training(first, "long-run", 200)
    by_label(first.button, "Start training").click().run()
    try:
        for page in (None, "app_pages/classify.py", "app_pages/results.py"):
            if page is not None:  # the owner's own session, on another page
                first.switch_page(page).run()
            bars = [p for p in first.sidebar.get("progress") if "long-run" in str(p.proto.text)]
            assert bars, page
            assert any(link.proto.page == "train" for link in first.sidebar.get("page_link"))
            other = open_page(page)  # another visitor's session: only that the server is busy
            assert not other.sidebar.get("progress")
            assert "Training for another visitor" in "\n".join(c.value for c in other.sidebar.caption)
        first.switch_page("app_pages/train.py").run()
    finally:
        by_label(first.button, "Stop").click().run()
        wait_for(first, lambda a: bool(a.warning) or bool(a.error) or bool(a.success), 60)


def test_see_its_results_opens_the_model_just_trained(stocked) -> None:
    at = open_page("app_pages/train.py")
    fill_tiny_training(at, "mine", 1)
    by_label(at.button, "Start training").click().run()
    wait_for(at, lambda a: bool(a.success) or bool(a.error))
    assert not at.error, [e.value for e in at.error]
    link = next(x for x in at.get("page_link") if x.proto.label == "See its results")
    assert link.proto.page == "results" and "model=mine" in link.proto.query_string

    results = AppTest.from_file(APP, default_timeout=TIMEOUT)
    results.query_params["model"] = "mine"
    results.run()
    results.switch_page("app_pages/results.py").run()
    assert not results.exception
    assert Path(by_label(results.selectbox, "Model").value).name == "mine"


def test_an_example_classifies_in_one_click_and_from_homes_link(stocked) -> None:
    examples = list_examples()
    assert 3 <= len(examples) <= 24 and {e.label for e in examples} == {"Spiral", "Elliptical", "Uncertain"}
    assert sum(p.stat().st_size for p in (e.path for e in examples)) < 200_000
    at = open_page("app_pages/classify.py")
    assert CREDIT in texts(at)
    by_label(at.button, "Classify").click().run()
    assert not at.exception
    predicted = [m.value for m in at.markdown if m.value.startswith("### Predicted: ")]
    assert len(predicted) == 1 and f"**{examples[0].id} (example; volunteers: {examples[0].label})**" in texts(at)

    home = open_page()
    links = [x for x in home.get("page_link") if x.proto.label == "Classify this galaxy"]
    assert len(links) == 3
    linked = AppTest.from_file(APP, default_timeout=TIMEOUT)
    linked.query_params["example"] = examples[-1].id
    linked.run()
    linked.switch_page("app_pages/classify.py").run()
    assert examples[-1].id in texts(linked)


def test_results_evaluates_a_plain_image_label_folder(stocked, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALAXY_READ_ROOTS", str(tmp_path))
    data = make_dataset(tmp_path / "plain", n_per_class=2, seed=7)
    frame = pd.read_csv(data / "catalogue.csv")
    for rel in frame["image"]:
        (data / rel).rename(data / "images" / f"other_{Path(rel).name}")
    pd.DataFrame({"image": "other_" + frame["image"].str.replace("images/", "", regex=False),
                  "label": frame["label"].str.upper().replace("UNCERTAIN", "unsure")}).to_csv(
        data / "catalogue.csv", index=False)
    at = open_page("app_pages/results.py")
    by_label(at.text_input, "Dataset folder").input(str(data))
    by_label(at.button, "Evaluate").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(s.value.startswith("6 galaxies of plain") for s in at.success)


def test_job_progress_reads_training_evaluation_and_downloads() -> None:
    assert job_fraction(TrainProgress("train", epoch=2, epochs=4, batch=5, batches=10)) == pytest.approx(0.375)
    assert job_fraction(TrainProgress("evaluate", epoch=4, epochs=4, batch=30, batches=120)) == 0.25
    assert job_fraction(TrainProgress("prepare")) == 0.0
    assert job_fraction(DownloadProgress(3, 12, 0, 0, 1.0)) == 0.25


def test_curves_and_confusion_colours_suit_the_dark_theme() -> None:
    import numpy as np

    from app_support import charts
    from app_support.tables import history_frame
    from galaxy_core.model.card import EpochRecord

    history = [EpochRecord(e, 1.0 / e, 0.5, 1.1 / e, 0.4, 1e-3, 1.0) for e in (1, 2, 3)]
    fig = charts.curves(history_frame(history), "loss")
    colours = {trace.name: trace.line.color for trace in fig.data}
    assert colours["train"] != colours["validation"] and {trace.line.dash for trace in fig.data} != {None}
    theme = (Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml").read_text()
    heat = charts.confusion(np.eye(3) * 10, False).data[0]
    assert heat.colorscale[0][1] in theme and heat.showscale  # empty cells melt into the page
