"""Hostile files and names: a model or checkpoint carrying a pickled payload never runs it, a
catalogue id or image path never reaches outside its folder, and no external program is started
to read an image."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from conftest import make_dataset
from PIL import Image

from galaxy_core.base.config import DownloadConfig, PredictConfig, TrainConfig
from galaxy_core.cli import EXIT_USER_ERROR, main
from galaxy_core.data.cache import PackedDataset, build_cache
from galaxy_core.model.bundle import CARD_NAME, WEIGHTS_NAME, BundleError, load_bundle
from galaxy_core.serving.predict import Classifier
from galaxy_core.sources.catalogue import read_catalogue
from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer, ServerOptions
from galaxy_core.sources.download import download_cutouts
from galaxy_core.sources.folder import IMAGES_DIR, DatasetFolder
from galaxy_core.sources.images import ImageLoadError, load_image
from galaxy_core.training.checkpoint import CHECKPOINT_NAME, CheckpointError
from galaxy_core.training.train import train


class Payload:
    """Unpickling this creates ``marker``: proof that loading a file ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled(marker: Path) -> bytes:
    return pickle.dumps({"weights": Payload(marker)})


def torch_saved(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": Payload(marker), "epoch": 1}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("make", [pickled, torch_saved], ids=["raw-pickle", "torch-save"])
def test_the_payload_is_live(tmp_path: Path, make) -> None:
    """The payloads below really would run if anything unpickled them."""
    marker = tmp_path / "ran"
    data = make(marker)
    if make is pickled:
        pickle.loads(data)
    else:
        torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


@pytest.fixture
def model_copy(trained_tiny_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_tiny_model, tmp_path / "model"))


