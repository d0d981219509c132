"""The README's first hour in a real headless chromium at a laptop's 1366x768: start the app, try
an example (its answer in view without scrolling), upload a large photo and a blank image (true
size in the caption; the blank one not classified), then train a small model from the Train page
on a plain image,label folder and on a Galaxy Zoo 2 one, and see each on Results."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_dataset
from PIL import Image
from test_browser import (  # noqa: F401 (app_url: a fixture)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    app_url,
    settle,
    start_training,
)

from galaxy_core.base.config import CLASSES
from galaxy_core.serving.examples import list_examples

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no chromium at {CHROMIUM} "
                                                      "(apt-get install chromium, or set GALAXY_CHROMIUM)"),
]
LAPTOP = {"width": 1366, "height": 768}
GZ2 = "t01_smooth_or_features_{}_{}"


def plain_folder(root: Path) -> Path:
    """Synthetic galaxies listed as a plain image,label catalogue (no vote fractions)."""
    make_dataset(root, n_per_class=8, seed=5)
    frame = pd.read_csv(root / "catalogue.csv")
    frame[["image", "label"]].to_csv(root / "catalogue.csv", index=False)
    return root


def gz2_folder(root: Path) -> Path:
    """Synthetic galaxies listed with Galaxy Zoo 2's own columns (Hart et al. 2016)."""
    make_dataset(root, n_per_class=8, seed=6)
    frame = pd.read_csv(root / "catalogue.csv")
    out = frame[["image", "ra", "dec"]].copy()
    for answer, column in (("a01_smooth", "frac_smooth"), ("a02_features_or_disk", "frac_features"),
                           ("a03_star_or_artifact", "frac_artifact")):
        for kind in ("weighted_fraction", "debiased"):
            out[GZ2.format(answer, kind)] = frame[column]
    out.to_csv(root / "catalogue.csv", index=False)
    return root


def large_photo(path: Path) -> Path:
    """A 2400x1800 JPEG with an example galaxy small in a wide dark field."""
    example = Image.open(list_examples()[0].path).convert("RGB")
    canvas = Image.new("RGB", (2400, 1800), (8, 8, 10))
    canvas.paste(example.resize((384, 384)), (1300, 500))
    canvas.save(path, quality=90)
    return path


def train_from_the_page(page, sync_api, app_url: str, folder: Path, name: str) -> None:  # noqa: F811
    page.goto(f"{app_url}/dataset")
    page.get_by_role("textbox", name="Or read another folder (read-only)").fill(str(folder))
    page.get_by_role("button", name="Use this folder").click()
    sync_api.expect(page.get_by_role("combobox", name="Dataset folder")).to_have_value(
        re.compile(re.escape(folder.name)), timeout=60_000)
    page.goto(f"{app_url}/train?dataset={folder}")
    sync_api.expect(page.get_by_role("combobox", name="Dataset")).to_have_value(
        re.compile(re.escape(folder.name)), timeout=60_000)
    start_training(page, name, {"Epochs": "1"}, {"Network width": "8"})
    link = page.get_by_role("link", name="See its results")
    failed = page.locator('[data-testid="stAlertContentError"]')
    try:
        link.or_(failed).first.wait_for(timeout=300_000)
    finally:
        page.screenshot(path=str(ARTIFACTS / f"first-hour-browser-{name}.png"), full_page=True)
    assert failed.count() == 0, failed.all_inner_texts()
    # Whatever the page changed to fit the data, it said so in words, never as a flag.
    page.get_by_text(re.compile(r"^The batch holds \d+ images instead of 64")).wait_for(timeout=10_000)
    said = page.locator('[data-testid="stMain"]').inner_text()
    assert not re.search(r"--[a-z]", said), said
    link.click()
    page.get_by_role("heading", name="Results").first.wait_for(timeout=60_000)
    sync_api.expect(page.get_by_role("combobox", name="Model", exact=True)).to_have_value(name, timeout=60_000)
    page.get_by_text("Test accuracy").first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0


def test_the_readmes_first_hour_at_1366x768(app_url: str, tmp_path: Path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    photo = large_photo(tmp_path / "wide-field.jpg")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 300), (20, 20, 24)).save(blank)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=LAPTOP)
            page.goto(app_url)
            page.get_by_role("heading", name="Galaxy Zoo morphology classifier").first.wait_for(timeout=60_000)

            # Try an example: its answer comes into view without the user scrolling.
            page.goto(f"{app_url}/classify")
            page.get_by_role("tab", name="Try an example").click()
            page.get_by_role("button", name="Classify", exact=True).first.click()
            answer = page.get_by_role("heading", name="Predicted:").first
            answer.wait_for(timeout=60_000)
            assert answer.inner_text().removeprefix("Predicted:").strip() in CLASSES
            sync_api.expect(page.get_by_role("heading", name="image(s) classified")).to_be_in_viewport(
                timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "first-hour-browser-example.png"))

            # Upload a large photo and a blank image: the photo's own size; the blank one apart.
            page.get_by_role("tab", name="Upload images").click()
            page.locator('input[type="file"]').first.set_input_files([str(photo), str(blank)])
            summary = page.get_by_role("heading", name="2 of 3 image(s) classified")
            summary.wait_for(timeout=120_000)
            page.get_by_text("not classified, no galaxy found: 1").wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"^Not classified: no galaxy found")).wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"^uploaded \(2400×1800\)")).wait_for(timeout=60_000)
            # Until the rerun ends, the page may still hold the last run's answer, marked stale.
            sync_api.expect(page.get_by_role("heading", name="Predicted:")).to_have_count(2, timeout=60_000)
            settle(page)
            page.screenshot(path=str(ARTIFACTS / "first-hour-browser-upload.png"), full_page=True)

            # Train a small model on each kind of labelled folder, and see each on Results.
            train_from_the_page(page, sync_api, app_url, plain_folder(tmp_path / "plain-labels"), "plain-first")
            assert (tmp_path / "plain-labels").is_dir()
            train_from_the_page(page, sync_api, app_url, gz2_folder(tmp_path / "gz2-format"), "gz2-first")
            models = page.get_by_role("combobox", name="Model", exact=True)
            models.click()
            options = page.get_by_role("option").all_inner_texts()
            assert {"plain-first", "gz2-first"} <= {o.strip() for o in options}, options
        finally:
            browser.close()
