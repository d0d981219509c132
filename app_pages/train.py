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
    dataset_size,
    folders,
    job_registry,
    label_rule,
    point_to,
    public,
    server_limits,
    session_owner,
    set_active_model,
    training_facts,
)
from app_support.folders import model_dir_for_training
from app_support.jobs import JobSnapshot
from app_support.tables import format_duration, history_frame
from app_support.tasks import training_job
from galaxy_core.base import (
    BALANCE_CHOICES,
    CUTOUT_SIZE,
    LABEL_RULES,
    PRECISIONS,
    TRAIN_SETTINGS,
    GalaxyError,
    TrainConfig,
)
from galaxy_core.data import dataset_facts, fit_to_data
from galaxy_core.sources import DatasetFolder
from galaxy_core.training import TrainProgress, TrainResult, estimate_training_memory

POLL_S = 1.0
OTHERS_POLL_S = 10.0
MY_MODELS_KEY = "_my_models"  # the model names this browser session started: only these resume
CHANGES_KEY = "_train_changes"
DEFAULTS = TrainConfig(Path("."), Path("."))
S = TRAIN_SETTINGS  # each setting's words, help and range


def number(column, name: str, **kwargs):  # noqa: ANN001, ANN201 - a Streamlit column
    """A number box for one TrainConfig setting, with its words, help and range from the core."""
    setting, default = S[name], getattr(DEFAULTS, name)
    kind = type(default) if default is not None else int
    low = kind(setting.low) if setting.low is not None else None
    high = kind(setting.high) if setting.high is not None else None
    return column.number_input(setting.label, low, high, kwargs.pop("value", default), help=setting.help, **kwargs)


def toggle(column, name: str):  # noqa: ANN001, ANN201 - a Streamlit column
    return column.toggle(S[name].label, value=getattr(DEFAULTS, name), help=S[name].help)

st.title("Train a model")
paths = folders()
registry = job_registry()
snap = registry.snapshot("train")
running = snap is not None and snap.running
me = session_owner()
limits = server_limits()
st.session_state["_train_seen"] = None if snap is None else (snap.id, snap.state)


def training_form(data_dir: Path) -> None:
    facts = training_facts(data_dir)
    votes = facts is None or facts.has_vote_fractions
    if not votes:
        st.info("This dataset has classes but no vote fractions: the model learns the classes alone, "
                "without a vote-fraction head.", icon=":material/info:")
    with st.form("train"):
        name = st.text_input("Model name", value=f"{data_dir.name}-model",
                             help="Saved as a folder under the models root; the same name and "
                                  "settings resume a stopped run.")
        c1, c2, c3 = st.columns(3)
        epochs = number(c1, "epochs")
        batch_size = number(c2, "batch_size")
        lr = number(c3, "lr", format="%.4f", step=1e-3)
        c1, c2, c3 = st.columns(3)
        input_size = c1.select_slider(S["input_size"].label, [32, 48, 64, 96, 128], DEFAULTS.input_size,
                                      help=S["input_size"].help)
        seed = number(c2, "seed")
        balance = c3.selectbox(S["balance"].label, BALANCE_CHOICES, BALANCE_CHOICES.index(balance_choice()),
                               format_func=BALANCE_WORDS.get, help=S["balance"].help)
        labels = st.selectbox(S["label_rule"].label, LABEL_RULES, LABEL_RULES.index(label_rule()),
                              format_func=LABEL_WORDS.get, help=S["label_rule"].help)
        with st.expander("More settings"):
            c1, c2, c3 = st.columns(3)
            crop = c1.number_input(f"Centre crop of the {CUTOUT_SIZE}-px cutout", int(S["crop"].low), CUTOUT_SIZE,
                                   DEFAULTS.crop, help=S["crop"].help)
            width = number(c2, "width")
            depth = number(c3, "depth")
            c1, c2, c3 = st.columns(3)
            max_galaxies = c1.number_input(f"{S['max_galaxies'].label} (0 = all)", 0, 10_000_000, 0,
                                           help=S["max_galaxies"].help)
            augment = toggle(c2, "augment")
            tta = toggle(c3, "tta")
            c1, c2, c3 = st.columns(3)
            jitter = toggle(c1, "jitter")
            aux_weight = number(c2, "aux_weight", step=0.5, **({} if votes else {"value": 0.0, "disabled": True}))
            weight_decay = number(c3, "weight_decay", format="%.4f", step=0.01)
            c1, c2, c3 = st.columns(3)
            precision = c1.selectbox(S["precision"].label, PRECISIONS, PRECISIONS.index(DEFAULTS.precision),
                                     help=S["precision"].help)
            framing = c2.toggle(S["framing"].label, value=DEFAULTS.framing is not None,
                                help=f"Scale every cutout so the galaxy's r90 is {DEFAULTS.framing:.0%} of the side "
                                     "(off: the cutouts as downloaded)")
            restart = st.checkbox("Start over (discard the checkpoint of a model you started here)")
        submitted = st.form_submit_button("Start training", type="primary", disabled=running)
    if not submitted:
        return
    st.session_state[BALANCE_KEY] = balance
    st.session_state[LABELS_KEY] = labels
    try:
        out_dir = model_dir_for_training(paths.models_root, name)
        if out_dir.exists() and out_dir.name not in st.session_state.get(MY_MODELS_KEY, set()):
            raise GalaxyError(f"a model named {out_dir.name!r} already exists; choose another name")
        config = TrainConfig(data_dir=data_dir, out_dir=out_dir, epochs=int(epochs),
                             batch_size=int(batch_size), lr=float(lr), input_size=int(input_size),
                             crop=int(crop), width=int(width), depth=int(depth), seed=int(seed),
                             balance=str(balance), augment=bool(augment), tta=bool(tta),
                             jitter=bool(jitter), aux_weight=float(aux_weight),
                             weight_decay=float(weight_decay), precision=str(precision),
                             max_galaxies=int(max_galaxies) or None, cache_dir=paths.cache_root,
                             label_rule=str(labels), framing=DEFAULTS.framing if framing else None,
                             num_threads=1)
        config, changes = fit_to_data(config, dataset_facts(config))
        st.session_state[CHANGES_KEY] = changes
        limits.check_job_memory(estimate_training_memory(config, dataset_size(data_dir)))
        registry.start("train", out_dir.name, training_job(config, restart=restart),
                       stopped=lambda result: result.stopped, owner=me)
    except GalaxyError as exc:
        st.error(public(exc))
        return
    st.session_state.setdefault(MY_MODELS_KEY, set()).add(out_dir.name)
    st.rerun()


