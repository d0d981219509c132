"""The app's helpers: folders and safe names, listings, samples, pixel statistics, chart tables,
single cutouts and the download job, on synthetic data and a local cutout server."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from galaxy_core.cutout_server import ServerOptions
from galaxy_core.config import CLASSES, ConfigError, DownloadConfig
from galaxy_core.dataset import DatasetError, PackedDataset
from galaxy_core.download import DownloadProgress
from galaxy_core.explore import (AppFolders, CutoutError, InvalidNameError, check_dataset_dir,
                                 classify_images, discard_checkpoint, download_task, fetch_cutout, format_duration,
                                 gallery_image, grad_cam_overlay, history_frame, list_datasets,
                                 list_models, misclassified_frame, model_dir_for_training,
                                 model_summary, new_dataset_dir, page_bounds, per_class_frame,
                                 pixel_statistics, reliability_frame, row_normalise, sample_galaxies,
                                 uploaded_catalogue, validate_name)
from galaxy_core.predict import Classifier, PredictConfig


def test_folders_come_from_the_environment_or_the_repo(tmp_path: Path):
    repo = tmp_path / "repo"
    plain = AppFolders.from_env(repo, {})
    assert plain == AppFolders(repo / "data", repo / "models", repo / "data" / ".cache")
    env = {"GALAXY_DATA_ROOT": "/d", "GALAXY_MODELS_ROOT": "/m", "GALAXY_CACHE_DIR": "/c"}
    assert AppFolders.from_env(repo, env) == AppFolders(Path("/d"), Path("/m"), Path("/c"))
    assert AppFolders.from_env(repo, {"GALAXY_DATA_ROOT": "/d"}).cache_root == Path("/d/.cache")


@pytest.mark.parametrize("name", ["gz1-sample", "My_Model_2", "a", "x" * 64, "  padded  "])
def test_safe_names_are_accepted(name: str):
    assert validate_name(name, "dataset") == name.strip()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "a\\b", ".hidden", "with space", "x" * 65,
                                  "/abs", "ünïcode", "name.with.dots", "..", "a\nb"])
def test_names_that_could_escape_or_confuse_are_refused(name: str, tmp_path: Path):
    with pytest.raises(InvalidNameError, match="not allowed"):
        new_dataset_dir(tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_training_never_overwrites_the_shipped_or_a_finished_model(tmp_path: Path):
    with pytest.raises(InvalidNameError, match="shipped model"):
        model_dir_for_training(tmp_path, "default")
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "card.json").write_text("{}")
    with pytest.raises(InvalidNameError, match="already exists"):
        model_dir_for_training(tmp_path, "done")
    (finished / "checkpoint.pt").write_bytes(b"x")  # a resumable run of the app's own
    assert model_dir_for_training(tmp_path, "done") == finished
    assert discard_checkpoint(finished) and not (finished / "checkpoint.pt").exists()
    assert not discard_checkpoint(finished)
    assert model_dir_for_training(tmp_path, "new") == tmp_path / "new"


def test_datasets_are_listed_and_typed_folders_checked(tiny_dataset: Path, tmp_path: Path):
    assert list_datasets(tmp_path / "absent") == []
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "catalogue.csv").write_text("hidden folders are not datasets")
    assert list_datasets(tmp_path) == [tiny_dataset]
    assert check_dataset_dir(f"  {tiny_dataset}  ") == tiny_dataset.resolve()
    for text, message in [("", "type the path"), (str(tmp_path / "nope"), "is not a folder"),
                          (str(tmp_path / "empty-folder"), "no catalogue.csv")]:
        with pytest.raises(DatasetError, match=message):
            check_dataset_dir(text)
    no_images = tmp_path / "no-images"
    no_images.mkdir()
    (no_images / "catalogue.csv").write_text("id\n")
    with pytest.raises(DatasetError, match="no images/ folder"):
        check_dataset_dir(str(no_images))


def test_samples_are_per_class_existing_and_seeded(tiny_dataset: Path):
    picked = sample_galaxies(tiny_dataset, 5, seed=1)
    assert list(picked) == list(CLASSES)
    catalogue = pd.read_csv(tiny_dataset / "catalogue.csv").set_index("id")
    for name, rows in picked.items():
        assert len(rows) == 5
        assert len({r["id"] for r in rows}) == 5
        for row in rows:
            assert row["path"].is_file()
            assert catalogue.loc[row["id"], "label"] == name
    assert sample_galaxies(tiny_dataset, 5, seed=1) == picked
    assert sample_galaxies(tiny_dataset, 5, seed=2) != picked
    assert all(len(rows) == 12 for rows in sample_galaxies(tiny_dataset, 50).values())


def test_pixel_statistics_match_numpy(tiny_dataset: Path, isolated_cache: Path):
    dataset = PackedDataset.open(tiny_dataset, cache_root=isolated_cache)
    pixels = dataset.images(np.arange(len(dataset))).astype(np.float64) / 255
    stats = pixel_statistics(dataset, bins=16, chunk=5)
    assert stats.images == len(dataset) == 36
    np.testing.assert_allclose(stats.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(stats.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)
    raw = dataset.images(np.arange(len(dataset)))
    for c in range(3):
        expected, _ = np.histogram(raw[..., c], bins=16, range=(0, 256))
        np.testing.assert_array_equal(stats.counts[c], expected)
    frame = stats.histogram_frame()
    assert len(frame) == 48 and set(frame["channel"]) == {"red", "green", "blue"}
    sampled = pixel_statistics(dataset, max_images=10, seed=3)
    assert sampled.images == 10 and sampled.counts.sum() == 10 * 128 * 128 * 3
    with pytest.raises(ConfigError):
        pixel_statistics(dataset, bins=0)


def test_models_are_listed_with_broken_cards_explained(trained_tiny_model: Path, tmp_path: Path):
    root = trained_tiny_model.parent
    broken = root / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "card.json").write_text("{not json")
    models = {m.name: m for m in list_models(root)}
    assert models["tiny"].card is not None and models["tiny"].error is None
    assert models["broken"].card is None and "not valid JSON" in models["broken"].error
    assert list_models(tmp_path / "none") == []
    facts = model_summary(models["tiny"].card)
    assert facts["galaxies"] == 36 and facts["input_size"] == 32 and facts["arch"] == "resnet_small"
    assert 0 <= facts["accuracy"] <= 1 and facts["test_galaxies"] == models["tiny"].card["metrics"]["n"]
    assert model_summary({})["accuracy"] is None


def test_chart_tables():
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_accuracy": 0.4, "val_accuracy": 0.3},
               {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9, "train_accuracy": 0.6, "val_accuracy": 0.5}]
    frame = history_frame(history)
    assert len(frame) == 8
    val_acc = frame[(frame.metric == "accuracy") & (frame.split == "validation")]
    assert val_acc["value"].tolist() == [0.3, 0.5]
    assert history_frame([]).empty
    normalised = row_normalise([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    np.testing.assert_allclose(normalised, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    metrics = {"per_class": {c: {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 4}
                             for c in CLASSES}}
    table = per_class_frame(metrics)
    assert table["class"].tolist() == list(CLASSES) and table["support"].sum() == 12
    assert per_class_frame({}).empty
    bins = reliability_frame([{"low": 0.3, "high": 0.4, "count": 2, "confidence": 0.35, "accuracy": 0.5}])
    assert bins.loc[0, "accuracy"] == 0.5


def wrong(id_: str, true: str, pred: str, p: tuple[float, float, float]) -> dict:
    return {"id": id_, "image": f"images/{id_}.jpg", "true": true, "predicted": pred,
            **{f"p_{c.lower()}": v for c, v in zip(CLASSES, p)}}


def test_misclassified_galaxies_filter_sort_and_page():
    rows = [wrong("a", "Spiral", "Elliptical", (0.3, 0.6, 0.1)),
            wrong("b", "Spiral", "Uncertain", (0.1, 0.1, 0.8)),
            wrong("c", "Elliptical", "Spiral", (0.9, 0.05, 0.05)),
            wrong("d", "Uncertain", "Spiral", (0.5, 0.2, 0.3))]
    assert misclassified_frame(rows)["id"].tolist() == ["c", "b", "a", "d"]
    assert misclassified_frame(rows, order="least confident first")["id"].tolist() == ["d", "a", "b", "c"]
    assert misclassified_frame(rows, true=["Spiral"])["id"].tolist() == ["b", "a"]
    assert misclassified_frame(rows, predicted=["Spiral"], true=["Uncertain"])["id"].tolist() == ["d"]
    empty = misclassified_frame([])
    assert empty.empty and "confidence" in empty.columns
    assert page_bounds(25, 1, 12) == (0, 12, 3)
    assert page_bounds(25, 3, 12) == (24, 25, 3)
    assert page_bounds(25, 9, 12) == (24, 25, 3)
    assert page_bounds(0, 1, 12) == (0, 0, 1)
    with pytest.raises(ConfigError):
        page_bounds(5, 1, 0)


def test_gallery_images_stay_inside_their_dataset(tiny_dataset: Path, tmp_path: Path):
    (tmp_path / "secret.jpg").write_bytes(b"x")
    inside = tiny_dataset / "images" / "syn0_0000.jpg"
    assert gallery_image(tiny_dataset, "images/syn0_0000.jpg") == inside.resolve()
    assert gallery_image(tiny_dataset, "../secret.jpg") is None
    assert gallery_image(tiny_dataset, "images/missing.jpg") is None
    (tiny_dataset / "images" / "linked.jpg").symlink_to(tmp_path / "secret.jpg")
    assert gallery_image(tiny_dataset, "images/linked.jpg") is not None  # as training reads it


@pytest.mark.parametrize("seconds, text", [(None, "–"), (float("nan"), "–"), (4.4, "4 s"),
                                           (65, "1 min 05 s"), (3 * 3600 + 120, "3 h 02 min")])
def test_durations_read_naturally(seconds, text):
    assert format_duration(seconds) == text


def test_fetch_one_cutout_by_coordinates(tiny_dataset: Path, cutout_server_for):
    row = pd.read_csv(tiny_dataset / "catalogue.csv").iloc[5]
    with cutout_server_for(tiny_dataset) as server:
        data = fetch_cutout(row.ra, row.dec, server.url)
        assert data == (tiny_dataset / row.image).read_bytes()
        with pytest.raises(CutoutError, match=r"no cutout for RA 200\.00000, Dec \+10\.00000 .*HTTP 404"):
            fetch_cutout(200.0, 10.0, server.url)
    for ra, dec in [(360.0, 0.0), (-1.0, 0.0), (10.0, 91.0)]:
        with pytest.raises(CutoutError, match="must be in"):
            fetch_cutout(ra, dec, "http://127.0.0.1:9/getjpeg")
    with pytest.raises(ConfigError, match="http"):
        fetch_cutout(10.0, 10.0, "ftp://example.org/getjpeg")


def test_fetch_reports_a_server_that_answers_html(tiny_dataset: Path, cutout_server_for):
    row = pd.read_csv(tiny_dataset / "catalogue.csv").iloc[0]
    with cutout_server_for(tiny_dataset, ServerOptions(fault="html200")) as server:
        with pytest.raises(CutoutError, match="HTML"):
            fetch_cutout(row.ra, row.dec, server.url, retries=0)


def test_download_job_from_an_uploaded_catalogue_resumes(tiny_dataset: Path, tmp_path: Path,
                                                         cutout_server_for):
    uploaded = (tiny_dataset / "catalogue.csv").read_bytes()
    out_dir = tmp_path / "data" / "mine"
    events: list = []
    with cutout_server_for(tiny_dataset) as server:
        config = DownloadConfig(out_dir=Path("ignored"), cutout_url=server.url, limit=9, workers=3)
        task = download_task(out_dir, uploaded, config)
        report = task(events.append, threading.Event())
        assert (report.total, report.downloaded, report.skipped, report.failed) == (9, 9, 0, {})
        assert isinstance(events[0], str) and "reading catalogue" in events[0]
        progress = [e for e in events if isinstance(e, DownloadProgress)]
        assert progress[-1].done == 9 and progress[-1].total == 9
        assert uploaded_catalogue(out_dir).read_bytes() == uploaded
        assert len(list((out_dir / "images").glob("*.jpg"))) == 9
        # Resuming from the kept upload: everything is already there.
        again = download_task(out_dir, str(uploaded_catalogue(out_dir)), config)(events.append,
                                                                                 threading.Event())
        assert (again.downloaded, again.skipped) == (0, 9)
    assert uploaded_catalogue(tmp_path) is None


def test_grad_cam_overlay_is_drawn_on_the_model_view(trained_tiny_model: Path, tiny_dataset: Path):
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model))
    image = Image.open(tiny_dataset / "images" / "syn0_0000.jpg").convert("RGB").resize((300, 200))
    view = classifier.model_view(image)
    heat = classifier.grad_cam(image)
    overlay = grad_cam_overlay(classifier, image)
    assert overlay.size == view.size == (32, 32) and overlay.mode == "RGB"
    assert heat.max() == pytest.approx(1.0)
    changed = np.abs(np.asarray(overlay, float) - np.asarray(view, float)).sum(axis=2) > 3
    assert changed.any(), "the heat map must show on the image"
    np.testing.assert_array_equal(changed, changed & (np.asarray(Image.fromarray(
        (heat * 255).astype(np.uint8)).resize(view.size)) > 0))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_classify_images_keeps_small_copies_and_matches_full_size_predictions(trained_tiny_model: Path,
                                                                               tiny_dataset: Path):
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model))
    galaxy = Image.open(tiny_dataset / "images" / "syn0_0001.jpg").convert("RGB")
    items = [("big.png", encoded(galaxy.resize((900, 700)), "PNG")),
             ("bad.jpg", b"\xff\xd8 truncated"),
             ("grey.png", encoded(galaxy.convert("L"), "PNG")),
             ("cutout.jpg", (tiny_dataset / "images" / "syn1_0002.jpg").read_bytes())]
    results = classify_images(classifier, items, preview_size=64)
    direct = classifier.predict([data for _, data in items], [name for name, _ in items])
    assert [r.prediction.name for r in results] == ["big.png", "bad.jpg", "grey.png", "cutout.jpg"]
    for result, expected in zip(results, direct):
        assert result.prediction.label == expected.label and result.prediction.error == expected.error
        if expected.error is None:
            got, want = result.prediction.probabilities, expected.probabilities
            assert [got[c] for c in CLASSES] == pytest.approx([want[c] for c in CLASSES], abs=1e-6)
    bad = results[1]
    assert bad.prediction.error and bad.preview is None and bad.framed is None
    assert results[0].size == (900, 700) and max(results[0].preview.size) == 64
    assert results[0].framed.size == (128, 128) and results[0].framed.mode == "RGB"
    assert results[2].framed.mode == "RGB"
