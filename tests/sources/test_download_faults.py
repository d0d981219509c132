"""A faulty cutout server: 500s, timeouts, HTML error pages with status 200, JPEGs cut short by a
complete response or by a dropped connection.

Transient faults are retried until they pass; permanent ones are reported (in the report and the
manifest) without leaving a partial or non-JPEG file, and the next run fetches only what is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_dataset

from galaxy_core.base.config import DownloadConfig
from galaxy_core.sources.catalogue import read_catalogue
from galaxy_core.sources.cutout_server import CutoutServer, ServerOptions
from galaxy_core.sources.download import DownloadReport, download_cutouts
from galaxy_core.sources.folder import IMAGES_DIR, MANIFEST_NAME
from galaxy_core.sources.images import check_jpeg

RETRIES = 2
# Why each permanent fault finally failed, as the report must say it.
REASONS = {
    "error500": "HTTP 500",
    "timeout": "Timeout",
    "html200": "HTML",
    "truncate": "truncated",
    "reset": "ChunkedEncodingError|ConnectionError",
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    data = make_dataset(tmp_path_factory.mktemp("faults") / "src", n_per_class=2)
    return data, read_catalogue(data / "catalogue.csv")


def key(row) -> str:
    return f"{row.ra:.4f},{row.dec:.4f}"


def run(catalogue: pd.DataFrame, out: Path, server: CutoutServer) -> DownloadReport:
    config = DownloadConfig(out_dir=out, cutout_url=server.url, workers=3, retries=RETRIES,
                            backoff_s=0.01, timeout_s=0.5)
    return download_cutouts(catalogue, config)


def assert_clean(out: Path, source_dir: Path, catalogue: pd.DataFrame, missing: set[str]) -> None:
    """Every galaxy not in ``missing`` has its exact image; nothing else is in images/."""
    files = {p.name for p in (out / IMAGES_DIR).iterdir()}
    expected = {f"{row.id}.jpg" for row in catalogue.itertuples() if row.id not in missing}
    assert files == expected
    for row in catalogue.itertuples():
        if row.id not in missing:
            data = (out / IMAGES_DIR / f"{row.id}.jpg").read_bytes()
            check_jpeg(data)
            assert data == (source_dir / row.image).read_bytes()


@pytest.mark.parametrize("fault", sorted(REASONS))
def test_transient_fault_is_retried_until_it_passes(source, cutout_server_for, tmp_path: Path,
                                                    fault: str) -> None:
    data, catalogue = source
    faulty = {key(r) for r in catalogue.itertuples()}
    options = ServerOptions(fault=fault, fault_first_n=1, timeout_sleep_s=1.0)
    with cutout_server_for(data, options) as server:
        report = run(catalogue, tmp_path / "out", server)
    assert report.ok and report.downloaded == len(catalogue), report.failed
    assert all(server.requests[k] == 2 for k in faulty), server.requests
    assert_clean(tmp_path / "out", data, catalogue, missing=set())


@pytest.mark.parametrize("fault", sorted(REASONS))
def test_permanent_fault_is_reported_and_the_rerun_fetches_only_the_rest(
        source, cutout_server_for, tmp_path: Path, fault: str) -> None:
    data, catalogue = source
    broken = catalogue.iloc[[1, 4]]
    broken_ids = set(broken["id"])
    options = ServerOptions(fault=fault, fault_ids={key(r) for r in broken.itertuples()}, timeout_sleep_s=1.0)
    out = tmp_path / "out"
    with cutout_server_for(data, options) as server:
        report = run(catalogue, out, server)
        assert set(report.failed) == broken_ids
        assert report.downloaded == len(catalogue) - 2
        for reason in report.failed.values():
            assert f"after {RETRIES + 1} attempts" in reason
            assert any(word in reason for word in REASONS[fault].split("|")), reason
        assert all(server.requests[key(r)] == RETRIES + 1 for r in broken.itertuples())
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        assert manifest["failed"] == report.failed and manifest["present"] == len(catalogue) - 2
        assert_clean(out, data, catalogue, missing=broken_ids)
        assert not list(out.rglob("*.part"))

        server.options.fault = "none"  # the service recovers
        before = server.total_requests
        second = run(catalogue, out, server)
    assert second.ok and second.downloaded == 2 and second.skipped == len(catalogue) - 2
    assert server.total_requests - before == 2  # only the two that were missing
    assert json.loads((out / MANIFEST_NAME).read_text())["failed"] == {}
    assert_clean(out, data, catalogue, missing=set())


def test_not_found_is_not_retried(source, cutout_server_for, tmp_path: Path) -> None:
    data, catalogue = source
    lost = catalogue.iloc[[0]].assign(id="nowhere", ra=200.0, dec=45.0)
    with cutout_server_for(data) as server:
        report = run(pd.concat([catalogue, lost], ignore_index=True), tmp_path / "out", server)
    assert list(report.failed) == ["nowhere"] and report.failed["nowhere"] == "HTTP 404 (after 1 attempt)"
    assert server.requests["200.0000,45.0000"] == 1
    assert_clean(tmp_path / "out", data, catalogue, missing=set())


def test_a_damaged_file_already_present_is_fetched_again(source, cutout_server_for, tmp_path: Path) -> None:
    """A file cut short outside our control (a copy, a crash of the machine) is not trusted."""
    data, catalogue = source
    out = tmp_path / "out"
    (out / IMAGES_DIR).mkdir(parents=True)
    first, second = catalogue.iloc[0], catalogue.iloc[1]
    whole = (data / first.image).read_bytes()
    (out / IMAGES_DIR / f"{first.id}.jpg").write_bytes(whole[: len(whole) // 2])
    (out / IMAGES_DIR / f"{second.id}.jpg").write_bytes((data / second.image).read_bytes())
    with cutout_server_for(data) as server:
        report = run(catalogue, out, server)
    assert report.ok and report.skipped == 1 and report.downloaded == len(catalogue) - 1
    assert server.requests[key(first)] == 1 and server.requests[key(second)] == 0
    assert_clean(out, data, catalogue, missing=set())
