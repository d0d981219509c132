"""Dataset: pick or download a folder of cutouts, then see its classes, samples and pixels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_support import charts
from app_support.common import (
    BALANCE_KEY,
    BALANCE_WORDS,
    LABEL_WORDS,
    LABELS_KEY,
    PAGES,
    active_dataset,
    add_extra_dataset,
    balance_choice,
    dataset_fingerprint,
    dataset_selectbox,
    draw_thumbnail,
    ensure_cache,
    fetch_policy,
    folders,
    job_registry,
    known_datasets,
    label_rule,
    pixel_stats,
    public,
    readable_dataset,
    samples,
    server_limits,
    session_owner,
    set_active_dataset,
    summary,
)
from app_support.folders import new_dataset_dir
from app_support.jobs import JobSnapshot
from app_support.limits import UPLOAD_MB
from app_support.tables import format_duration, histogram_frame
from app_support.tasks import download_job, uploaded_catalogue
from galaxy_core.base import (
    BALANCE_CHOICES,
    DEFAULT_CATALOGUE_URL,
    DEFAULT_CUTOUT_URL,
    LABEL_RULES,
    TRAIN_SETTINGS,
    DownloadConfig,
    GalaxyError,
)
from galaxy_core.serving import EXAMPLES_DIR, list_examples
from galaxy_core.sources import CATALOGUE_NAME, IMAGES_DIR, DownloadProgress, DownloadReport

POLL_S = 1.0
OTHERS_POLL_S = 10.0
MY_DATASETS_KEY = "_my_datasets"  # the dataset names this browser session started: only these resume


st.title("Dataset")
paths = folders()
registry = job_registry()
me = session_owner()
limits = server_limits()


def choose_dataset() -> Path | None:
    current = active_dataset()
    if known_datasets():
        current = dataset_selectbox("Dataset folder", current)
    else:
        st.info(f"No dataset under the data folder yet. Download one below, or type the name of "
                f"an existing folder there that holds {CATALOGUE_NAME} and {IMAGES_DIR}/.")
    with st.form("extra_dataset", border=False):
        left, right = st.columns([4, 1], vertical_alignment="bottom")
        typed = left.text_input("Or read another folder (read-only)",
                                placeholder=f"a folder in the data folder with {CATALOGUE_NAME} and {IMAGES_DIR}/")
        if right.form_submit_button("Use this folder"):
            try:
                folder = readable_dataset(typed)
            except GalaxyError as exc:
                st.error(public(exc))
            else:
                add_extra_dataset(folder)
                st.rerun()
    examples = list_examples() if EXAMPLES_DIR.is_dir() else []
    if examples and EXAMPLES_DIR.resolve() not in {p.resolve() for p in known_datasets()}:
        left, right = st.columns([4, 1], vertical_alignment="center")
        left.caption(f"Or start with the {len(examples)} example galaxies that ship with the app "
                     "(`examples/`: a class for each, no vote fractions): enough to try training in a "
                     "minute, far too few for a good model.")
        if right.button("Use the examples"):
            add_extra_dataset(EXAMPLES_DIR)
            st.rerun()
    return current


def download_form() -> None:
    """Start (or resume) a download into a named folder under the data root."""
    running = (snap := registry.snapshot("download")) is not None and snap.running
    if running and not snap.owned_by(me):
        st.info("The server is busy downloading a dataset for another visitor; one download at a time. "
                "Try again when it has finished.")
    # Outside the form, so that changing it shows the one input it needs at once.
    source = st.radio("Catalogue", ["From a URL", "Upload a file"], horizontal=True)
    url, upload = "", None
    with st.form("download"):
        name = st.text_input("Dataset name", value="gz1-sample",
                             help="A new folder under the data root; the same name resumes a download.")
        if source == "From a URL":
            url = st.text_input("Catalogue URL", value=DEFAULT_CATALOGUE_URL,
                                help="Galaxy Zoo 1 table 2 or Galaxy Zoo 2 (Hart et al. 2016), CSV or .csv.gz")
        else:
            upload = st.file_uploader("Catalogue file", type=["csv", "gz"],
                                      help=f"Up to {UPLOAD_MB} MB; for the full GZ1 table give its URL")
        left, right = st.columns(2)
        most = limits.max_download_galaxies
        limit = left.number_input("How many galaxies", min_value=3, max_value=most, value=min(500, most),
                                  step=100, help=f"This server downloads at most {most:,} galaxies per dataset.")
        workers = right.number_input("Requests in flight", min_value=1, max_value=64, value=8,
                                     help="Be polite to SkyServer: a few parallel requests are plenty.")
        cutout_url = st.text_input("Cutout URL", value=DEFAULT_CUTOUT_URL,
                                   help="SDSS SkyServer ImgCutout getjpeg endpoint, or a local stand-in")
        submitted = st.form_submit_button("Download", type="primary", disabled=running)
    if not submitted:
        return
    policy = fetch_policy()
    try:
        out_dir = new_dataset_dir(paths.data_root, name)
        if out_dir.exists() and out_dir.name not in st.session_state.get(MY_DATASETS_KEY, set()):
            raise GalaxyError(f"a dataset named {out_dir.name!r} already exists; choose another name")
        limits.check_download(int(limit))
        if source == "Upload a file":
            catalogue: str | bytes | None = upload.getvalue() if upload is not None else None
            if catalogue is None:
                previous = uploaded_catalogue(out_dir)
                if previous is None:
                    raise GalaxyError("choose a catalogue file to upload")
                catalogue = str(previous)
        else:
            catalogue = url.strip()
            policy.check(catalogue, resolve=False)  # a URL of an allowed host, never a path here
        config = DownloadConfig(out_dir=out_dir, cutout_url=cutout_url.strip(), limit=int(limit),
                                workers=int(workers))
        policy.check(config.cutout_url, resolve=False)  # addresses are checked as it is fetched
        registry.start("download", out_dir.name, download_job(out_dir, catalogue, config, policy=policy), owner=me)
    except GalaxyError as exc:
        st.error(public(exc))
        return
    st.session_state.setdefault(MY_DATASETS_KEY, set()).add(out_dir.name)
    st.rerun()


def show_download(snap: JobSnapshot) -> None:
    progress = snap.progress
    if snap.running:
        if isinstance(progress, DownloadProgress):
            rate = (progress.done - progress.skipped) / progress.elapsed_s if progress.elapsed_s else 0
            left = (progress.total - progress.done) / rate if rate else None
            st.progress(progress.done / max(progress.total, 1),
                        text=f"Downloading **{snap.label}**: {progress.done:,} / {progress.total:,} "
                             f"({progress.skipped:,} already there, {progress.failed:,} failed) · "
                             f"{format_duration(snap.elapsed_s)} elapsed · about "
                             f"{format_duration(left)} left")
        else:
            st.progress(0.0, text=public(progress or "starting…"))
        if st.button("Stop download", icon=":material/stop:", disabled=snap.stop_requested):
            registry.stop("download", me)
        return
    if snap.state == "failed":
        st.error(f"Download of {snap.label} failed: {public(snap.error)}")
        return
    report: DownloadReport = snap.result
    if not isinstance(report, DownloadReport):  # stopped before the child could answer
        st.warning(f"**{snap.label}**: stopped. Download again with the same name to continue.")
        return
    text = (f"**{snap.label}**: {report.downloaded:,} downloaded, {report.skipped:,} already present, "
            f"{len(report.failed):,} failed, of {report.total:,} galaxies "
            f"in {format_duration(report.elapsed_s)}.")
    if snap.state == "stopped":
        st.warning(text + " Stopped: download again with the same name to continue.")
    elif report.failed:
        st.warning(text + " Download again with the same name to retry the failures.")
        st.dataframe(pd.DataFrame(list(report.failed.items())[:50], columns=["galaxy", "reason"]),
                     hide_index=True)
    else:
        st.success(text)
    if st.button("Use this dataset", key="use_downloaded"):
        set_active_dataset(paths.data_root / snap.label)
        st.rerun()


def download_panel() -> None:
    snap = registry.snapshot("download")
    st.session_state["_download_seen"] = None if snap is None else (snap.id, snap.state)

    poll = (POLL_S if snap.owned_by(me) else OTHERS_POLL_S) if snap is not None and snap.running else None

    @st.fragment(run_every=poll)  # another visitor only needs to learn, now and then, that it ended
    def live() -> None:
        now = registry.snapshot("download")
        if now is None or not now.owned_by(me):  # another visitor's download, and its outcome, are theirs
            return
        if (now.id, now.state) != st.session_state.get("_download_seen"):
            st.rerun()  # finished: redraw the whole page (form, dataset list)
        show_download(now)

    if snap is not None:
        live()


def overview(data_dir: Path) -> None:
    """Classes, balancing, split sizes, sample galaxies and pixel statistics of one dataset."""
    download = registry.snapshot("download")
    if download is not None and download.running and paths.data_root / download.label == data_dir:
        st.info("This dataset is still downloading; its statistics appear when the download ends.")
        return
    left, right = st.columns(2)
    st.session_state[LABELS_KEY] = left.selectbox(
        TRAIN_SETTINGS["label_rule"].label, LABEL_RULES, index=LABEL_RULES.index(label_rule()),
        format_func=LABEL_WORDS.get,
        help=TRAIN_SETTINGS["label_rule"].help + ". The Train page starts with the same choice.")
    st.session_state[BALANCE_KEY] = right.selectbox(
        "Class balancing for training", BALANCE_CHOICES, index=BALANCE_CHOICES.index(balance_choice()),
        format_func=BALANCE_WORDS.get, help="The Train page starts with the same choice.")
    try:
        ensure_cache(data_dir)
        facts = summary(str(data_dir), dataset_fingerprint(data_dir), str(paths.cache_root), balance_choice(),
                        label_rule())
    except GalaxyError as exc:
        st.error(public(exc))
        return

    st.subheader(f"{facts['galaxies']:,} galaxies")
    split = facts["split"]
    cols = st.columns(3)
    for col, part in zip(cols, ("train", "val", "test")):
        label = {"train": "Training", "val": "Validation", "test": "Test"}[part]
        col.metric(f"{label} galaxies", f"{split[part]:,}")
    st.caption("Split by galaxy (stratified, seed 0) before any augmentation: no rotated copy of a "
               "test galaxy is ever trained on.")
    left, right = st.columns(2)
    left.plotly_chart(charts.class_counts({"all galaxies": facts["class_counts"]}, "Class counts"))
    with right:
        st.plotly_chart(charts.class_counts(
            {"before balancing": facts["train_before_balancing"],
             "after balancing": facts["train_after_balancing"]}, f"Training views (balancing: {facts['balance']})"))
    st.caption("Balancing rotates copies of rare classes (90°, 180°, 270°) and, towards the median, "
               "culls common ones.")

    st.subheader("Sample galaxies")
    kind = "volunteers' (weighted)" if label_rule() == "votes" else "debiased (distance-corrected)"
    st.caption(f"Captions give the {kind} Galaxy Zoo vote fractions for *smooth* and *features or "
               "disk*; a class needs more than 0.8.")
    seed = st.session_state.setdefault("_sample_seed", 0)
    if st.button("Show other galaxies", icon=":material/shuffle:"):
        st.session_state["_sample_seed"] = seed = seed + 1
    shown = samples(str(data_dir), dataset_fingerprint(data_dir), 6, seed, label_rule())
    for name, rows in shown.items():
        st.markdown(f"**{name}** ({facts['class_counts'][name]:,})")
        if not rows:
            st.caption("none in this dataset")
            continue
        cols = st.columns(6)
        for col, row in zip(cols, rows):
            with col:
                draw_thumbnail(row["path"], 128,
                               caption=f"smooth {row['frac_smooth']:.2f} · disk {row['frac_features']:.2f}")

    st.subheader("Pixel statistics")
    stats = pixel_stats(facts["cache"])
    table = pd.DataFrame({"channel": ["red", "green", "blue"],
                          "mean": [f"{m:.4f}" for m in stats.mean],
                          "std": [f"{s:.4f}" for s in stats.std],
                          "mean (8-bit)": [f"{255 * m:.1f}" for m in stats.mean]})
    left, right = st.columns([1, 2])
    left.dataframe(table, hide_index=True)
    left.caption(f"Over {stats.images:,} cached 128-px cutouts (a seeded sample of larger datasets), "
                 "in units of [0, 1] pixel values. "
                 "Training computes its own statistics on the training galaxies and stores them "
                 "in the model card.")
    right.plotly_chart(charts.pixel_histogram(histogram_frame(stats)))


data_dir = choose_dataset()
if limits.demo_mode:
    st.info("Downloading is turned off on this public demo: the datasets above are the ones it offers.")
else:
    with st.expander("Download a dataset from Galaxy Zoo and SDSS",
                     expanded=data_dir is None or registry.snapshot("download") is not None):
        download_form()
        download_panel()
if data_dir is not None:
    try:
        overview(data_dir)
    except GalaxyError as exc:
        st.error(public(exc))
    st.page_link(PAGES["train"], label="Train a model on this dataset", icon=":material/arrow_forward:")
