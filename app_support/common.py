"""State shared by the pages (not a page itself): folders, cached loaders, the job registry,
and the active dataset and model kept in ``st.session_state``."""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from app_support.disk import mark_used, trim_caches
from app_support.folders import SHIPPED_MODEL, AppFolders
from app_support.jobs import JobRegistry
from app_support.limits import ServerLimits
from app_support.tables import job_fraction
from app_support.text import escape_markdown, public_text
from galaxy_core.base import GalaxyError, PredictConfig, SplitConfig, TrainConfig, clip
from galaxy_core.data import (
    DatasetFacts,
    PackedDataset,
    PixelStatistics,
    build_cache,
    dataset_facts,
    dataset_summary,
    pixel_statistics,
    sample_galaxies,
)
from galaxy_core.model import CARD_NAME, LABEL_QUESTIONS, BundleError, ModelInfo, list_models
from galaxy_core.serving import EXAMPLES_DIR, Classifier
from galaxy_core.sources import (
    CATALOGUE_NAME,
    IMAGES_DIR,
    MAX_DECODED_SIDE,
    DatasetError,
    DatasetFolder,
    HostPolicy,
    ImageLoadError,
    list_datasets,
    load_image,
)

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
OWNER_KEY = "_owner"


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


def server_limits() -> ServerLimits:
    """What this server allows a visitor (GALAXY_MAX_* and GALAXY_DEMO_MODE, read on every run)."""
    return ServerLimits.from_env()


def session_owner() -> str:
    """A token of the browser session running this script, the owner of the jobs it starts: kept
    in the session's own state, so a new tab or a reload is a new visitor."""
    return st.session_state.setdefault(OWNER_KEY, secrets.token_hex(16))


def public(text: object, limit: int = 300) -> str:
    """Untrusted text for a markdown element: server folders by their short names, clipped, escaped."""
    return public_text(text, folders().public_names(), limit)


def public_path(path: Path | str) -> str:
    """A server folder as a visitor sees it: relative to the data, models or a read root."""
    paths, target = folders(), os.path.abspath(path)
    for root, name in paths.public_names():
        base = os.path.abspath(root)
        if target == base or target.startswith(base.rstrip("/") + "/"):
            rel = os.path.relpath(target, base)
            return rel if root in (paths.data_root, paths.models_root) else f"{name}/{rel}"
    return Path(path).name


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
        raise BundleError(f"{Path(model_dir).name} holds no model (no {CARD_NAME})")
    return _classifier(str(model_dir), card.stat().st_mtime)


# --- active model ----------------------------------------------------------------------------

def _card_signature(models_root: Path) -> tuple:
    """(name, mtime, size) of every card under ``models_root``: changes when a card is written."""
    found = []
    try:
        entries = sorted(os.scandir(models_root), key=lambda e: e.name)
    except OSError:
        return ()
    for entry in entries:
        try:
            info = os.stat(os.path.join(entry.path, CARD_NAME))
        except OSError:
            continue
        found.append((entry.name, info.st_mtime_ns, info.st_size))
    return tuple(found)


@st.cache_resource(max_entries=8, show_spinner=False)
def _models(models_root: str, signature: tuple) -> list[ModelInfo]:
    return list_models(Path(models_root))


def all_models() -> list[ModelInfo]:
    """The model folders, read from disk only when a card has changed (a page asks several times)."""
    root = folders().models_root
    return _models(str(root), _card_signature(root))


def usable_models() -> list[ModelInfo]:
    return [m for m in all_models() if m.card is not None]


def unusable_models() -> list[ModelInfo]:
    """Model folders whose card cannot be used (damaged, hand-edited, another format)."""
    return [m for m in all_models() if m.card is None]


def unusable_models_note() -> None:
    """List the unusable model folders and why, so one bad folder is seen, not fatal."""
    bad = unusable_models()
    if bad:
        with st.expander(f":material/warning: {len(bad)} unusable model folder{'s' if len(bad) > 1 else ''}"):
            for info in bad:
                st.caption(f"**{escape_markdown(info.name)}**: {public(info.error or 'unreadable')}")


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
                              help=f"Models are folders with {CARD_NAME} in the models folder")
        if choice != st.session_state.get(MODEL_KEY):
            set_active_model(choice)


# --- active dataset --------------------------------------------------------------------------
# The choice lives in the session and in the URL (?dataset=NAME, relative to the data folder), so
# a reload or a shared link keeps it. Only dataset folders under the data root or a read root
# (GALAXY_READ_ROOTS) are ever looked at: what one visitor types is that visitor's alone, and a
# typed path never probes the rest of the server's disk.

