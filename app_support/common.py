"""State shared by the pages (not a page itself): folders, cached loaders, the job registry,
and the active dataset and model kept in ``st.session_state``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from app_support.folders import SHIPPED_MODEL, AppFolders
from app_support.jobs import JobRegistry
from app_support.recent import read_recent, remember
from app_support.tables import job_fraction
from galaxy_core.base import PredictConfig, SplitConfig, TrainConfig, clip
from galaxy_core.data import (
    PackedDataset,
    PixelStatistics,
    build_cache,
    dataset_summary,
    pixel_statistics,
    sample_galaxies,
)
from galaxy_core.model import CARD_NAME, LABEL_QUESTIONS, BundleError, ModelInfo, list_models
from galaxy_core.serving import Classifier
from galaxy_core.sources import MAX_DECODED_SIDE, DatasetFolder, HostPolicy, ImageLoadError, list_datasets, load_image

REPO = Path(__file__).resolve().parents[1]
BALANCE_KEY = "balance_choice"
LABELS_KEY = "label_rule"
LABEL_WORDS = {rule: f"{rule}: {question}" for rule, question in LABEL_QUESTIONS.items()}
BALANCE_WORDS = {"off": "off: the natural class mix", "median": "towards the median class (culls the largest)",
                 "max": "towards the largest class (culls nothing)"}
MODEL_KEY = "model_dir"
MODEL_PARAM = "model"
EXAMPLE_PARAM = "example"
DATASET_KEY = "dataset_dir"
DATASET_PARAM = "dataset"
EXTRA_DATASETS_KEY = "extra_datasets"


@dataclass(frozen=True)
class PageInfo:
    """One page's identity: its script, the title in the navigation and its icon."""

    script: str
    title: str
    icon: str


PAGE_INFO = {
    "home": PageInfo("app_pages/home.py", "Home", ":material/home:"),
    "dataset": PageInfo("app_pages/dataset.py", "Dataset", ":material/photo_library:"),
    "train": PageInfo("app_pages/train.py", "Train", ":material/model_training:"),
    "results": PageInfo("app_pages/results.py", "Results", ":material/analytics:"),
    "classify": PageInfo("app_pages/classify.py", "Classify", ":material/search:"),
}
"""Every page, in navigation order; the first is the default."""
PAGES = {key: page.script for key, page in PAGE_INFO.items()}
PAGE_ICONS = {key: page.icon for key, page in PAGE_INFO.items()}


def folders() -> AppFolders:
    """Read from the environment on every run, so tests and deployments can point elsewhere."""
    return AppFolders.from_env(REPO)


def fetch_policy() -> HostPolicy:
    """The hosts the app fetches from for its visitors (GALAXY_ALLOWED_HOSTS, read on every run)."""
    return HostPolicy.from_env()


@st.cache_resource
def job_registry() -> JobRegistry:
    """One per server process: every tab sees the same training and download jobs."""
    return JobRegistry()


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _classifier(model_dir: str, card_mtime: float) -> tuple[Classifier, threading.Lock]:
    # Grad-CAM hooks the shared model and runs a backward pass; the lock keeps sessions apart.
    return Classifier.load(PredictConfig(model_dir=Path(model_dir))), threading.Lock()


def load_classifier(model_dir: Path) -> tuple[Classifier, threading.Lock]:
    """The cached model; a retrained bundle (new card) is loaded afresh."""
    card = Path(model_dir) / CARD_NAME
    if not card.is_file():
        raise BundleError(f"{model_dir} holds no model (no {CARD_NAME})")
    return _classifier(str(model_dir), card.stat().st_mtime)


# --- active model ----------------------------------------------------------------------------

def usable_models() -> list[ModelInfo]:
    return [m for m in list_models(folders().models_root) if m.card is not None]


def unusable_models() -> list[ModelInfo]:
    """Model folders whose card cannot be used (damaged, hand-edited, another format)."""
    return [m for m in list_models(folders().models_root) if m.card is None]


