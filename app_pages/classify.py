"""Classify: uploaded images or an SDSS cutout by coordinates -> class, probabilities, Grad-CAM."""

from __future__ import annotations

import time

import streamlit as st

from app_support import charts
from app_support.common import (
    EXAMPLE_PARAM,
    active_model,
    draw_thumbnail,
    fetch_policy,
    load_classifier,
    point_to,
    public,
    server_limits,
)
from app_support.limits import image_sizes
from app_support.tables import page_bounds
from app_support.text import escape_markdown
from galaxy_core.base import CLASSES, DEFAULT_CUTOUT_URL, GalaxyError
from galaxy_core.serving import (
    CAPTION,
    COLOUR_MAP,
    CREDIT,
    IMAGE_SUFFIXES,
    classify_uploads,
    colour_scale,
    example_by_id,
    list_examples,
    outline_framing,
    predictions_csv,
    read_tree,
    vote_sentence,
)
from galaxy_core.sources import fetch_cutout

UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
SKY_KEY = "_sky_cutouts"
RESULT_KEY = "_classified"
PER_PAGE = 12
MAX_SKY = 24
EXAMPLE_KEY = "_example"
EXAMPLE_COLUMNS = 8
SCROLL_KEY = "_scroll_to_results"
RESULTS_ANCHOR = "results"
# Run once after an example is clicked: the grid of examples fills a laptop's screen, so its
# answer would otherwise lie below the fold. The nonce makes each click a new element.
SCROLL_SCRIPT = ("<script>/* {nonce} */ document.getElementById('{anchor}')"
                 "?.scrollIntoView({{behavior: 'instant', block: 'start'}});</script>")


def example_picker() -> None:
    """Real SDSS galaxies shipped with the app: one click classifies one (also from Home's link)."""
    try:
        examples = list_examples()
    except GalaxyError as exc:
        st.error(str(exc))
        return
    if not examples:
        st.caption("No example galaxies here (the examples/ folder of the repository is absent).")
        return
    st.caption(f"{len(examples)} Galaxy Zoo 2 galaxies the shipped model never trained on, with the class "
               f"the volunteers gave. {CREDIT}")
    columns = st.columns(EXAMPLE_COLUMNS)
    for i, example in enumerate(examples):
        with columns[i % EXAMPLE_COLUMNS]:
            draw_thumbnail(example.path, 128, width="stretch")
            if st.button("Classify", key=f"example-{example.id}", width="stretch",
                         help=f"{example.id}; Galaxy Zoo volunteers said {example.label}"):
                st.session_state[EXAMPLE_KEY] = example.id
                st.session_state[SCROLL_KEY] = True
                st.query_params[EXAMPLE_PARAM] = example.id
    if st.session_state.get(EXAMPLE_KEY) and st.button("Clear the example"):
        st.session_state[EXAMPLE_KEY] = ""
        st.query_params.pop(EXAMPLE_PARAM, None)


def chosen_example() -> list[tuple[str, str, bytes]]:
    """The example picked here or named by the link (?example=ID), as an input to classify."""
    linked = st.query_params.get(EXAMPLE_PARAM)
    if linked and st.session_state.get(EXAMPLE_KEY) is None:  # "" once cleared
        st.session_state[EXAMPLE_KEY] = linked
        st.session_state[SCROLL_KEY] = True  # from Home's link: show its answer, not the grid
    try:
        example = example_by_id(st.session_state.get(EXAMPLE_KEY) or "")
    except GalaxyError:  # already said by the picker
        return []
    if example is None:
        return []
    return [(f"example:{example.id}", f"{example.id} (example; volunteers: {example.label})",
             example.path.read_bytes())]


def cam_legend() -> None:
    """The Grad-CAM colour scale, drawn once above the results."""
    left, right = st.columns([1, 3], vertical_alignment="center")
    left.image(colour_scale(256, 14), width="stretch")
    right.caption(f"Grad-CAM ({COLOUR_MAP} colours): {CAPTION}.")


def cam_caption(label: str) -> str:
    return f"what the model sees; bright yellow drove '{label}'"

