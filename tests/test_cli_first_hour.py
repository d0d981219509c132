"""What a new user meets on the command line: plain image,label catalogues, progress on stderr
for evaluate and predict (stdout stays clean), and training time summed over resumed sessions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset

from galaxy_core.base.config import TrainConfig
from galaxy_core.cli import main
from galaxy_core.model.bundle import load_bundle
from galaxy_core.training.train import train


def plain_folder(root: Path, labels: list[str] | None = None) -> Path:
    """A synthetic dataset rewritten as a plain image,label catalogue (file names only)."""
    data = make_dataset(root, n_per_class=4, seed=5)
    frame = pd.read_csv(data / "catalogue.csv")
    for rel in frame["image"]:  # galaxies the tiny model never saw, under new names
        (data / rel).rename(data / "images" / f"new_{Path(rel).name}")
    frame["image"] = "images/new_" + frame["image"].str.replace("images/", "", regex=False)
    words = labels or ["spiral", "ELLIPTICAL", "Unsure"]
    names = {"Spiral": words[0], "Elliptical": words[1], "Uncertain": words[2]}
    pd.DataFrame({"image": frame["image"].str.replace("images/", "", regex=False),
                  "label": frame["label"].map(names)}).to_csv(data / "catalogue.csv", index=False)
    return data




def test_evaluate_scores_a_plain_folder_with_a_bar_on_stderr(
        trained_tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = plain_folder(tmp_path / "plain")
    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--model", str(trained_tiny_model), "--data", str(data), "--json", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # The bar counts galaxies (12), not the images of its three passes (36).
    assert "evaluate" in captured.err and "12/12" in captured.err and "36/36" not in captured.err
    assert "36/36" not in captured.out and "accuracy" in captured.out
    assert json.loads(out.read_text())["n"] == 12


def test_predict_shows_a_bar_on_stderr_and_keeps_the_csv_clean(
        trained_tiny_model: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["predict", str(tiny_dataset / "images"), "--model", str(trained_tiny_model)])
    captured = capsys.readouterr()
    assert code == 0
    n = len(list((tiny_dataset / "images").glob("*.jpg")))
    assert f"{n}/{n}" in captured.err and "predict" in captured.err
    rows = captured.out.strip().splitlines()
    assert rows[0].startswith("path,label") and len(rows) == n + 1


def test_training_time_sums_every_session_and_the_final_evaluation_reports_progress(
        tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=6)
    config = TrainConfig(data_dir=data, out_dir=tmp_path / "model", epochs=2, batch_size=8, input_size=32,
                         crop=96, width=4, depth=1, tta=False, cache_dir=tmp_path / "cache")
    stop = threading.Event()

    def stop_in_epoch_2(event) -> None:
        if event.phase == "train" and event.epoch == 2:
            stop.set()

    assert train(config, stop_in_epoch_2, stop).stopped
    events = []
    result = train(config, events.append)
    card = load_bundle(tmp_path / "model").card
    first_epoch = result.history[0].seconds
    session_2 = [e for e in events if e.phase == "epoch"][-1].elapsed_s  # to its last epoch
    assert card.provenance.training_seconds >= round(first_epoch + session_2, 1) - 0.1
    evaluating = [e for e in events if e.phase == "evaluate"]
    assert evaluating and evaluating[-1].batch == evaluating[-1].batches > 0
    assert np.all(np.diff([e.batch for e in evaluating]) >= 0)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_model_help_says_the_shipped_model_is_the_default(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "(default: the shipped model," in " ".join(capsys.readouterr().out.split())


def test_grad_cam_colours_match_the_caption_and_leave_the_galaxy_visible() -> None:
    from PIL import Image

    from galaxy_core.serving.gradcam import CAPTION, COLOUR_MAP, colour_scale, colourise, overlay_heatmap

    assert COLOUR_MAP == "inferno" and "bright yellow = drove the prediction" in CAPTION
    hot, cold = colourise(np.array([1.0, 0.0]))
    assert hot[0] > 0.9 and hot[1] > 0.9 and hot[2] < 0.7  # the peak is bright yellow
    assert cold.max() < 0.05
    scale = np.asarray(colour_scale(64, 4))
    assert scale.shape == (4, 64, 3) and scale[0, -1].sum() > scale[0, 0].sum() + 500
    galaxy = Image.fromarray(np.full((32, 32, 3), (40, 120, 200), np.uint8))
    heat = np.zeros((8, 8))
    heat[0, 0] = 1.0
    mixed = np.asarray(overlay_heatmap(galaxy, heat))
    assert (mixed[-1, -1] == (40, 120, 200)).all()  # no heat: the galaxy shows as it is
    assert abs(int(mixed[0, 0, 0]) - 40) > 100  # the hot corner takes the map's colour


def test_the_examples_folder_lists_its_galaxies_and_names_what_is_wrong(tmp_path: Path) -> None:
    from galaxy_core.serving.examples import ExamplesError, list_examples

    assert list_examples(tmp_path / "absent") == []
    shipped = list_examples()
    assert len(shipped) == 24 and all(e.path.is_file() and len(e.votes) == 3 for e in shipped)
    assert {e.label: sum(x.label == e.label for x in shipped) for e in shipped} == {
        "Spiral": 8, "Elliptical": 8, "Uncertain": 8}
    (tmp_path / "images").mkdir()
    (tmp_path / "catalogue.csv").write_text("image,label,ra,dec\nimages/missing.jpg,Spiral,1,2\n")
    with pytest.raises(ExamplesError, match="missing.jpg"):
        list_examples(tmp_path)


def test_training_on_a_busy_machine_suggests_one_thread_unless_threads_were_chosen() -> None:
    from galaxy_core.terminal import busy_machine_hint

    hint = busy_machine_hint(3.4, 2, None)
    assert hint is not None and "load 3.4 on 2 cores" in hint and "--threads 1" in hint
    assert busy_machine_hint(3.4, 2, 1) is None  # the user chose
    assert busy_machine_hint(1.2, 2, None) is None  # not busy
    assert busy_machine_hint(5.0, 1, None) is None  # one core: one thread already
