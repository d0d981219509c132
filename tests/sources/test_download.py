"""The cutout downloader against the local stand-in ImgCutout server."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from galaxy_core.base.config import ConfigError, DownloadConfig
from galaxy_core.sources.catalogue import read_catalogue
from galaxy_core.sources.cutout_server import ServerOptions
from galaxy_core.sources.cutouts import cutout_params
from galaxy_core.sources.download import download_cutouts, image_relpath
from galaxy_core.sources.folder import MANIFEST_NAME
from galaxy_core.sources.images import load_image


def test_query_matches_skyserver_getjpeg() -> None:
    params = cutout_params(252.619339, 38.81945419, DownloadConfig(Path("x")))
    assert params == {"ra": "252.619339", "dec": "38.819454", "scale": "0.2", "width": "128", "height": "128"}


def test_image_names_are_safe() -> None:
    assert image_relpath("587727178986356823") == "images/587727178986356823.jpg"
    assert image_relpath("../../etc/passwd") == "images/.._.._etc_passwd.jpg"
    assert image_relpath("..") == "images/galaxy.jpg"


def test_download_then_resume(tiny_dataset: Path, tmp_path: Path, cutout_server_for) -> None:
    catalogue = read_catalogue(tiny_dataset / "catalogue.csv").drop(columns="image")
    out = tmp_path / "out"
    events = []
    with cutout_server_for(tiny_dataset) as server:
        config = DownloadConfig(out_dir=out, cutout_url=server.url, workers=8, limit=20)
        report = download_cutouts(catalogue, config, events.append)
        assert (report.downloaded, report.skipped, report.failed) == (20, 0, {})
        assert server.total_requests == 20
        written = read_catalogue(out / "catalogue.csv")
        assert len(written) == 20 and written["image"].str.startswith("images/").all()
        for rel in written["image"]:
            assert load_image(out / rel).size == (128, 128)
        again = download_cutouts(catalogue, DownloadConfig(out_dir=out, cutout_url=server.url, limit=30))
        assert (again.downloaded, again.skipped) == (10, 20)
        assert server.total_requests == 30
    assert events[-1].done == events[-1].total == 20
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["present"] == 30 and manifest["failed"] == {}
    assert not [p for p in (out / "images").iterdir() if p.name.startswith(".")]


def test_served_bytes_are_the_source_images(tiny_dataset: Path, tmp_path: Path, cutout_server_for) -> None:
    catalogue = read_catalogue(tiny_dataset / "catalogue.csv")
    with cutout_server_for(tiny_dataset) as server:
        download_cutouts(catalogue.drop(columns="image"),
                         DownloadConfig(out_dir=tmp_path / "o", cutout_url=server.url, limit=3))
    for row in catalogue.head(3).itertuples():
        assert (tmp_path / "o" / image_relpath(row.id)).read_bytes() == (tiny_dataset / row.image).read_bytes()


def test_missing_coordinates_are_reported(tiny_dataset: Path, tmp_path: Path, cutout_server_for) -> None:
    catalogue = read_catalogue(tiny_dataset / "catalogue.csv").drop(columns="image").head(2)
    catalogue.loc[1, "ra"] = 300.0
    with cutout_server_for(tiny_dataset) as server:
        report = download_cutouts(catalogue, DownloadConfig(out_dir=tmp_path, cutout_url=server.url,
                                                            retries=1, backoff_s=0.01))
    assert report.downloaded == 1
    assert list(report.failed) == [catalogue.loc[1, "id"]] and "HTTP 404" in report.failed[catalogue.loc[1, "id"]]


@pytest.mark.parametrize("field, value", [("workers", 0), ("cutout_size", 4), ("limit", 0), ("pixel_scale", -1.0)])
def test_settings_are_validated(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        DownloadConfig(out_dir=tmp_path, **{field: value})


def test_gz1_rows_download_through_synthesising_server(shared_gz1: Path, tmp_path: Path) -> None:
    """GZ1 rows have no images here: the stand-in synthesises them, exercising catalogue -> download."""
    from galaxy_core.sources.cutout_server import CutoutIndex, CutoutServer

    catalogue = read_catalogue(shared_gz1)
    with CutoutServer(CutoutIndex([]), ServerOptions(synthesize_missing=True)) as server:
        report = download_cutouts(catalogue, DownloadConfig(out_dir=tmp_path, cutout_url=server.url, limit=25))
    assert report.downloaded == 25 and not report.failed
    written = pd.read_csv(tmp_path / "catalogue.csv")
    for rule in ("votes", "debiased"):
        assert written[f"label_{rule}"].isin(["Spiral", "Elliptical", "Uncertain"]).all()


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """Not mkstemp's private 0600: other users and tools read datasets and models."""
    import os

    from galaxy_core.base.atomic import write_bytes_atomic

    umask = os.umask(0)
    os.umask(umask)
    write_bytes_atomic(tmp_path / "x.jpg", b"data")
    assert (tmp_path / "x.jpg").stat().st_mode & 0o777 == 0o666 & ~umask
