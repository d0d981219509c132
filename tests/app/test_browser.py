"""End to end in a real headless chromium: start ``streamlit run app.py``, visit every page, upload
a galaxy on the Classify page and time how long the predicted class takes to appear."""

from __future__ import annotations

import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.common import start_streamlit, stop_process
from galaxy_core.base.config import CLASSES
from galaxy_core.serving.examples import list_examples

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("GALAXY_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("GALAXY_ARTIFACTS_DIR", REPO / "artifacts"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The first visit is a deep link: the navigation must be right before the home page ever ran.
PAGE_TITLES = {"results": "Results", "": "Galaxy Zoo morphology classifier", "dataset": "Dataset",
               "train": "Train a model", "classify": "Classify galaxies"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no chromium at {CHROMIUM} "
                                                      "(apt-get install chromium, or set GALAXY_CHROMIUM)"),
]


def start_training(page, name: str, numbers: dict[str, str], more_settings: dict[str, str]) -> None:  # noqa: ANN001
    """Fill the Train form (the model's name, number boxes by their labels, then those under "More
    settings") and start training."""
    def fill(boxes: dict[str, str]) -> None:
        for label, value in boxes.items():
            box = page.get_by_role("spinbutton", name=label)
            box.fill(value)
            box.press("Tab")

    page.get_by_role("textbox", name="Model name").fill(name)
    fill(numbers)
    page.locator('[data-testid="stExpander"] summary').filter(has_text="More settings").click()
    fill(more_settings)
    page.get_by_role("button", name="Start training").click()


@pytest.fixture
def app_url(tmp_path: Path, trained_tiny_model: Path, isolated_cache: Path):
    """The real app in a subprocess, on a free local port, with its own folders."""
    models, data = tmp_path / "models", tmp_path / "data"
    shutil.copytree(trained_tiny_model, models / "tiny")
    data.mkdir()
    (data / "tiny").symlink_to(trained_tiny_model.parent.parent / "data", target_is_directory=True)
    env = {**os.environ, "GALAXY_MODELS_ROOT": str(models), "GALAXY_DATA_ROOT": str(data),
           "GALAXY_CACHE_DIR": str(isolated_cache),
           "GALAXY_READ_ROOTS": str(tmp_path)}  # where the first-hour test puts the folder it types
    process, url = start_streamlit(env, tmp_path / "streamlit.log")
    try:
        yield url
    finally:
        stop_process(process)


def galaxy_image(tmp_path: Path) -> Path:
    """A real SDSS cutout from the shared data when it is there, else a synthetic galaxy."""
    shared = Path(os.environ.get("GALAXY_SHARED_DATA", REPO.parent / "shared" / "data"))
    real = sorted((shared / "gz2-sdss-128" / "images").glob("*.jpg"))[:1]
    if real:
        return real[0]
    y, x = np.mgrid[:128, :128] - 64
    blob = np.exp(-np.hypot(x, y / 0.7) / 9)[..., None] * np.array([255, 220, 160])
    path = tmp_path / "synthetic-galaxy.png"
    Image.fromarray(blob.astype(np.uint8)).save(path)
    return path


def settle(page, seconds: float = 60.0) -> None:
    """Wait until no element is pending and the page has stopped changing (for screenshots)."""
    busy = """() => !!document.querySelector('[data-testid="stSkeleton"], [data-testid="stSpinner"]')"""
    deadline = time.monotonic() + seconds
    previous, quiet = None, 0
    while quiet < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(300)
        html = page.content()
        quiet = quiet + 1 if html == previous and not page.evaluate(busy) else 0
        previous = html


