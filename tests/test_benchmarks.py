"""The benchmark functions at toy size: the figures they print exist and make sense.

No speed is asserted here (timings belong to ``benchmarks/run.py``); only invariants that hold
on any machine, such as a server's capacity bounding what a client can get from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.common import run_child
from benchmarks.download_bench import bench_download, bench_download_scaling
from benchmarks.predict_bench import bench_predict
from benchmarks.run import main as run_main
from benchmarks.train_bench import bench_step_options, bench_train, epoch_seconds, shipped_settings, train_config
from galaxy_core.base.config import TrainConfig
from galaxy_core.data.cache import PackedDataset, build_cache
from galaxy_core.data.geometry import InputGeometry, compose_dihedral, crop_and_resize, dihedral
from galaxy_core.data.normalise import ChannelStats
from galaxy_core.model import precision
from galaxy_core.model.card import ModelCard, Provenance
from galaxy_core.model.network import Architecture


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """As the benchmark runs by default: on a busy two-core machine a second thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def toy_settings() -> dict:
    """The shipped settings, shrunk to a network and batch that a 36-galaxy set can train."""
    return {**shipped_settings(None), "width": 8, "depth": 1, "input_size": 32, "batch_size": 8}


def positive(values: dict, *keys: str) -> None:
    for key in keys:
        assert math.isfinite(values[key]) and values[key] > 0, (key, values[key])


def test_download_figures(tiny_dataset: Path, tmp_path: Path) -> None:
    out = bench_download(tiny_dataset, tmp_path / "dl", n=10, sequential_n=4, latency_s=0.01,
                         max_concurrent=4, workers=4, fault_every=5)
    assert out["download_images"] == 10 and out["download_sequential_images"] == 4
    positive(out, "download_images_per_s", "download_sequential_images_per_s",
             "download_speedup_vs_sequential", "download_images_per_s_with_retries",
             "download_images_per_s_one_thread_per_slot")
    assert out["download_server_limit_images_per_s"] == pytest.approx(400)
    # The server serves at most max_concurrent requests at a time: no client can beat its limit.
    assert 0 < out["download_fraction_of_server_limit"] <= 1.05
    assert out["download_resume_requests"] == 0 and out["download_resume_skipped"] == 10
    assert out["download_retry_fraction"] == pytest.approx(2 / 10)  # galaxies 0 and 5 failed once
    assert not (tmp_path / "dl").exists()


def test_download_scaling_figures(tiny_dataset: Path, tmp_path: Path) -> None:
    out = bench_download_scaling(tiny_dataset, tmp_path / "scale", (6, 12), latency_s=0.01, max_concurrent=4,
                                 workers=4)
    positive(out, "download_s_6", "download_s_12", "download_per_galaxy_ratio_12_vs_6")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_figures(tiny_dataset: Path, tmp_path: Path, toy_settings: dict, precision: str) -> None:
    settings = {**toy_settings, "precision": precision}
    out = bench_train(tiny_dataset, tmp_path / "cache", settings, steps=1, blocks=2, reference_workers=0)
    assert out["train_steps_each"] == 2 and out["train_batch_size"] == 8
    assert out["train_precision"] == precision
    positive(out, "train_images_per_s", "train_reference_images_per_s", "train_speedup_vs_reference",
             "batches_images_per_s", "batches_reference_images_per_s", "batches_speedup_vs_reference")
    assert out["train_speedup_vs_reference"] == pytest.approx(
        out["train_images_per_s"] / out["train_reference_images_per_s"])


def test_step_options_restore_the_thread_count(tiny_dataset: Path, tmp_path: Path,
                                               toy_settings: dict) -> None:
    out = bench_step_options(train_config(tiny_dataset, tmp_path, toy_settings), repeats=1, threads=(1, 2))
    assert torch.get_num_threads() == 1
    positive(out, "step_ms_channels_last", "step_ms_contiguous", "step_ms_bf16_autocast", "step_ms_threads_1",
             "step_ms_threads_2", "channels_last_speedup", "bf16_autocast_speedup")


def test_epoch_covers_every_view(tiny_dataset: Path, tmp_path: Path, toy_settings: dict) -> None:
    out = epoch_seconds(tiny_dataset, tmp_path / "cache", toy_settings, galaxies=30)
    assert out["steps"] == math.ceil(out["views"] / toy_settings["batch_size"]) and out["galaxies"] == 30
    positive(out, "seconds", "images_per_s", "setup_peak_rss_mb")


def test_prediction_figures_without_a_shipped_model(tiny_dataset: Path, tmp_path: Path,
                                                    toy_settings: dict) -> None:
    out = bench_predict(tmp_path / "no-model", tiny_dataset, tmp_path, toy_settings, singles=2, batch=4)
    assert out["predict_model_is_shipped"] == 0 and out["predict_tta_default"] == 1
    assert out["predict_precision"] == "fp32"
    positive(out, "predict_ms_per_image", "predict_images_per_s", "predict_ms_per_image_no_tta",
             "predict_images_per_s_no_tta", "predict_ms_per_image_fp32", "predict_images_per_s_fp32",
             "predict_images_per_s_one_pass")
    assert out["predict_max_probability_change_vs_fp32"] == 0  # the same arithmetic


def test_prediction_figures_of_a_bf16_model(tiny_dataset: Path, tmp_path: Path, toy_settings: dict,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "bf16_native", lambda device: True)
    out = bench_predict(tmp_path / "no-model", tiny_dataset, tmp_path, {**toy_settings, "precision": "bf16"},
                        singles=2, batch=4)
    assert out["predict_precision"] == "bf16"
    assert 0 < out["predict_max_probability_change_vs_fp32"] < 0.5


