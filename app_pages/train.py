"""Train: a form that starts one background training job, and its live progress and curves."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_support import charts
from app_support.common import (
    BALANCE_KEY,
    BALANCE_WORDS,
    LABEL_WORDS,
    LABELS_KEY,
    MODEL_PARAM,
    PAGES,
    active_dataset,
    balance_choice,
    dataset_selectbox,
    folders,
    job_registry,
    label_rule,
    point_to,
    set_active_model,
)
from app_support.folders import model_dir_for_training
from app_support.jobs import JobSnapshot
from app_support.tables import format_duration, history_frame
from app_support.tasks import training_task
from galaxy_core.base import BALANCE_CHOICES, CUTOUT_SIZE, LABEL_RULES, PRECISIONS, GalaxyError, TrainConfig
from galaxy_core.training import TrainProgress, TrainResult

POLL_S = 1.0
DEFAULTS = TrainConfig(Path("."), Path("."))

st.title("Train a model")
paths = folders()
registry = job_registry()
snap = registry.snapshot("train")
running = snap is not None and snap.running
st.session_state["_train_seen"] = None if snap is None else (snap.id, snap.state)


def training_form(data_dir: Path) -> None:
    with st.form("train"):
        name = st.text_input("Model name", value=f"{data_dir.name}-model",
                             help="Saved as a folder under the models root; the same name and "
                                  "settings resume a stopped run.")
        c1, c2, c3 = st.columns(3)
        epochs = c1.number_input("Epochs", 1, 500, 10)
        batch_size = c2.number_input("Batch size", 2, 1024, DEFAULTS.batch_size)
        lr = c3.number_input("Learning rate", 1e-5, 1.0, DEFAULTS.lr, format="%.4f", step=1e-3)
        c1, c2, c3 = st.columns(3)
        input_size = c1.select_slider("Image size (px)", [32, 48, 64, 96, 128], DEFAULTS.input_size,
                                      help="The centre crop is resized to this before the network")
        seed = c2.number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed,
                               help="Seeds the split, balancing, shuffling and augmentation")
        balance = c3.selectbox("Class balancing", BALANCE_CHOICES, BALANCE_CHOICES.index(balance_choice()),
                               format_func=BALANCE_WORDS.get,
                               help="Rotate copies of rare classes (and, towards the median, cull common ones)")
        labels = st.selectbox("Labels", LABEL_RULES, LABEL_RULES.index(label_rule()), format_func=LABEL_WORDS.get,
                              help="Which vote fractions make the class; the model card records the choice")
        with st.expander("More settings"):
            c1, c2, c3 = st.columns(3)
            crop = c1.number_input(f"Centre crop of the {CUTOUT_SIZE}-px cutout", 16, CUTOUT_SIZE, DEFAULTS.crop)
            width = c2.number_input("Network width", 4, 128, DEFAULTS.width)
            depth = c3.number_input("Blocks per stage", 1, 8, DEFAULTS.depth)
            c1, c2, c3 = st.columns(3)
            max_galaxies = c1.number_input("Use at most N galaxies (0 = all)", 0, 10_000_000, 0)
            augment = c2.toggle("Random rotations and flips", value=DEFAULTS.augment)
            tta = c3.toggle("Average 8 symmetries at test time", value=DEFAULTS.tta)
            c1, c2, c3 = st.columns(3)
            jitter = c1.toggle("Any-angle rotation, zoom and shift", value=DEFAULTS.jitter)
            aux_weight = c2.number_input("Vote-fraction head weight", 0.0, 10.0, DEFAULTS.aux_weight,
                                         step=0.5, help="0 turns off the regression of the vote fractions")
            weight_decay = c3.number_input("Weight decay", 0.0, 1.0, DEFAULTS.weight_decay,
                                           format="%.4f", step=0.01)
            c1, c2, c3 = st.columns(3)
            precision = c1.selectbox("Arithmetic", PRECISIONS, PRECISIONS.index(DEFAULTS.precision),
                                     help="bf16: about twice as fast on processors with native bfloat16")
            framing = c2.toggle("Frame each galaxy as uploads are framed", value=DEFAULTS.framing is not None,
                                help=f"Scale every cutout so the galaxy's r90 is {DEFAULTS.framing:.0%} of the side "
                                     "(off: the cutouts as downloaded)")
            restart = st.checkbox("Start over (discard this model's checkpoint)")
        submitted = st.form_submit_button("Start training", type="primary", disabled=running)
    if not submitted:
        return
    st.session_state[BALANCE_KEY] = balance
    st.session_state[LABELS_KEY] = labels
    try:
        out_dir = model_dir_for_training(paths.models_root, name)
        config = TrainConfig(data_dir=data_dir, out_dir=out_dir, epochs=int(epochs),
                             batch_size=int(batch_size), lr=float(lr), input_size=int(input_size),
                             crop=int(crop), width=int(width), depth=int(depth), seed=int(seed),
                             balance=str(balance), augment=bool(augment), tta=bool(tta),
                             jitter=bool(jitter), aux_weight=float(aux_weight),
                             weight_decay=float(weight_decay), precision=str(precision),
                             max_galaxies=int(max_galaxies) or None, cache_dir=paths.cache_root,
                             labels=str(labels), framing=DEFAULTS.framing if framing else None)
        registry.start("train", out_dir.name, training_task(config, restart=restart),
                       stopped=lambda result: result.stopped)
    except GalaxyError as exc:
        st.error(str(exc))
        return
    st.rerun()


def live_progress(event: TrainProgress, snap: JobSnapshot) -> None:
    if event is None or event.phase == "prepare" or not event.epochs:
        st.progress(0.0, text=(event.message.capitalize() if event else "Starting…"))
        return
    if event.phase == "evaluate" and event.batches:
        st.progress(min(event.batch / event.batches, 1.0),
                    text=f"**{snap.label}**: {event.message}: {event.batch:,} / {event.batches:,} images · "
                         f"{format_duration(event.elapsed_s)} elapsed")
        return
    if event.phase == "train" and event.batches:
        done = ((event.epoch - 1) * event.batches + event.batch) / (event.epochs * event.batches)
        where = f"epoch {event.epoch}/{event.epochs} · batch {event.batch}/{event.batches}"
        score = f" · loss {event.loss:.3f} · accuracy {event.accuracy:.1%}"
    else:
        done = event.epoch / event.epochs
        where, score = f"epoch {event.epoch}/{event.epochs} done", f" · {event.message}"
    st.progress(min(done, 1.0), text=f"**{snap.label}**: {where}{score} · "
                                     f"{format_duration(event.elapsed_s)} elapsed · "
                                     f"about {format_duration(event.eta_s)} left")


def curves(history: list[dict]) -> None:
    frame = history_frame(history)
    if frame.empty:
        st.caption("Loss and accuracy curves appear after the first epoch.")
        return
    left, right = st.columns(2)
    left.plotly_chart(charts.curves(frame, "loss"), key=f"loss-{len(history)}")
    right.plotly_chart(charts.curves(frame, "accuracy"), key=f"acc-{len(history)}")


def show_job(snap: JobSnapshot) -> None:
    event: TrainProgress | None = snap.progress
    if snap.running:
        live_progress(event, snap)
        if st.button("Stop", icon=":material/stop:", disabled=snap.stop_requested,
                     help="Stops after the current batch; the last finished epoch is kept"):
            registry.stop("train")
        if snap.stop_requested:
            st.caption("Stopping…")
        curves(event.history if event else [])
        return
    if snap.state == "failed":
        st.error(f"Training {snap.label} failed: {snap.error}")
        return
    result: TrainResult = snap.result
    if result.stopped:
        st.warning(f"**{snap.label}** stopped after {result.epochs_done} finished epoch(s). Start "
                   "again with the same name and settings to resume from there.")
    else:
        accuracy = result.metrics.accuracy
        st.success(f"**{snap.label}** finished in {format_duration(snap.elapsed_s)}: test accuracy "
                   f"{accuracy:.1%} on {result.split_sizes['test']} held-out galaxies. Saved to "
                   f"`{result.out_dir}`.")
        left, right = st.columns(2)
        left.button("Use it as the active model", type="primary", on_click=set_active_model,
                    args=(str(result.out_dir),))
        with right:
            st.page_link(PAGES["results"], label="See its results", icon=":material/analytics:",
                         query_params={MODEL_PARAM: Path(result.out_dir).name})
    curves(result.history)


@st.fragment(run_every=POLL_S if running else None)
def job_panel() -> None:
    now = registry.snapshot("train")
    if now is None:
        return
    if (now.id, now.state) != st.session_state.get("_train_seen"):
        st.rerun()  # started elsewhere or finished: redraw the form too
    show_job(now)


data_dir = active_dataset()
if data_dir is None:
    point_to("dataset", "There is no dataset to train on yet: download one (or point to an existing "
             "folder) on the Dataset page.")
else:
    data_dir = dataset_selectbox("Dataset", data_dir)
    if running:
        st.info(f"A training job ({snap.label}) is running; one job at a time. Its progress is below.")
    training_form(data_dir)
job_panel()
