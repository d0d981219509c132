"""Dataset folders, listings of datasets and models, sample galaxies, pixel statistics, single cutouts
by coordinates and explained predictions, on synthetic data and a local cutout server."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from galaxy_core.base.config import CLASSES, ConfigError
from galaxy_core.data.cache import PackedDataset
from galaxy_core.data.dataset import sample_galaxies
from galaxy_core.data.normalise import pixel_statistics
from galaxy_core.model.bundle import list_models
from galaxy_core.serving.predict import Classifier, PredictConfig, classify_uploads
from galaxy_core.sources.cutout_server import ServerOptions
from galaxy_core.sources.cutouts import CutoutError, fetch_cutout
from galaxy_core.sources.folder import DatasetError, DatasetFolder, list_datasets


def test_datasets_are_listed_and_typed_folders_checked(tiny_dataset: Path, tmp_path: Path):
    assert list_datasets(tmp_path / "absent") == []
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "catalogue.csv").write_text("hidden folders are not datasets")
    assert list_datasets(tmp_path) == [tiny_dataset]
    assert DatasetFolder.from_user(f"  {tiny_dataset}  ").root == tiny_dataset.resolve()
    for text, message in [("", "type the path"), (str(tmp_path / "nope"), "is not a folder"),
                          (str(tmp_path / "empty-folder"), "no catalogue.csv")]:
        with pytest.raises(DatasetError, match=message):
            DatasetFolder.from_user(text)
    no_images = tmp_path / "no-images"
    no_images.mkdir()
    (no_images / "catalogue.csv").write_text("id\n")
    with pytest.raises(DatasetError, match="no images/ folder"):
        DatasetFolder.from_user(str(no_images))


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
    card = models["tiny"].card
    assert card.provenance.data.galaxies == 36 and card.input.input_size == 32
    assert card.architecture.name == "resnet_small"
    assert 0 <= card.metrics.accuracy <= 1 and card.provenance.data.split["test"] == card.metrics.n


def test_gallery_images_stay_inside_their_dataset(tiny_dataset: Path, tmp_path: Path):
    (tmp_path / "secret.jpg").write_bytes(b"x")
    inside = tiny_dataset / "images" / "syn0_0000.jpg"
    folder = DatasetFolder(tiny_dataset)
    assert folder.image("images/syn0_0000.jpg") == inside.resolve()
    assert folder.image("../secret.jpg") is None
    assert folder.image("images/missing.jpg") is None
    (tiny_dataset / "images" / "linked.jpg").symlink_to(tmp_path / "secret.jpg")
    assert folder.image("images/linked.jpg") is not None  # as training reads it


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


def test_grad_cam_overlay_is_drawn_on_the_model_view(trained_tiny_model: Path, tiny_dataset: Path):
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model))
    image = Image.open(tiny_dataset / "images" / "syn0_0000.jpg").convert("RGB").resize((300, 200))
    view = classifier.model_view(image)
    heat = classifier.grad_cam(image)
    overlay = classifier.grad_cam_overlay(image)
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
    results = classify_uploads(classifier, items, preview_size=64)
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