def live_progress(event: TrainProgress, snap: JobSnapshot) -> None:
    if event is None or event.phase == "prepare" or not event.epochs:
        st.progress(0.0, text=(public(event.message.capitalize()) if event else "Starting…"))
        return
    if event.phase == "evaluate" and event.batches:
        st.progress(min(event.batch / event.batches, 1.0),
                    text=f"**{snap.label}**: {public(event.message)}: {event.batch:,} / {event.batches:,} images · "
                         f"{format_duration(event.elapsed_s)} elapsed")
        return
    if event.phase == "train" and event.batches:
        done = ((event.epoch - 1) * event.batches + event.batch) / (event.epochs * event.batches)
        where = f"epoch {event.epoch}/{event.epochs} · batch {event.batch}/{event.batches}"
        score = f" · loss {event.loss:.3f} · accuracy {event.accuracy:.1%}"
    else:
        done = event.epoch / event.epochs
        where, score = f"epoch {event.epoch}/{event.epochs} done", f" · {public(event.message)}"
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
    for change in st.session_state.get(CHANGES_KEY) or []:
        st.info(change, icon=":material/tune:")
    if snap.running:
        live_progress(event, snap)
        if st.button("Stop", icon=":material/stop:", disabled=snap.stop_requested,
                     help="Stops within a second or two; the last finished epoch is kept"):
            registry.stop("train", me)
        if snap.stop_requested:
            st.caption("Stopping…")
        curves(event.history if event else [])
        return
    if snap.state == "failed":
        st.error(f"Training {snap.label} failed: {public(snap.error)}")
        return
    result: TrainResult = snap.result
    if result.stopped:
        done = getattr(result, "epochs_done", None)
        st.warning(f"**{snap.label}** stopped" + (f" after {done} finished epoch(s)" if done is not None else "")
                   + ". Start again with the same name and settings to resume from its last finished epoch.")
        if not hasattr(result, "history"):
            return
    else:
        accuracy = result.metrics.accuracy
        st.success(f"**{snap.label}** finished in {format_duration(snap.elapsed_s)}: test accuracy "
                   f"{accuracy:.1%} on {result.split_sizes['test']} held-out galaxies. Saved as "
                   f"model **{Path(result.out_dir).name}**.")
        left, right = st.columns(2)
        left.button("Use it as the active model", type="primary", on_click=set_active_model,
                    args=(str(result.out_dir),))
        with right:
            st.page_link(PAGES["results"], label="See its results", icon=":material/analytics:",
                         query_params={MODEL_PARAM: Path(result.out_dir).name})
    curves(result.history)


# The owner watches every second; another visitor only needs to learn, now and then, that it ended.
@st.fragment(run_every=(POLL_S if snap.owned_by(me) else OTHERS_POLL_S) if running else None)
def job_panel() -> None:
    now = registry.snapshot("train")
    if now is None:
        return
    if (now.id, now.state) != st.session_state.get("_train_seen"):
        st.rerun()  # started elsewhere or finished: redraw the form too
    if not now.owned_by(me):  # another visitor's job is theirs to watch
        if now.running:
            st.info("The server is busy training a model for another visitor; one job at a time. "
                    "Try again when it has finished.")
        return
    show_job(now)


data_dir = active_dataset()
if limits.demo_mode:
    st.info("Training is turned off on this public demo. Classify galaxies on the Classify page, or see "
            "how the shipped models do on the Results page.")
    st.stop()
if data_dir is None:
    point_to("dataset", "There is no dataset to train on yet: download one (or point to an existing "
             "folder) on the Dataset page.")
else:
    data_dir = dataset_selectbox("Dataset", data_dir)
    try:
        DatasetFolder(data_dir).read_catalogue()  # refuses a folder none of whose images exist
    except GalaxyError as exc:
        point_to("dataset", f"`{data_dir.name}` cannot be trained on: {exc}. Finish its download on the "
                 "Dataset page, or choose another folder.")
        data_dir = None
    if running and snap.owned_by(me):
        st.info(f"Your training job ({snap.label}) is running; one job at a time. Its progress is below.")
    if data_dir is not None:
        training_form(data_dir)
        st.caption(f"This server runs one training job at a time, of up to {limits.max_job_memory_gb:g} GB of "
                   "memory (estimated from the settings before it starts).")
job_panel()