started = time.perf_counter()
st.title("Classify galaxies")
model = active_model()
if model is None:
    point_to("train", "There is no model to classify with yet. Train one on the Train page, or place a "
             "model bundle (card.json + model.safetensors) in `models/default`.")
    st.stop()
try:
    classifier, model_lock = load_classifier(model.path)
except GalaxyError as exc:
    st.error(f"The model {escape_markdown(model.name)} cannot be loaded: {public(exc)}")
    st.stop()
size = classifier.bundle.geometry
framing = classifier.card.framing
st.caption(f"Model **{escape_markdown(model.name)}** answers {escape_markdown(classifier.card.question)}. "
           + (f"Each image is framed as in training: the galaxy nearest the centre is found against the sky "
              f"and cut out so that the radius holding 90% of its light is {framing.radius_fraction:.0%} of "
              f"the side; " if framing else "Each image is cropped to a centred square; ")
           + f"the network reads the central {size.crop}×{size.crop} of that {size.source_size}-px cutout at "
           f"{size.input_size} px" + (", averaged over 8 rotations and flips" if classifier.tta else "")
           + f". An answer below {classifier.card.confidence_floor:.0%} probability is flagged as low confidence.")

example_tab, upload_tab, sky_tab = st.tabs(["Try an example", "Upload images", "Sky coordinates (SDSS)"])
with example_tab:
    example_picker()
with upload_tab:
    limits = server_limits()
    uploads = st.file_uploader("Galaxy images", type=UPLOAD_TYPES, accept_multiple_files=True,
                               key="uploads", help="Any size, framing or colour mode: the galaxy "
                                                   "is found and framed like an SDSS cutout.")
    st.caption(limits.upload_note())
sky: list[tuple[str, str, bytes]] = st.session_state.setdefault(SKY_KEY, [])
with sky_tab:
    with st.form("sky"):
        c1, c2 = st.columns(2)
        ra = c1.number_input("RA (degrees)", 0.0, 359.99999, 252.61934, format="%.5f")
        dec = c2.number_input("Dec (degrees)", -90.0, 90.0, 38.81945, format="%.5f")
        cutout_url = st.text_input("Cutout URL", DEFAULT_CUTOUT_URL,
                                   help=f"SDSS SkyServer ImgCutout getjpeg ({size.pixel_scale:g} arcsec/pixel, "
                                        "the model's own pixel scale), or a stand-in")
        fetch = st.form_submit_button("Fetch and classify", icon=":material/download:")
    if fetch:
        try:
            with st.spinner("Fetching the cutout…"):
                data = fetch_cutout(ra, dec, cutout_url, size=size.source_size, scale=size.pixel_scale,
                                    policy=fetch_policy())
        except GalaxyError as exc:
            st.error(public(exc))
        else:
            key = f"sky:{ra:.5f}:{dec:+.5f}:{cutout_url}"
            sky[:] = [item for item in sky if item[0] != key][-(MAX_SKY - 1):]
            sky.append((key, f"SDSS RA {ra:.5f} Dec {dec:+.5f}", data))
    if sky and st.button("Clear fetched cutouts"):
        sky.clear()

uploaded = [(f"upload:{f.file_id}", f.name, f.getvalue()) for f in uploads or []]
try:  # read from the files' headers, before anything is decoded
    limits.check_uploads(image_sizes([data for _, _, data in uploaded]))
except GalaxyError as exc:
    st.error(str(exc))
    uploaded = []
inputs = uploaded + list(sky) + chosen_example()
if not inputs:
    st.info("Try one of the example galaxies, upload one or more galaxy images, or fetch an SDSS cutout "
            "by its coordinates. Any JPEG or PNG works; for the best results use a colour SDSS-like "
            "cutout of one galaxy.")
    st.stop()


run_key = (str(model.path), model.card_mtime, tuple(key for key, _, _ in inputs))
stored = st.session_state.get(RESULT_KEY)
fresh = stored is None or stored["key"] != run_key
if fresh:
    # The lock keeps a Grad-CAM hook from another session off the forward pass; decoding runs outside it.
    results = classify_uploads(classifier, [(name, data) for _, name, data in inputs], forward_lock=model_lock)
    stored = {"key": run_key, "results": results, "cams": {}, "seconds": None}
    st.session_state[RESULT_KEY] = stored