def unusable_models_note() -> None:
    """List the unusable model folders and why, so one bad folder is seen, not fatal."""
    bad = unusable_models()
    if bad:
        with st.expander(f":material/warning: {len(bad)} unusable model folder{'s' if len(bad) > 1 else ''}"):
            for info in bad:
                st.caption(f"**{info.name}**: {clip(info.error or 'unreadable', 300)}")


def active_model() -> ModelInfo | None:
    """The model chosen in the sidebar; by default the shipped one, else the newest."""
    models = usable_models()
    if not models:
        return None
    chosen = st.session_state.get(MODEL_KEY)
    by_path = {str(m.path): m for m in models}
    if chosen in by_path:
        return by_path[chosen]
    shipped = [m for m in models if m.name == SHIPPED_MODEL]
    pick = shipped[0] if shipped else max(models, key=lambda m: m.card_mtime)
    st.session_state[MODEL_KEY] = str(pick.path)
    return pick


def set_active_model(path: Path | str) -> None:
    st.session_state[MODEL_KEY] = str(path)


def model_sidebar() -> None:
    """The active-model picker every page shares."""
    models = usable_models()
    with st.sidebar:
        unusable_models_note()
        if not models:
            st.caption("No model yet: train one on the Train page.")
            return
        current = active_model()
        names = [str(m.path) for m in models]
        choice = st.selectbox("Active model", names, index=names.index(str(current.path)),
                              format_func=lambda p: Path(p).name,
                              help=f"Models are folders with card.json under {folders().models_root}")
        if choice != st.session_state.get(MODEL_KEY):
            set_active_model(choice)


# --- active dataset --------------------------------------------------------------------------
# The choice lives in the session, in the URL (?dataset=...) so a reload or a shared link keeps
# it, and in a remembered list of folders used (app_support/recent.py) so a new tab finds it too.
# A URL may only name a folder the app already knows: one under the data root or one a user
# typed in before; a new folder has to be typed on the Dataset page.

def known_datasets() -> list[Path]:
    """Datasets under the data root, then remembered folders and those typed in this session."""
    paths = folders()
    found = list_datasets(paths.data_root)
    for path in [*read_recent(paths.data_root), *map(Path, st.session_state.get(EXTRA_DATASETS_KEY, []))]:
        if path not in found and DatasetFolder(path).exists():
            found.append(path)
    return found


def active_dataset() -> Path | None:
    """The session's choice, else the URL's, else the folder used last, else the first one."""
    datasets = known_datasets()
    recent = [p for p in read_recent(folders().data_root) if p in datasets]
    wanted = [st.session_state.get(DATASET_KEY), st.query_params.get(DATASET_PARAM)]
    for chosen in wanted:
        if chosen and Path(chosen) in datasets:
            pick = Path(chosen)
            break
    else:
        pick = recent[0] if recent else (datasets[0] if datasets else None)
    if pick is not None:
        st.session_state[DATASET_KEY] = str(pick)
        st.query_params[DATASET_PARAM] = str(pick)
    return pick


def set_active_dataset(path: Path | str) -> None:
    st.session_state[DATASET_KEY] = str(path)
    st.query_params[DATASET_PARAM] = str(path)
    remember(folders().data_root, Path(path))


def add_extra_dataset(path: Path) -> None:
    extras = st.session_state.setdefault(EXTRA_DATASETS_KEY, [])
    if str(path) not in extras:
        extras.append(str(path))
    set_active_dataset(path)


def dataset_fingerprint(data_dir: Path) -> tuple[int, int]:
    """Changes when the catalogue is rewritten or images are added, so cached tables refresh."""
    return DatasetFolder(data_dir).fingerprint()


def ensure_cache(data_dir: Path) -> None:
    """Decode the dataset into the packed cache once per session, with a progress bar."""
    key = (str(data_dir), dataset_fingerprint(data_dir))
    built = st.session_state.setdefault("_built_caches", set())
    if key in built:
        return
    bar = st.progress(0.0, text="Checking the image cache…")

    def progress(event) -> None:
        bar.progress(event.done / max(event.total, 1),
                     text=f"Decoding images into the cache: {event.done:,} / {event.total:,}")

    build_cache(data_dir, cache_root=folders().cache_root, progress=progress)
    bar.empty()
    built.add(key)


