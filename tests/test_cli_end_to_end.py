"""The four commands end to end: download from a stand-in server, train, evaluate, predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from galaxy_core.cli import main
from galaxy_core.model.bundle import read_card

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "galaxy_core", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("download", "build", "train", "evaluate", "predict"):
        assert command in result.stdout


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "error: no catalogue.csv" in err and "Traceback" not in err
    assert main(["predict", "--model", str(tmp_path), str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_four_commands_on_shared_data(shared_gz2: Path, tmp_path: Path) -> None:
    """Download a few hundred real cutouts by coordinates, train briefly, evaluate, predict."""
    from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer

    data, model = tmp_path / "data", tmp_path / "model"
    with CutoutServer(CutoutIndex.from_catalogue(shared_gz2)) as server:
        result = run_cli("download", "--catalogue", str(shared_gz2 / "catalogue.csv"), "--format", "gz2",
                         "--out", str(data), "--limit", "300", "--cutout-url", server.url, "--workers", "8")
        assert result.returncode == 0, result.stderr
        assert server.total_requests == 300
    assert len(list((data / "images").glob("*.jpg"))) == 300
    result = run_cli("train", "--data", str(data), "--out", str(model), "--epochs", "3", "--batch-size", "32",
                     "--image-size", "32", "--width", "8", "--depth", "1", "--no-tta", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "confusion" in result.stdout
    assert "before balancing" in result.stderr
    card = read_card(model)
    # 300 galaxies, 10% held out per class (the volunteers' vote labels): 31 after rounding.
    assert card.provenance.data.split["test"] == 31
    assert card.provenance.command.startswith("python -m galaxy_core train")
    result = run_cli("evaluate", "--model", str(model), "--data", str(data), "--json", str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 31 and metrics["split"] == "test"
    assert metrics["accuracy"] == pytest.approx(card.metrics.accuracy)
    images = sorted((data / "images").glob("*.jpg"))[:5]
    (tmp_path / "broken.jpg").write_text("this is text")
    out_csv = tmp_path / "pred.csv"
    result = run_cli("predict", "--model", str(model), *map(str, images), str(tmp_path / "broken.jpg"),
                     "--out", str(out_csv))
    assert result.returncode == 1 and "broken.jpg" in result.stderr and "Traceback" not in result.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == ["path", "label", "p_spiral", "p_elliptical", "p_uncertain", "error",
                             "vote_smooth", "vote_features", "vote_artifact", "warning", "saliency_peak_x",
                             "saliency_peak_y"]
    assert [r["label"] in ("Spiral", "Elliptical", "Uncertain") for r in rows] == [True] * 5 + [False]
    assert rows[-1]["error"]
