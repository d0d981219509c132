"""The app as a server facing damaged folders: a bad model folder beside a good one, truncated
images in the active dataset, a card pointing the Results page at '/', and broken side files.
Every page keeps working and says what it skipped."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from stand_servers import Stand, drip
from test_app import (  # noqa: F401 - fresh_caches is autouse
    PAGES,
    by_label,
    fresh_caches,
    open_page,
    rendered,  # noqa: F401 - fresh_caches is autouse
    texts,
)

from galaxy_core.base.config import DEFAULT_CATALOGUE_URL, DEFAULT_CUTOUT_URL
from galaxy_core.serving.examples import list_examples

pytestmark = pytest.mark.usefixtures("fresh_caches")


@pytest.fixture
def own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_tiny_model: Path) -> dict[str, Path]:
    """A private copy of the tiny model and of its dataset (which its card points at)."""
    card = json.loads((trained_tiny_model / "card.json").read_text())
    data = tmp_path / "data" / "tiny"
    shutil.copytree(card["provenance"]["config"]["data_dir"], data)
    model = tmp_path / "models" / "tiny"
    shutil.copytree(trained_tiny_model, model)
    card["provenance"]["config"]["data_dir"] = str(data)
    (model / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("GALAXY_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("GALAXY_MODELS_ROOT", str(tmp_path / "models"))
    return {"data": data, "model": model, "models": tmp_path / "models", "card": card}


def bad_folder(own: dict[str, Path], name: str, card: bytes) -> None:
    folder = own["models"] / name
    shutil.copytree(own["model"], folder)
    (folder / "card.json").write_bytes(card)


def sidebar_captions(at) -> str:
    return "\n".join(rendered(c.value) for c in at.sidebar.caption)


@pytest.mark.parametrize("page", PAGES)
def test_bad_model_folders_beside_a_good_one_are_listed_and_every_page_works(own, page) -> None:
    card = own["card"]
    bad_folder(own, "nulls", json.dumps({**card, "classes": None}).encode())
    bad_folder(own, "latin1", json.dumps(card).encode().replace(b'"label_rule"', b'"l\xe4bel_rule"'))
    bad_folder(own, "metrics", json.dumps({**card, "metrics": "x"}).encode())
    at = open_page(page)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["model_dir"] == str(own["model"])
    listed = sidebar_captions(at)
    assert "**nulls**" in listed and "classes must be ['Spiral', 'Elliptical', 'Uncertain'], got None" in listed
    assert "**latin1**" in listed and "is not UTF-8 text" in listed
    assert "**metrics**" in listed and "metrics must be a JSON object, got 'x'" in listed
    assert at.sidebar.selectbox[0].options == ["tiny"]


def test_only_bad_model_folders_still_leave_every_page_working(own) -> None:
    (own["model"] / "card.json").write_text(json.dumps({**own["card"], "temperature": "hot"}))
    for page in [None, *PAGES]:
        at = open_page(page)
        assert "temperature must be a finite number" in sidebar_captions(at)


def test_truncated_images_in_the_active_dataset_are_skipped_with_a_note(own) -> None:
    for image in (own["data"] / "images").glob("*.jpg"):
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 3])
    home = open_page(None)  # shows the shipped examples, not the active dataset's images
    assert not home.exception and not home.error, [e.value for e in home.error]
    at = open_page("app_pages/results.py")
    assert not at.error, [e.value for e in at.error]
    notes = [c.value for c in at.caption if "skipped" in c.value]
    assert notes and all("truncated or corrupt image" in n for n in notes), notes
    assert not at.image


def test_a_card_cannot_point_the_results_page_outside_the_dataset_folders(own) -> None:
    card = own["card"]
    card["provenance"]["config"]["data_dir"] = "/"
    (own["model"] / "card.json").write_text(json.dumps(card))
    evaluation = json.loads((own["model"] / "evaluation.json").read_text())
    for row in evaluation["misclassified"]:
        row["image"] = str(own["data"] / "images" / Path(row["image"]).name).lstrip("/")
    (own["model"] / "evaluation.json").write_text(json.dumps(evaluation))
    at = open_page("app_pages/results.py")
    assert not at.error, [e.value for e in at.error]
    assert any("which this app does not have" in i.value for i in at.info)
    assert len(at.image) == len(list_examples())  # the shipped examples only, nothing from the card's folder


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", json.dumps({"split_ids": "x"}).encode(),
                                  json.dumps({"misclassified": [{"id": 1}]}).encode()])
def test_a_broken_evaluation_file_is_an_error_on_the_results_page(own, body: bytes) -> None:
    (own["model"] / "evaluation.json").write_bytes(body)
    at = open_page("app_pages/results.py")
    assert [e.value for e in at.error] and "evaluation.json" in at.error[0].value
    assert "no evaluation.json" in texts(at) or "cannot be listed" in texts(at)


def test_the_app_refuses_internal_urls_and_paths_by_default(own, tiny_dataset, cutout_server_for) -> None:
    at = open_page("app_pages/dataset.py")
    with cutout_server_for(tiny_dataset) as server:
        for catalogue, cutouts, message in [
                (server.base_url + "/catalogue.csv", DEFAULT_CUTOUT_URL, "does not fetch from 127.0.0.1"),
                ("/etc/passwd", DEFAULT_CUTOUT_URL, "only http(s) URLs can be fetched"),
                (DEFAULT_CATALOGUE_URL, server.url, "does not fetch from 127.0.0.1")]:
            by_label(at.text_input, "Dataset name").input("probe")
            by_label(at.text_input, "Catalogue URL").input(catalogue)
            by_label(at.text_input, "Cutout URL").input(cutouts)
            by_label(at.button, "Download").click().run()
            assert any(message in rendered(e.value) for e in at.error), [e.value for e in at.error]
        assert server.total_requests == 0
        at = open_page("app_pages/classify.py")
        by_label(at.text_input, "Cutout URL").input(server.url)
        by_label(at.button, "Fetch and classify").click().run()
        assert any("does not fetch from 127.0.0.1" in e.value for e in at.error), [e.value for e in at.error]
        assert server.total_requests == 0
    assert not (own["data"].parent / "probe").exists()


def test_stop_download_ends_a_job_stuck_on_a_dripping_catalogue(own, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALAXY_ALLOWED_HOSTS", "+127.0.0.1")
    holder: list[Stand] = []
    with Stand({"/cat.csv": drip(lambda: holder[0])}) as stand:
        holder.append(stand)
        at = open_page("app_pages/dataset.py")
        by_label(at.text_input, "Dataset name").input("slow")
        by_label(at.text_input, "Catalogue URL").input(stand.url("/cat.csv"))
        by_label(at.button, "Download").click().run()
        assert stand.started.wait(10) and not at.error, [e.value for e in at.error]
        at.run()
        by_label(at.button, "Stop download").click().run()
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < 10 and not at.warning:
            time.sleep(0.2)
            at.run()
        assert any("Stopped" in w.value for w in at.warning), texts(at)
        assert time.monotonic() - stopped_at < 5
    assert not by_label(at.button, "Download").disabled  # the next visitor can download again