@pytest.mark.parametrize("make", [pickled, torch_saved], ids=["raw-pickle", "torch-save"])
def test_pickled_model_file_is_refused_without_running(model_copy: Path, tmp_path: Path, make,
                                                       capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran"
    (model_copy / WEIGHTS_NAME).write_bytes(make(marker))
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        load_bundle(model_copy)
    image = tmp_path / "galaxy.png"
    Image.new("RGB", (64, 64), (90, 80, 70)).save(image)
    code = main(["predict", str(image), "--model", str(model_copy)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "not a valid safetensors file" in err and "Traceback" not in err
    assert not marker.exists()


def test_malformed_model_card_is_refused_by_name(model_copy: Path) -> None:
    card = json.loads((model_copy / CARD_NAME).read_text())
    (model_copy / CARD_NAME).write_text(json.dumps({**card, "input": "128px"}))
    with pytest.raises(BundleError, match="malformed input"):
        Classifier.load(PredictConfig(model_dir=model_copy))
    (model_copy / CARD_NAME).write_text(json.dumps({**card, "architecture": {**card["architecture"], "width": "wide"}}))
    with pytest.raises(BundleError, match="no buildable model"):
        load_bundle(model_copy)


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.masked_fill(torch.ones_like(t, dtype=torch.bool).tril_(), float("nan")) if t.dim() == 2
     else t.fill_(float("nan")), "holds NaN or infinite values"),
    (lambda t: t.fill_(float("inf")), "holds NaN or infinite values"),
    (lambda t: t.to(torch.int8), "is int8, not the float32"),
    (lambda t: t.to(torch.float16), "is float16, not the float32"),
], ids=["nan", "inf", "int8", "float16"])
def test_weights_that_would_answer_nonsense_are_refused_by_tensor(model_copy: Path, damage, message: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(model_copy / WEIGHTS_NAME))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = damage(state[name].clone()).contiguous()
    save_file(state, str(model_copy / WEIGHTS_NAME))
    with pytest.raises(BundleError, match=f"tensor {name} {message}"):
        load_bundle(model_copy)
    image = model_copy.parent / "galaxy.png"
    Image.new("RGB", (64, 64), (90, 80, 70)).save(image)
    assert main(["predict", "--model", str(model_copy), str(image)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("secure") / "d", n_per_class=6)


def tiny_config(data: Path, out: Path) -> TrainConfig:
    return TrainConfig(data_dir=data, out_dir=out, epochs=1, batch_size=8, input_size=32, crop=96, width=8,
                       depth=1, cache_dir=out.parent / "cache")


@pytest.mark.parametrize("make", [pickled, torch_saved], ids=["raw-pickle", "torch-save"])
def test_pickled_checkpoint_is_refused_without_running(small_data: Path, tmp_path: Path, make,
                                                       capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran"
    out = tmp_path / "model"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(make(marker))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        train(tiny_config(small_data, out))
    code = main(["train", "--data", str(small_data), "--out", str(out), "--epochs", "1",
                 "--batch-size", "8", "--image-size", "32", "--width", "8", "--depth", "1",
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "cannot be loaded safely" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (out / CARD_NAME).exists()


def test_checkpoint_of_the_wrong_shape_is_refused(small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 1}, out / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="not a training checkpoint .missing config, history"):
        train(tiny_config(small_data, out))
    torch.save(torch.zeros(3), out / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(tiny_config(small_data, out))


HOSTILE_IDS = ["../../escaped", "/tmp/absolute", "..", ".", "a/b", "a_b", "Case", "case", "x" * 300,
               "nul\x00byte", "back\\slash", "~/home"]


def test_hostile_ids_never_write_outside_the_output_folder(tmp_path: Path, cutout_server_for) -> None:
    source = make_dataset(tmp_path / "src", n_per_class=4)
    catalogue = read_catalogue(source / "catalogue.csv").iloc[: len(HOSTILE_IDS)].copy()
    images = {galaxy: (source / rel).read_bytes() for galaxy, rel in zip(HOSTILE_IDS, catalogue["image"])}
    catalogue["id"] = HOSTILE_IDS
    jail = tmp_path / "jail"
    out = jail / "out"
    before = {p for p in tmp_path.rglob("*")}
    with cutout_server_for(source) as server:
        report = download_cutouts(catalogue, DownloadConfig(out_dir=out, cutout_url=server.url, workers=4,
                                                            backoff_s=0.01, timeout_s=5))
    assert report.ok and report.downloaded == len(HOSTILE_IDS)
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(p == jail or p.is_relative_to(out) for p in created), sorted(map(str, created))
    assert not Path("/tmp/absolute.jpg").exists() and not (tmp_path / "escaped.jpg").exists()
    # Every galaxy has its own file, holding its own image: no two ids share one.
    written = pd.read_csv(out / "catalogue.csv", dtype={"id": str}, keep_default_na=False)
    assert written["image"].nunique() == len(HOSTILE_IDS)
    assert len({p.name.lower() for p in (out / IMAGES_DIR).iterdir()}) == len(HOSTILE_IDS)
    for galaxy_id, rel in zip(catalogue["id"], written["image"]):
        path = out / rel
        assert path.parent == out / IMAGES_DIR and len(path.name) < 120
        assert path.read_bytes() == images[galaxy_id], galaxy_id


def test_dataset_never_reads_images_outside_its_folder(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=4)
    secret = np.full((128, 128, 3), 255, np.uint8)
    Image.fromarray(secret).save(tmp_path / "secret.jpg")
    catalogue = pd.read_csv(data / "catalogue.csv")
    hostile = {"syn0_0000": "../secret.jpg", "syn1_0000": str(tmp_path / "secret.jpg"),
               "syn2_0000": "images/../../secret.jpg"}
    catalogue["image"] = [hostile.get(i, rel) for i, rel in zip(catalogue["id"], catalogue["image"])]
    catalogue.to_csv(data / "catalogue.csv", index=False)

    assert set(DatasetFolder(data).read_catalogue()["id"]).isdisjoint(hostile)
    dataset = PackedDataset(build_cache(data, cache_root=tmp_path / "cache").cache_dir)
    assert len(dataset) == 12 - len(hostile) and set(dataset.ids).isdisjoint(hostile)
    assert not (dataset.images(np.arange(len(dataset))) == 255).all(axis=(1, 2, 3)).any()


def test_the_cutout_server_serves_only_files_inside_its_folder(tmp_path: Path, cutout_server_for) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=2)
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8 private bytes")
    catalogue = pd.read_csv(data / "catalogue.csv")
    hostile = {0: "../secret.jpg", 1: str(tmp_path / "secret.jpg"), 2: "images/gone.jpg"}
    for row, rel in hostile.items():
        catalogue.loc[row, "image"] = rel
    catalogue.to_csv(data / "catalogue.csv", index=False)
    with cutout_server_for(data) as server:
        for row in range(len(catalogue)):
            ra, dec = catalogue.loc[row, ["ra", "dec"]]
            response = requests.get(f"{server.url}", params={"ra": ra, "dec": dec}, timeout=10)
            assert response.status_code == (404 if row in hostile else 200), row
            assert b"private" not in response.content


def test_the_cutout_server_follows_no_link_out_of_its_folder(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=2)
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8 private bytes")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "g.jpg").write_bytes(b"\xff\xd8 private bytes too")
    catalogue = pd.read_csv(data / "catalogue.csv")
    (data / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (data / "images" / "linked-dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (data / "images" / "inside.jpg").symlink_to(data / catalogue.loc[3, "image"])
    hostile = {0: "images/link.jpg", 1: "images/linked-dir/g.jpg"}
    for row, rel in {**hostile, 2: "images/inside.jpg"}.items():
        catalogue.loc[row, "image"] = rel
    catalogue.to_csv(data / "catalogue.csv", index=False)
    with CutoutServer(CutoutIndex.from_catalogue(data)) as server:
        for row in range(len(catalogue)):
            ra, dec = catalogue.loc[row, ["ra", "dec"]]
            response = requests.get(server.url, params={"ra": ra, "dec": dec}, timeout=10)
            assert response.status_code == (404 if row in hostile else 200), row
            assert b"private" not in response.content
        # A file swapped for a link after the server started is not followed either.
        served = data / catalogue.loc[4, "image"]
        served.unlink()
        served.symlink_to(tmp_path / "secret.jpg")
        ra, dec = catalogue.loc[4, ["ra", "dec"]]
        response = requests.get(server.url, params={"ra": ra, "dec": dec}, timeout=10)
        assert response.status_code == 404 and b"private" not in response.content


@pytest.mark.parametrize("sent", [b"", b"GET /getjpeg?ra=1"], ids=["nothing", "half-a-request"])
def test_the_cutout_server_drops_a_silent_connection(tmp_path: Path, sent: bytes) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=1)
    options = ServerOptions(idle_timeout_s=0.5)
    with CutoutServer(CutoutIndex.from_catalogue(data), options) as server, \
            socket.create_connection(server.httpd.server_address[:2], timeout=30) as client:
        client.sendall(sent)
        start = time.monotonic()
        assert client.recv(1024) == b""  # the server hung up
        assert time.monotonic() - start < options.idle_timeout_s + 5
        # and it still answers everyone else
        ra, dec = pd.read_csv(data / "catalogue.csv").loc[0, ["ra", "dec"]]
        assert requests.get(server.url, params={"ra": ra, "dec": dec}, timeout=10).status_code == 200


def test_no_external_program_reads_an_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow hands EPS files to Ghostscript; we never offer it one."""
    started = []
    for name in ("Popen", "check_call", "run"):
        monkeypatch.setattr(subprocess, name, lambda *args, **kwargs: started.append(args))
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
           b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n")
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_image(eps)
    assert started == []
