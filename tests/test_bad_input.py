"""Bad input from users: broken or hostile images, catalogues and settings.

Each gets one line saying what is wrong, never a traceback, and everything good beside it still
gets its result.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_dataset, synthetic_galaxy
from PIL import Image

from galaxy_core.base.config import CLASSES, ConfigError, PredictConfig, TrainConfig
from galaxy_core.cli import EXIT_PARTIAL_FAILURE, EXIT_USER_ERROR, main
from galaxy_core.data.framing import NO_GALAXY
from galaxy_core.serving.predict import Classifier
from galaxy_core.training.train import train


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def galaxy(size: int = 128, seed: int = 0) -> Image.Image:
    return Image.fromarray(synthetic_galaxy(0, np.random.default_rng(seed), size))


def good_images() -> dict[str, bytes]:
    """Real images in every awkward mode and size: all must be classified."""
    g = galaxy()
    grey16 = Image.fromarray(np.asarray(g.convert("L"), dtype=np.uint16) * 257)
    return {
        "rgb.jpg": encode(g, "JPEG"),
        "grey.png": encode(g.convert("L"), "PNG"),
        "grey16.png": encode(grey16, "PNG"),
        "rgba.png": encode(g.convert("RGBA"), "PNG"),
        "cmyk.jpg": encode(g.convert("CMYK"), "JPEG"),
        "cmyk.tif": encode(g.convert("CMYK"), "TIFF"),
        "palette.gif": encode(g.convert("P"), "GIF"),
        "strip.webp": encode(galaxy(300).crop((0, 120, 300, 160)), "WEBP"),
        "big.jpg": encode(galaxy(900), "JPEG"),
    }


NO_GALAXY_IMAGES = {"one_pixel.png": encode(Image.new("RGB", (1, 1), (200, 180, 150)), "PNG")}
"""Readable, but with no galaxy in them: not classified, and the warning says why."""


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Unreadable or hostile files, with a word their error must contain."""
    jpeg = encode(galaxy(), "JPEG")
    return {
        "text.jpg": (b"these are galaxy notes, not a picture\n" * 5, "not an image"),
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        # 400 megapixels in 48 KB: Pillow's own limit refuses it at open.
        "bomb.png": (encode(Image.new("1", (20000, 20000)), "PNG"), "decompression bomb"),
        # 81 megapixels, under Pillow's limit: our stricter limit must refuse it.
        "bomb_palette.png": (encode(Image.new("P", (9000, 9000)), "PNG"), "pixel limit"),
        "script.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not an image"),
    }


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("uploads")
    for name, data in {**good_images(), **NO_GALAXY_IMAGES}.items():
        (folder / name).write_bytes(data)
    for name, (data, _) in bad_images().items():
        (folder / name).write_bytes(data)
    return folder


def assert_classified(prediction) -> None:
    assert prediction.error is None, (prediction.name, prediction.error)
    assert prediction.label in CLASSES
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_classifier_classifies_every_real_image_and_explains_the_rest(
        trained_tiny_model: Path, image_folder: Path) -> None:
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model, batch_size=4))
    names = sorted(p.name for p in image_folder.iterdir())
    results = {p.name: p for p in classifier.predict([image_folder / n for n in names], names=names)}
    for name in good_images():
        assert_classified(results[name])
    for name in NO_GALAXY_IMAGES:
        result = results[name]
        assert result.error is None and not result.classified and result.label is None
        assert result.warning.startswith(NO_GALAXY) and result.row()["label"] == ""
    for name, (_, reason) in bad_images().items():
        result = results[name]
        assert result.label is None and result.probabilities is None
        assert reason in result.error and "\n" not in result.error, (name, result.error)


def test_uploads_as_bytes_get_the_same_treatment(trained_tiny_model: Path) -> None:
    """The app passes uploaded files as bytes and file-like objects, not paths."""
    classifier = Classifier.load(PredictConfig(model_dir=trained_tiny_model))
    good, bad = good_images(), bad_images()
    sources = [good["cmyk.jpg"], io.BytesIO(good["grey16.png"]), bad["truncated.jpg"][0], galaxy(64)]
    results = classifier.predict(sources, names=["a", "b", "c", "d"])
    for i in (0, 1, 3):
        assert_classified(results[i])
    assert "truncated" in results[2].error
    direct = classifier.predict([Path("/nonexistent/galaxy.jpg")])[0]
    assert direct.error == "file not found"