results, cams = stored["results"], stored["cams"]
predictions = [r.prediction for r in results]
timing = st.empty()

ok = [p for p in predictions if p.classified]
unread = sum(p.error is not None for p in predictions)
no_galaxy = len(predictions) - len(ok) - unread
counts = {c: sum(p.label == c for p in ok) for c in CLASSES}
st.subheader(f"{len(ok)} of {len(predictions)} image(s) classified", anchor=RESULTS_ANCHOR)
st.caption(" · ".join(f"{c}: {n}" for c, n in counts.items())
           + (f" · not classified, no galaxy found: {no_galaxy}" if no_galaxy else "")
           + (f" · could not be read: {unread}" if unread else ""))
st.download_button("Download results (CSV)", predictions_csv(predictions), "galaxy-predictions.csv",
                   "text/csv", icon=":material/download:")

if st.session_state.pop(SCROLL_KEY, False):
    st.html(SCROLL_SCRIPT.format(nonce=time.time_ns(), anchor=RESULTS_ANCHOR), unsafe_allow_javascript=True)
# Answers first, then the images with no galaxy in them, then those that could not be read.
order = sorted(range(len(predictions)), key=lambda k: (not predictions[k].classified,
                                                       predictions[k].error is not None))
pages = page_bounds(len(predictions), 1, PER_PAGE)[2]
page = st.number_input(f"Page (of {pages})", 1, pages, 1) if pages > 1 else 1
start, stop, _ = page_bounds(len(predictions), int(page), PER_PAGE)
show_cam = st.toggle("Show where the model looked (Grad-CAM)", value=True)
if show_cam:
    cam_legend()
columns = st.columns(3)
for slot, i in enumerate(order[start:stop]):
    prediction, item = predictions[i], results[i]
    with columns[slot % 3].container(border=True):
        st.markdown(f"**{escape_markdown(prediction.name)}**")
        if prediction.error is not None:
            st.error(f"Not classified: {public(prediction.error)}")
            continue
        if not prediction.classified:
            st.warning(f"Not classified: {prediction.warning}", icon=":material/block:")
            st.image(outline_framing(item.preview, item.framing, item.size), width="stretch",
                     caption=item.caption.split(";")[0])
            continue
        probs = prediction.probabilities or {}
        st.markdown(f"### Predicted: {prediction.label}")
        st.caption(f"{probs[prediction.label]:.0%} probability")
        if prediction.warning:
            st.warning(prediction.warning, icon=":material/warning:")
        if prediction.votes:
            st.markdown(vote_sentence(prediction.votes, classifier.card.label_rule))
        if prediction.tree and classifier.card.tree is not None:
            reading = read_tree(prediction.tree, classifier.card.tree)
            st.markdown(f"Down the Galaxy Zoo decision tree, most volunteers would say: {reading.sentence}")
            with st.expander("Every answer of the decision tree"):
                st.dataframe([{"question": a.question_words, "answer": a.words, "share": a.fraction,
                               "asked": a.reach} for a in reading.answers], hide_index=True,
                             column_config={k: st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                               max_value=1)
                                            for k in ("share", "asked")})
        left, right = st.columns(2)
        left.image(outline_framing(item.preview, item.framing, item.size), width="stretch", caption=item.caption)
        if not show_cam:
            right.image(item.framed, caption="framed as in training", width="stretch")
        else:
            if i not in cams:
                with model_lock:
                    cams[i] = classifier.grad_cam_overlay(item.framed)
            right.image(cams[i], caption=cam_caption(prediction.label), width="stretch")
        st.plotly_chart(charts.probabilities(probs), key=f"probs-{i}")

if fresh or stored["seconds"] is None:
    stored["seconds"] = time.perf_counter() - started
timing.caption(f":material/timer: {stored['seconds'] * 1000:.0f} ms from receiving the images to the "
               f"result (decoding, classifying{', Grad-CAM' if show_cam else ''} and drawing)")