def test_settings_come_from_the_model_card(tmp_path: Path) -> None:
    config = TrainConfig(tmp_path, tmp_path, arch="plain_cnn", width=16, depth=1, crop=80, input_size=48,
                         batch_size=32)
    card = ModelCard(Architecture("plain_cnn", 16, 1), InputGeometry(crop=80, input_size=48),
                     ChannelStats((0.1,) * 3, (0.2,) * 3), provenance=Provenance(config, 0, "", 0.0))
    (tmp_path / "card.json").write_text(json.dumps(card.to_dict()))
    settings = shipped_settings(tmp_path)
    assert (settings["arch"], settings["width"], settings["crop"], settings["input_size"],
            settings["batch_size"]) == ("plain_cnn", 16, 80, 48, 32)


def test_build_section_prints_its_figures(tiny_dataset: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--only", "build", "--data", str(tiny_dataset), "--work-dir", str(tmp_path / "w")]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert int(lines["dataset_build_galaxies"]) == 36
    assert float(lines["build_peak_rss_mb"]) >= float(lines["import_peak_rss_mb"]) > 0
    assert float(lines["dataset_build_s"]) > 0 and "download_images_per_s" not in lines


def test_a_failing_child_raises_with_its_error() -> None:
    with pytest.raises(RuntimeError, match="benchmark child no-such-job failed"):
        run_child(["no-such-job"])


def test_symmetries_commute_with_crop_and_resize(tiny_dataset: Path, tmp_path: Path) -> None:
    """Training batches turn the small network-size crop rather than the whole cutout: the same
    input up to float rounding, because a centred crop and a resize commute with the symmetries."""
    dataset = PackedDataset(build_cache(tiny_dataset, cache_root=tmp_path).cache_dir)
    cutouts = torch.from_numpy(dataset.images(np.arange(6)))
    for size in (32, 64, 96):
        geometry = InputGeometry(source_size=128, crop=96, input_size=size)
        for k in range(8):
            turned = dihedral(cutouts.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)
            assert torch.allclose(crop_and_resize(turned, geometry),
                                  dihedral(crop_and_resize(cutouts, geometry), k), atol=1e-5), (size, k)


@pytest.mark.parametrize("k", range(8))
@pytest.mark.parametrize("turns", range(4))
def test_compose_dihedral(k: int, turns: int) -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    composed = int(compose_dihedral(torch.tensor([k]), torch.tensor([turns]))[0])
    assert torch.equal(dihedral(x, composed), dihedral(dihedral(x, turns), k))


def test_load_bench_parts_count_answers_and_the_memory_of_a_process_tree() -> None:
    import os
    import subprocess
    import sys

    from benchmarks.common import free_port
    from benchmarks.load_bench import summarise, tree_rss_bytes

    summary = summarise([3.0, None, 1.0, 2.0])
    assert (summary.asked, summary.answered, summary.median_s, summary.slowest_s) == (4, 3, 2.0, 3.0)
    assert summary.line() == "3 of 4 answered, median 2.0 s, slowest 3.0 s"
    assert summarise([None]).line() == "0 of 1 answered"
    assert 0 < free_port() < 65536
    alone = tree_rss_bytes(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert tree_rss_bytes(os.getpid()) > alone  # the child's memory counts with its parent's
    finally:
        child.communicate(b"")


def test_the_edge_on_weight_is_chosen_by_balanced_wide_field_accuracy_within_the_validation_slack() -> None:
    from benchmarks.tune_class_rule import Score, balanced_accuracy, choose

    says = np.array([True, False, False, False, False, False])
    truth = np.array([True, True, False, False, False, False])
    assert balanced_accuracy(says, truth) == pytest.approx((0.5 + 1.0) / 2)
    rows = [Score(0.0, 0.820, 0.994, 0.79, 0.74, 0.45),
            Score(0.5, 0.818, 0.991, 0.83, 0.73, 0.40),  # plain accuracy up by calling more Elliptical
            Score(1.0, 0.817, 0.990, 0.81, 0.76, 0.60),  # balanced best, within 0.5 points on validation
            Score(2.0, 0.805, 0.910, 0.86, 0.80, 0.75)]  # better still, but validation falls too far
    assert choose(rows).weight == 1.0


def test_the_edge_cue_crop_is_centred_on_the_frame_and_smaller_than_it() -> None:
    from types import SimpleNamespace

    from PIL import Image

    from benchmarks.edge_cue import inside_its_frame

    image = Image.new("RGB", (400, 300))
    crop = inside_its_frame(image, SimpleNamespace(box=(100.0, 50.0, 200.0)))  # frame centred at (200, 150)
    assert crop.size == (120, 120)  # 0.6 of the frame's side: the frame runs past it on every side
    marked = Image.new("RGB", (400, 300))
    marked.putpixel((200, 150), (255, 0, 0))
    assert inside_its_frame(marked, SimpleNamespace(box=(100.0, 50.0, 200.0))).getpixel((60, 60)) == (255, 0, 0)


def test_models_are_averaged_only_when_they_hold_out_the_same_galaxies(tmp_path: Path) -> None:
    import shutil

    from benchmarks.seeds import check_one_split

    repo = Path(__file__).resolve().parents[1]
    first, tree = repo / "models" / "first-question", repo / "models" / "default"
    check_one_split([first, tree])  # one split (seed 0, votes rule): no complaint
    other = tmp_path / "other"
    shutil.copytree(first, other)
    evaluation = json.loads((other / "evaluation.json").read_text())
    split_ids = evaluation["split_ids"]
    split_ids["val"][0], split_ids["train"][0] = split_ids["train"][0], split_ids["val"][0]
    (other / "evaluation.json").write_text(json.dumps(evaluation))
    with pytest.raises(SystemExit, match="--split-seed"):
        check_one_split([first, other])