def readable_dataset(text: str) -> Path:
    """The dataset folder a visitor named (a path, or a name as the app shows it), if it lies in
    one of the app's folders; one message for everything else, so nothing about the disk leaks."""
    text = text.strip()
    if not text:
        raise DatasetError(f"type the name of a dataset folder (one holding {CATALOGUE_NAME} and {IMAGES_DIR}/)")
    paths = folders()
    candidates = [Path(text)] if os.path.isabs(text) else [root / text for root in paths.roots()]
    candidates += [root.parent / text for root in paths.read_roots]  # "rootname/sub" as shown
    for candidate in candidates:
        target = Path(os.path.normpath(candidate))
        for root in paths.roots():
            base = Path(os.path.abspath(root))
            if target != base and target.is_relative_to(base) and DatasetFolder(target).exists():
                return target
    if text in (EXAMPLES_DIR.name, str(EXAMPLES_DIR)) and DatasetFolder(EXAMPLES_DIR).exists():
        return EXAMPLES_DIR  # the labelled examples shipped with the app
    raise DatasetError(f"{clip(text, 80)} is not a dataset folder this server offers: name a folder "
                       f"inside its data folder that holds {CATALOGUE_NAME} and {IMAGES_DIR}/")


def known_datasets() -> list[Path]:
    """Datasets under the data root, then the folders this session chose or its URL names."""
    found = list_datasets(folders().data_root)
    chosen = [*st.session_state.get(EXTRA_DATASETS_KEY, []), st.query_params.get(DATASET_PARAM)]
    for text in chosen:
        if not text:
            continue
        try:
            path = readable_dataset(text)
        except DatasetError:
            continue
        if path not in found:
            found.append(path)
    return found


def active_dataset() -> Path | None:
    """The session's choice, else the URL's, else the first one."""
    datasets = known_datasets()
    wanted = [st.session_state.get(DATASET_KEY), st.query_params.get(DATASET_PARAM)]
    for chosen in wanted:
        if not chosen:
            continue
        try:
            path = readable_dataset(chosen)
        except DatasetError:
            continue
        if path in datasets:
            pick = path
            break
    else:
        pick = datasets[0] if datasets else None
    if pick is not None:
        set_active_dataset(pick)
    return pick


def set_active_dataset(path: Path | str) -> None:
    st.session_state[DATASET_KEY] = str(path)
    st.query_params[DATASET_PARAM] = public_path(path)


def add_extra_dataset(path: Path) -> None:
    extras = st.session_state.setdefault(EXTRA_DATASETS_KEY, [])
    if str(path) not in extras:
        extras.append(str(path))
    set_active_dataset(path)


def dataset_fingerprint(data_dir: Path) -> tuple[int, int]:
    """Changes when the catalogue is rewritten or images are added, so cached tables refresh."""
    return DatasetFolder(data_dir).fingerprint()


@st.cache_data(show_spinner=False, max_entries=16)
def _training_facts(data_dir: str, fingerprint: tuple[int, int], rule: str) -> DatasetFacts | None:
    try:
        return dataset_facts(TrainConfig(Path(data_dir), Path("."), label_rule=rule, batch_size=2))
    except GalaxyError:
        return None


def training_facts(data_dir: Path) -> DatasetFacts | None:
    """What the dataset gives a training run under the chosen label rule (read once per catalogue,
    not on every rerun of the Train page), or None when it cannot train (the reason is shown when
    training is asked for)."""
    return _training_facts(str(data_dir), dataset_fingerprint(data_dir), label_rule())


def dataset_size(data_dir: Path) -> int:
    """How many images a dataset folder holds (what its packed cache will hold), without opening one."""
    try:
        with os.scandir(DatasetFolder(data_dir).images) as entries:
            return sum(1 for _ in entries)
    except OSError:
        return 0


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

    report = build_cache(data_dir, cache_root=folders().cache_root, progress=progress)
    bar.empty()
    mark_used(report.cache_dir)
    trim_caches(folders().cache_root, server_limits().max_cache_bytes, keep=[report.cache_dir])
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
        st.caption(f":material/broken_image: skipped {escape_markdown(Path(path).name, 80)}: {public(picture, 200)}")
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
                          format_func=public_path)
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
    """The session's own running training or download job, with its progress, on every page; a
    note that the server is busy for another visitor's. Only the owner's sidebar polls: a timed
    rerun in every visitor's session would keep restarting a page that takes longer to draw
    than the poll on a busy server."""
    registry = job_registry()
    me = session_owner()

    def running() -> list[tuple]:
        return [(snap, verb, page) for kind, verb, page in JOB_PAGES
                if (snap := registry.snapshot(kind)) is not None and snap.running]

    mine = any(snap.owned_by(me) for snap, _, _ in running())

    @st.fragment(run_every=poll_s if mine else None)
    def status() -> None:
        for snap, verb, page in running():
            if not snap.owned_by(me):  # another visitor's job: only that the server is busy
                st.caption(f":material/hourglass_top: {verb} for another visitor")
                continue
            st.progress(job_fraction(snap.progress), text=f"{verb} **{escape_markdown(snap.label)}**")
            st.page_link(PAGES[page], label=f"Follow it on the {page.capitalize()} page",
                         icon=":material/hourglass_top:")

    with st.sidebar:
        status()


def point_to(page: str, message: str) -> None:
    """Say what is missing and link to the page that provides it."""
    st.info(message)
    st.page_link(PAGES[page], label=f"Go to the {page.capitalize()} page", icon=PAGE_ICONS[page])
