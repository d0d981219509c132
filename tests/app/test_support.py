"""The dashboard's own helpers (not pages): folders and safe names, chart tables, paging, durations
and the download job, on synthetic data and a local cutout server."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from app_support.folders import AppFolders, InvalidNameError, model_dir_for_training, new_dataset_dir, validate_name
from app_support.tables import (
    format_duration,
    history_frame,
    misclassified_frame,
    page_bounds,
    per_class_frame,
    reliability_frame,
    row_normalise,
)
from app_support.tasks import download_task, uploaded_catalogue
from galaxy_core.base.config import CLASSES, ConfigError, DownloadConfig
from galaxy_core.model.card import EpochRecord
from galaxy_core.model.metrics import ClassScores, Metrics, ReliabilityBin
from galaxy_core.sources.download import DownloadProgress


def test_folders_come_from_the_environment_or_the_repo(tmp_path: Path):
    repo = tmp_path / "repo"
    plain = AppFolders.from_env(repo, {})
    assert plain == AppFolders(repo / "data", repo / "models", repo / "data" / ".cache", repo=repo)
    env = {"GALAXY_DATA_ROOT": "/d", "GALAXY_MODELS_ROOT": "/m", "GALAXY_CACHE_DIR": "/c"}
    assert AppFolders.from_env(repo, env) == AppFolders(Path("/d"), Path("/m"), Path("/c"), repo=repo)
    shelves = AppFolders.from_env(repo, {"GALAXY_READ_ROOTS": "/a:/b"})
    assert shelves.read_roots == (Path("/a"), Path("/b")) and shelves.roots()[0] == repo / "data"
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
    assert model_dir_for_training(tmp_path, "new") == tmp_path / "new"


def test_chart_tables():
    history = [EpochRecord(1, train_loss=1.0, train_accuracy=0.4, val_loss=1.2, val_accuracy=0.3, lr=0.1, seconds=1),
               EpochRecord(2, train_loss=0.8, train_accuracy=0.6, val_loss=0.9, val_accuracy=0.5, lr=0.1, seconds=1)]
    frame = history_frame(history)
    assert len(frame) == 8
    val_acc = frame[(frame.metric == "accuracy") & (frame.split == "validation")]
    assert val_acc["value"].tolist() == [0.3, 0.5]
    assert history_frame([]).empty
    normalised = row_normalise([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    np.testing.assert_allclose(normalised, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    metrics = Metrics(n=12, accuracy=0.25, balanced_accuracy=0.25, spiral_vs_elliptical_accuracy=None,
                      log_loss=1.0, ece=0.1, per_class={c: ClassScores(0.5, 0.25, 1 / 3, 4) for c in CLASSES},
                      confusion=[[1, 2, 1]] * 3, reliability=[ReliabilityBin(0.3, 0.4, 2, 0.35, 0.5)])
    table = per_class_frame(metrics)
    assert table["class"].tolist() == list(CLASSES) and table["support"].sum() == 12
    assert per_class_frame(None).empty
    bins = reliability_frame(metrics)
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


@pytest.mark.parametrize("seconds, text", [(None, "–"), (float("nan"), "–"), (4.4, "4 s"),
                                           (65, "1 min 05 s"), (3 * 3600 + 120, "3 h 02 min")])
def test_durations_read_naturally(seconds, text):
    assert format_duration(seconds) == text


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
        assert isinstance(events[0], str) and "reading the uploaded catalogue" in events[0]
        progress = [e for e in events if isinstance(e, DownloadProgress)]
        assert progress[-1].done == 9 and progress[-1].total == 9
        assert uploaded_catalogue(out_dir).read_bytes() == uploaded
        assert len(list((out_dir / "images").glob("*.jpg"))) == 9
        # Resuming from the kept upload: everything is already there.
        again = download_task(out_dir, str(uploaded_catalogue(out_dir)), config)(events.append,
                                                                                 threading.Event())
        assert (again.downloaded, again.skipped) == (0, 9)
    assert uploaded_catalogue(tmp_path) is None


def test_pixel_histograms_become_a_long_table(tiny_dataset: Path, isolated_cache: Path):
    from app_support.tables import histogram_frame
    from galaxy_core.data.cache import PackedDataset
    from galaxy_core.data.normalise import pixel_statistics

    stats = pixel_statistics(PackedDataset.open(tiny_dataset, cache_root=isolated_cache), bins=16)
    frame = histogram_frame(stats)
    assert len(frame) == 48 and set(frame["channel"]) == {"red", "green", "blue"}
    assert frame.groupby("channel")["pixels"].sum().tolist() == [36 * 128 * 128] * 3