def test_cli_predict_reports_each_failure_and_exits_non_zero(
        trained_tiny_model: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "predictions.csv"
    missing = tmp_path / "not-there.png"
    # A folder expands to its image files (.eps is not one of them, so it is also named directly).
    code = main(["predict", str(image_folder), str(image_folder / "script.eps"), str(missing),
                 "--model", str(trained_tiny_model), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_PARTIAL_FAILURE
    assert "Traceback" not in err
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert len(rows) == len(good_images()) + len(NO_GALAXY_IMAGES) + len(bad_images()) + 1
    for name in good_images():
        assert rows[name]["label"] in CLASSES and rows[name]["error"] == ""
    for name, (_, reason) in [*bad_images().items(), ("not-there.png", (b"", "file not found"))]:
        assert rows[name]["label"] == "" and reason in rows[name]["error"]
        lines = [line for line in err.splitlines() if line.startswith("error: ") and name in line]
        assert len(lines) == 1 and reason in lines[0], (name, err)
    assert rows["one_pixel.png"]["label"] == "" and rows["one_pixel.png"]["warning"].startswith(NO_GALAXY)
    assert f"{len(good_images())} classified, {len(bad_images()) + 1} failed, 1 not classified (no galaxy found)" in err


def test_cli_predict_to_stdout_and_bad_model(trained_tiny_model: Path, image_folder: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(image_folder / "rgb.jpg"), "--model", str(trained_tiny_model)]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 1 and rows[0]["label"] in CLASSES
    assert "error" not in captured.err and "1/1" in captured.err  # only the progress bar, on stderr

    assert main(["predict", str(image_folder / "rgb.jpg"), "--model", str(tmp_path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a model folder" in err and "Traceback" not in err

    empty = tmp_path / "no-images"
    empty.mkdir()
    assert main(["predict", str(empty), "--model", str(trained_tiny_model)]) == EXIT_USER_ERROR
    assert "no image files found" in capsys.readouterr().err


# Measures peak resident memory (VmHWM, reset to the current size first) while loading files.
MEMORY_PROBE = r"""
import re, sys
from galaxy_core.sources.images import ImageLoadError, load_image

def status(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read())[1]) // 1024

def growth(path):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = status("VmRSS")
    try:
        load_image(path)
        print("decoded", path)
    except ImageLoadError as exc:
        print("refused", exc)
    return status("VmHWM") - start

load_image(sys.argv[3])  # imports and first-use allocations out of the way
bombs = max(growth(sys.argv[1]), growth(sys.argv[2]))
print("growth", bombs, growth(sys.argv[4]))
"""


def test_pixels_are_limited_before_decoding(image_folder: Path) -> None:
    """Memory must not grow by the size of a bomb's pixels; the same measurement on an image
    just under the limit shows it would notice a decode."""
    control = image_folder.parent / "control-7000.png"
    control.write_bytes(encode(Image.new("P", (7000, 7000)), "PNG"))
    files = [image_folder / "bomb.png", image_folder / "bomb_palette.png", image_folder / "rgb.jpg", control]
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *map(str, files)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["refused", "refused", "decoded"], lines
    bomb_growth_mb, control_growth_mb = map(int, lines[3].split()[1:])
    assert bomb_growth_mb < 20, lines
    assert control_growth_mb > 100, lines  # 49 Mpx decoded, then converted to RGB


# --- catalogues ------------------------------------------------------------------------------














@pytest.mark.parametrize("flag, value, message", [
    ("--timeout", "0", "--timeout"), ("--timeout", "nan", "--timeout"), ("--workers", "0", "--workers"),
    ("--max-rate", "nan", "--max-rate"), ("--size", "4", "--size"), ("--limit", "0", "--limit"),
    ("--cutout-url", "file:///etc/passwd", "http"),
])
def test_bad_download_settings_via_cli(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       flag: str, value: str, message: str) -> None:
    code = main(["download", "--catalogue", str(tiny_dataset / "catalogue.csv"), "--out", str(tmp_path / "o"),
                 flag, value])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# --- training settings -----------------------------------------------------------------------

def tiny_config(data: Path, root: Path, **overrides) -> TrainConfig:
    values = dict(epochs=1, batch_size=8, input_size=32, crop=96, width=8, depth=1, cache_dir=root / "cache")
    values.update(overrides)
    return TrainConfig(data_dir=data, out_dir=root / "model", **values)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train-data") / "d", n_per_class=6)


@pytest.fixture(scope="module")
def two_class_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset with no Uncertain galaxies at all."""
    data = make_dataset(tmp_path_factory.mktemp("two-class") / "d", n_per_class=6)
    lines = (data / "catalogue.csv").read_text().splitlines(keepends=True)
    (data / "catalogue.csv").write_text("".join(line for line in lines if ",Uncertain," not in line))
    return data


BAD_TRAINING = [
    ({"epochs": 0}, "epochs must be between 1 and 10000, got 0"),
    ({"batch_size": 0}, "batch size must be between 1 and 65536"),
    ({"batch_size": 500}, "batch size 500 is larger than the"),
    ({"input_size": 0}, "image size must be between"),
    ({"input_size": 100_000}, "image size must be between"),
    ({"crop": 4}, "centre crop must be at least 16, got 4"),
    ({"lr": float("nan")}, "learning rate"),
    ({"weight_decay": float("nan")}, "weight decay"),
    ({"seed": -1}, "seed must be between"),
    ({"num_threads": -2}, "threads must be between 1 and 1024"),
    ({"val_fraction": 0.9}, "validation fraction must be between"),
    ({"max_galaxies": 4}, "too few to hold out"),
]


@pytest.mark.parametrize("overrides, message", BAD_TRAINING,
                         ids=[f"{k}={v}" for o, _ in BAD_TRAINING for k, v in o.items()])
def test_bad_training_settings_fail_before_any_work(train_data: Path, tmp_path: Path,
                                                    overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(train_data, tmp_path, **overrides))
    assert not (tmp_path / "model").exists() and not (tmp_path / "cache").exists()


def test_class_without_examples_fails_before_any_work(two_class_data: Path, tmp_path: Path) -> None:
    for balance in ("median", "off"):
        with pytest.raises(ConfigError, match="Uncertain have no training examples"):
            train(tiny_config(two_class_data, tmp_path, balance=balance))
    assert not (tmp_path / "model").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "epochs must be between 1 and 10000"),
    (["--batch-size", "500"], "is larger than the"),
    (["--image-size", "-3"], "image size"),
    (["--lr", "nan"], "learning rate"),
])
def test_bad_training_settings_via_cli(train_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       args: list[str], message: str) -> None:
    code = main(["train", "--data", str(train_data), "--out", str(tmp_path / "model"), "--cache-dir",
                 str(tmp_path / "cache"), "--image-size", "32", "--width", "8", "--depth", "1", *args])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and message in err and "Traceback" not in err
    assert not (tmp_path / "model").exists() and not (tmp_path / "cache").exists()


def test_training_on_a_folder_without_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "no catalogue.csv" in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()


def test_cli_user_errors_never_show_a_traceback(tmp_path: Path, tiny_dataset: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    missing = str(tmp_path / "missing")
    no_columns = tmp_path / "no-columns"
    no_columns.mkdir()
    (no_columns / "catalogue.csv").write_text("a,b\n1,2\n")
    commands = {
        "build": ["build", "--data", missing],
        "evaluate": ["evaluate", "--model", missing, "--data", str(tiny_dataset)],
        "predict": ["predict", str(tiny_dataset / "images"), "--model", missing],
        "train": ["train", "--data", missing, "--out", str(tmp_path / "model")],
        "download": ["download", "--catalogue", missing + ".csv", "--out", str(tmp_path / "dl")],
        "serve-cutouts": ["serve-cutouts", "--data", str(no_columns), "--port", "0"],
    }
    for name, argv in commands.items():
        code = main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == EXIT_USER_ERROR and len(lines) == 1 and "Traceback" not in err, (name, err)