def test_pages_render_and_an_upload_is_classified_in_chromium(app_url: str, tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            # Tall: Streamlit scrolls inside the page, so screenshots show only the viewport.
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            for path, title in PAGE_TITLES.items():
                page.goto(f"{app_url}/{path}")
                page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
                settle(page)
                assert page.locator('[data-testid="stException"]').count() == 0, path
                # st.navigation only: one menu with the five pages, and the shared model picker.
                assert page.locator('[data-testid="stSidebarNav"]').count() == 1
                links = page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()
                assert [text.split()[-1] for text in links] == ["Home", "Dataset", "Train", "Results",
                                                                "Classify"], links
                assert page.get_by_text("Active model").count() == 1
                page.screenshot(path=str(ARTIFACTS / f"page-{path or 'home'}.png"), full_page=True)

            image = galaxy_image(tmp_path)
            start = time.perf_counter()
            page.locator('input[type="file"]').first.set_input_files(str(image))
            result = page.get_by_role("heading", name="Predicted:").first
            result.wait_for(timeout=60_000)
            seconds = time.perf_counter() - start
            label = result.inner_text().removeprefix("Predicted:").strip()
            assert label in CLASSES
            # The result card's title: the same name on the uploader's file chip sits in a tab
            # that is not shown, so a plain text match could wait on an element never visible.
            page.locator("strong").filter(has_text=re.compile(f"^{re.escape(image.name)}$")).wait_for()
            settle(page)
            shot = ARTIFACTS / "classify-upload.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\n{image.name}: {label}; upload to result {seconds * 1000:.0f} ms in chromium; "
                  f"screenshot {shot}")
        finally:
            browser.close()


def test_the_first_hour_in_chromium(app_url: str, tmp_path: Path):
    """What a newcomer does first: try an example, pick a dataset and reload, train briefly and
    follow the link to that model's results."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from conftest import make_dataset

    typed = make_dataset(tmp_path / "typed-folder", n_per_class=8, seed=4)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2400})
            # 1. An example, in one click: its class and the Grad-CAM overlay with its colour scale.
            page.goto(f"{app_url}/classify")
            page.get_by_role("tab", name="Try an example").click()
            page.get_by_role("button", name="Classify").first.click()
            result = page.get_by_role("heading", name="Predicted:").first
            result.wait_for(timeout=60_000)
            assert result.inner_text().removeprefix("Predicted:").strip() in CLASSES
            page.get_by_text("bright yellow drove").first.wait_for(timeout=60_000)
            page.get_by_text("Grad-CAM (inferno colours)").first.wait_for()
            settle(page)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / "first-hour-example.png"), full_page=True)

            # 2. A typed dataset folder is still the chosen one after a reload.
            page.goto(f"{app_url}/dataset")
            field = page.get_by_role("textbox", name="Or read another folder (read-only)")
            field.fill(str(typed))
            page.get_by_role("button", name="Use this folder").click()
            picker = page.get_by_role("combobox", name="Dataset folder")
            sync_api.expect(picker).to_have_value(re.compile("typed-folder"), timeout=60_000)
            assert "dataset=" in page.url
            page.reload()
            picker = page.get_by_role("combobox", name="Dataset folder")
            sync_api.expect(picker).to_have_value(re.compile("typed-folder"), timeout=60_000)

            # 3. Train briefly on it, then follow the link to this model's results.
            page.goto(f"{app_url}/train")
            start_training(page, "first-hour", {"Epochs": "1", "Batch size": "8"},
                           {"Vote-fraction head weight": "1"})
            link = page.get_by_role("link", name="See its results")
            done = link.or_(page.locator('[data-testid="stAlertContentError"]'))
            try:
                done.first.wait_for(timeout=300_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "first-hour-trained.png"), full_page=True)
            assert link.count() == 1, page.locator('[data-testid="stMain"]').inner_text()
            link.click()
            page.get_by_role("heading", name="Results").first.wait_for(timeout=60_000)
            picker = page.get_by_role("combobox", name="Model", exact=True)
            sync_api.expect(picker).to_have_value("first-hour", timeout=60_000)
            assert "model=first-hour" in page.url
            settle(page)
            page.screenshot(path=str(ARTIFACTS / "first-hour-results.png"), full_page=True)

            # 4. The new model (the newest, with a vote-fraction head) on a linked example: class,
            # the volunteers' vote fractions it predicts, and the overlay.
            example = list_examples()[-1]
            page.goto(f"{app_url}/classify?example={urllib.parse.quote(example.id)}")
            page.get_by_text(f"{example.id} (example").first.wait_for(timeout=60_000)
            sync_api.expect(page.get_by_role("heading", name="Predicted:")).to_have_count(1, timeout=60_000)
            page.get_by_text("of volunteers would call it").first.wait_for(timeout=60_000)
            page.get_by_text("bright yellow drove").first.wait_for(timeout=60_000)
            assert page.get_by_role("combobox", name="Active model").input_value() == "first-hour"
        finally:
            browser.close()