@st.cache_data(show_spinner=False, max_entries=16)
def summary(data_dir: str, fingerprint: tuple[int, int], cache_root: str, balance: str, label_rule: str,
            seed: int = 0) -> dict:
    return dataset_summary(Path(data_dir), SplitConfig(seed=seed), balance, cache_root=Path(cache_root),
                           label_rule=label_rule)


@st.cache_data(show_spinner="Computing pixel statistics…", max_entries=16)
def pixel_stats(cache_dir: str) -> PixelStatistics:
    return pixel_statistics(PackedDataset(Path(cache_dir)))


@st.cache_data(show_spinner=False, max_entries=32)
def samples(data_dir: str, fingerprint: tuple[int, int], per_class: int, seed: int, label_rule: str) -> dict:
    return sample_galaxies(Path(data_dir), per_class, seed, label_rule=label_rule)


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(path: str, size: int = 160) -> np.ndarray | str:
    """An RGB thumbnail as an array (cheap to cache and to send to the browser), or the reason
    the file cannot be shown (a truncated JPEG in a dataset must not take a page down)."""
    try:
        image = load_image(path, max_side=MAX_DECODED_SIDE)
    except ImageLoadError as exc:
        return str(exc)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def draw_thumbnail(path: Path | str, size: int, **image_options) -> bool:
    """Show an image's thumbnail, or a note that it was skipped and why; True if shown."""
    picture = thumbnail(str(path), size)
    if isinstance(picture, str):
        st.caption(f":material/broken_image: skipped {Path(path).name}: {clip(picture, 200)}")
        return False
    st.image(picture, **image_options)
    return True


def known_dataset_folder(path: Path | str) -> Path | None:
    """``path`` if it is one of the dataset folders the app knows (under the data root, or
    chosen on the Dataset page), else None: a model card cannot point the app anywhere else."""
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    for folder in known_datasets():
        if folder.resolve() == target:
            return folder
    return None


def dataset_selectbox(label: str, current: Path) -> Path:
    """Choose among the known dataset folders; the choice becomes the active dataset."""
    names = [str(p) for p in known_datasets()]
    choice = st.selectbox(label, names, index=names.index(str(current)),
                          format_func=lambda p: f"{Path(p).name}  ({p})")
    if choice != str(current):
        set_active_dataset(choice)
    return Path(choice)


def label_rule() -> str:
    """The label rule the Dataset page shows and the next training run uses."""
    return st.session_state.get(LABELS_KEY, TrainConfig.label_rule)


def balance_choice() -> str:
    """The class balancing the next training run will use: chosen on the Dataset or Train page."""
    return st.session_state.get(BALANCE_KEY, TrainConfig.balance)


JOB_PAGES = (("train", "Training", "train"), ("download", "Downloading", "dataset"))


def job_sidebar(poll_s: float = 2.0) -> None:
    """A running training or download job, with its progress, on every page and after a reload
    (the jobs belong to the server, not to the browser tab that started them)."""
    registry = job_registry()

    def running() -> list[tuple]:
        return [(snap, verb, page) for kind, verb, page in JOB_PAGES
                if (snap := registry.snapshot(kind)) is not None and snap.running]

    @st.fragment(run_every=poll_s if running() else None)
    def status() -> None:
        for snap, verb, page in running():
            st.progress(job_fraction(snap.progress), text=f"{verb} **{snap.label}**")
            st.page_link(PAGES[page], label=f"Follow it on the {page.capitalize()} page",
                         icon=":material/hourglass_top:")

    with st.sidebar:
        status()


def point_to(page: str, message: str) -> None:
    """Say what is missing and link to the page that provides it."""
    st.info(message)
    st.page_link(PAGES[page], label=f"Go to the {page.capitalize()} page", icon=PAGE_ICONS[page])
