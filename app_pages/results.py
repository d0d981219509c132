"""Results: how a saved model does on its test galaxies, and the galaxies it gets wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from app_support import charts
from app_support.common import (
    MODEL_PARAM,
    active_model,
    draw_thumbnail,
    folders,
    known_dataset_folder,
    load_classifier,
    point_to,
    public,
    readable_dataset,
    set_active_model,
    usable_models,
)
from app_support.tables import (
    format_duration,
    history_frame,
    misclassified_frame,
    page_bounds,
    per_class_frame,
    reliability_frame,
    row_normalise,
)
from app_support.text import escape_markdown as esc
from galaxy_core.base import CLASSES, EvaluateConfig, GalaxyError
from galaxy_core.model import metric_rows, read_evaluation
from galaxy_core.serving import EXAMPLES_DIR, EvaluateProgress, classify_uploads, evaluate_bundle, list_examples
from galaxy_core.sources import CATALOGUE_NAME, IMAGES_DIR, DatasetFolder

PER_PAGE = 12
LINKED_KEY = "_results_linked_model"
HEADLINE = {"accuracy": "Test accuracy", "balanced_accuracy": "Balanced accuracy", "ece": "Calibration error"}

st.title("Results")
models = usable_models()
current = active_model()
if current is None:
    point_to("train", "There is no trained model to inspect yet. Train one on the Train page; its "
             "confusion matrix, curves and mistakes appear here.")
    st.stop()

names = [str(m.path) for m in models]
# A link such as "See its results" names the model (?model=NAME); a reload keeps the one shown.
linked = st.query_params.get(MODEL_PARAM)
if linked and linked != st.session_state.get(LINKED_KEY):
    st.session_state[LINKED_KEY] = linked
    match = [m for m in models if m.name == linked]
    if match:
        set_active_model(match[0].path)
        current = match[0]
choice = st.selectbox("Model", names, index=names.index(str(current.path)),
                      format_func=lambda p: Path(p).name)
model = next(m for m in models if str(m.path) == choice)
st.query_params[MODEL_PARAM] = st.session_state[LINKED_KEY] = model.name
card = model.card
metrics, prov = card.metrics, card.provenance
st.caption(f"This model answers **{esc(card.question)}** (labels {esc(card.label_rule)})"
           + (f", with galaxies framed so their r90 is {card.framing.radius_fraction:.0%} of the side."
              if card.framing else ", on cutouts as downloaded."))

rows = {row.key: row for row in metric_rows(metrics)} if metrics is not None else {}
cols = st.columns(5)
for col, (key, label) in zip(cols, HEADLINE.items()):
    if key in rows:
        col.metric(label, rows[key].text(), help=rows[key].help or None)
cols[3].metric("Test galaxies", f"{metrics.n:,}" if metrics is not None else "–")
cols[4].metric("Training time", format_duration(prov.training_seconds if prov is not None else None))
if prov is not None and prov.data is not None:
    st.caption(f"Trained {esc(prov.trained_at or '–')} on {esc(prov.data.split_text)} · "
               f"{esc(card.architecture.name)} at {card.input.input_size} px on {esc(prov.machine.device)}")

try:
    evaluation = read_evaluation(model.path)
except GalaxyError as exc:
    st.error(public(exc))
    evaluation = None

left, right = st.columns(2)
with left:
    if metrics is not None:
        normalised = st.toggle("Row-normalised (fraction of each true class)", value=False)
        matrix = row_normalise(metrics.confusion) if normalised else metrics.confusion
        st.plotly_chart(charts.confusion(np.asarray(matrix, dtype=float), normalised))
    else:
        st.info("This model card has no confusion matrix.")
with right:
    st.markdown("**Per class** (test galaxies)")
    table = per_class_frame(metrics)
    if table.empty:
        st.caption("No per-class scores in this card.")
    else:
        st.dataframe(table, hide_index=True, column_config={
            k: st.column_config.NumberColumn(format="%.3f") for k in ("precision", "recall", "f1")})
    for row in rows.values():
        if row.key not in HEADLINE and row.key != "n":
            st.caption(f"{esc(row.label.capitalize())}: {esc(row.text())}")

left, right = st.columns(2)
with left:
    frame = history_frame(card.history)
    if frame.empty:
        st.caption("No training history in this card.")
    else:
        metric = st.segmented_control("Curve", ["loss", "accuracy"], default="loss", required=True)
        st.plotly_chart(charts.curves(frame, metric or "loss"))
with right:
    if evaluation is not None and evaluation.metrics.reliability:
        st.plotly_chart(charts.reliability(reliability_frame(evaluation.metrics)))
        st.caption("Points on the diagonal mean a stated 80% is right 80% of the time; marker size "
                   "shows how many test galaxies fall in each bin.")
    else:
        st.caption("No reliability table: this model has no evaluation.json from training.")

def evaluate_elsewhere(model_dir: Path) -> None:
    """Score the model on another labelled folder: a Galaxy Zoo catalogue or a plain image,label one."""
    with st.expander("Evaluate this model on another labelled folder"):
        with st.form("evaluate_elsewhere", border=False):
            typed = st.text_input("Dataset folder", value=EXAMPLES_DIR.name if EXAMPLES_DIR.is_dir() else "",
                                  help=f"A folder with {CATALOGUE_NAME} and {IMAGES_DIR}/: a Galaxy Zoo "
                                       "catalogue, or a plain image,label list (Spiral, Elliptical, "
                                       "Uncertain or Unsure, any case)")
            go = st.form_submit_button("Evaluate", icon=":material/play_arrow:")
        if not go:
            return
        bar = st.progress(0.0, text="Reading the folder…")

        def progress(event: EvaluateProgress) -> None:
            bar.progress(event.done / max(event.total, 1),
                         text=f"Evaluating: {event.done:,} / {event.total:,} images (the 8 views, then "
                              "turned and mirrored copies of each)")

        try:
            data_dir = readable_dataset(typed)
            result = evaluate_bundle(EvaluateConfig(data_dir=data_dir, model_dir=model_dir,
                                                    cache_dir=folders().cache_root), progress)
        except GalaxyError as exc:
            bar.empty()
            st.error(public(exc))
            return
        bar.empty()
        found = result.metrics
        st.success(f"{found.n:,} galaxies of {esc(data_dir.name)} ({esc(found.split)}): accuracy {found.accuracy:.1%}, "
                   f"balanced accuracy {found.balanced_accuracy:.1%}")
        st.caption(result.comparison())
        left, right = st.columns(2)
        left.plotly_chart(charts.confusion(np.asarray(found.confusion, dtype=float), False), key="elsewhere")
        right.dataframe(per_class_frame(found), hide_index=True)


def shipped_examples(model_dir: Path, trained_on: Path | None) -> None:
    """Where the gallery of mistakes would come from, and meanwhile what ships: the example
    galaxies with the volunteers' class and this model's answer."""
    st.info("The gallery shows this model's mistakes with the images of the folder it was trained on"
            + (f" (`{trained_on}`)" if trained_on is not None else "") + ", which this app does not have. "
            "To see it, download that dataset or choose its folder on the Dataset page. Below: the "
            "example galaxies that ship with the app, with the volunteers' class and this model's answer.",
            icon=":material/photo_library:")
    examples = list_examples() if EXAMPLES_DIR.is_dir() else []
    if not examples:
        return
    try:
        classifier, lock = load_classifier(model_dir)
    except GalaxyError as exc:
        st.caption(f"The examples cannot be classified with this model: {exc}")
        return
    with lock:
        answers = classify_uploads(classifier, [(e.id, e.path.read_bytes()) for e in examples])
    right = sum(a.prediction.label == e.label for a, e in zip(answers, examples))
    st.caption(f"{right} of {len(examples)} examples answered as the volunteers said.")
    cols = st.columns(6)
    for i, (example, answer) in enumerate(zip(examples, answers)):
        with cols[i % 6].container(border=True):
            draw_thumbnail(example.path, 128, width="stretch")
            said = answer.prediction.label or "not classified"
            mark = "✓" if said == example.label else "✗"
            st.caption(f"{mark} volunteers **{example.label}** · model **{said}**")


evaluate_elsewhere(model.path)

st.header("Misclassified test galaxies")
if evaluation is None:
    st.info("This model folder has no evaluation.json, written when training finishes, so its "
            "mistakes cannot be listed.")
    st.stop()
wrong = evaluation.misclassified
trained_on = Path(prov.config.data_dir) if prov is not None else None
# Images are shown only from a dataset folder the app knows, and only files inside it.
data_dir = known_dataset_folder(trained_on) if trained_on is not None else None
if data_dir is None:
    with st.expander("The shipped example galaxies and this model's answers", expanded=True):
        shipped_examples(model.path, trained_on)
c1, c2, c3 = st.columns(3)
true_pick = c1.multiselect("True class", CLASSES)
pred_pick = c2.multiselect("Predicted class", CLASSES)
order = c3.radio("Order", ["most confident first", "least confident first"], horizontal=True)
table = misclassified_frame(wrong, true_pick, pred_pick, order)
st.caption(f"{len(table):,} of {len(wrong):,} wrong predictions. The most confident mistakes are "
           "often label noise: look at the image and judge the volunteers' vote yourself.")
if table.empty:
    st.stop()
pages = page_bounds(len(table), 1, PER_PAGE)[2]
page = (st.number_input(f"Page (of {pages})", 1, pages, 1, help=f"{PER_PAGE} galaxies per page")
        if pages > 1 else 1)
start, stop, _ = page_bounds(len(table), int(page), PER_PAGE)
cols = st.columns(4)
for i, row in enumerate(table.iloc[start:stop].itertuples()):
    with cols[i % 4].container(border=True):
        path = DatasetFolder(data_dir).image(row.image) if data_dir is not None else None
        if path is not None:
            draw_thumbnail(path, 160, width="stretch")
        st.markdown(f"true **{esc(row.true)}** → predicted **{esc(row.predicted)}**")
        st.caption(" · ".join(f"{c} {getattr(row, 'p_' + c.lower()):.0%}" for c in CLASSES))
        st.caption(esc(row.id))  # plain caption text (14 px): an inline-code id drew at 10.5 px
with st.expander("All listed galaxies as a table"):
    st.dataframe(table, hide_index=True)
