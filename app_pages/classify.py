"""Classify: uploaded images or an SDSS cutout by coordinates -> class, probabilities, Grad-CAM."""

from __future__ import annotations

import time

import streamlit as st

from galaxy_core.config import CLASSES, DEFAULT_CUTOUT_URL, GalaxyError
from galaxy_core.cutouts import fetch_cutout
from galaxy_core.predict import IMAGE_SUFFIXES, classify_uploads, predictions_csv

from app_pages import charts
from app_pages.common import active_model, fetch_policy, load_classifier, point_to
from app_pages.tables import page_bounds

UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
SKY_KEY = "_sky_cutouts"
RESULT_KEY = "_classified"
PER_PAGE = 12
MAX_SKY = 24

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
    st.error(f"The model {model.name} cannot be loaded: {exc}")
    st.stop()
size = classifier.bundle.geometry
st.caption(f"Model **{model.name}** answers {classifier.card.question}: the central {size.crop}×{size.crop} "
           f"of a {size.source_size}-px cutout ({size.pixel_scale:g}″/pixel) at {size.input_size} px"
           + (", averaged over 8 rotations and flips" if classifier.tta else ""))

upload_tab, sky_tab = st.tabs(["Upload images", "Sky coordinates (SDSS)"])
with upload_tab:
    uploads = st.file_uploader("Galaxy images", type=UPLOAD_TYPES, accept_multiple_files=True,
                               key="uploads", help="Any size or colour mode; the image is cropped "
                                                   "to a centred square like an SDSS cutout.")
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
            st.error(str(exc))
        else:
            key = f"sky:{ra:.5f}:{dec:+.5f}:{cutout_url}"
            sky[:] = [item for item in sky if item[0] != key][-(MAX_SKY - 1):]
            sky.append((key, f"SDSS RA {ra:.5f} Dec {dec:+.5f}", data))
    if sky and st.button("Clear fetched cutouts"):
        sky.clear()

inputs = [(f"upload:{f.file_id}", f.name, f.getvalue()) for f in uploads or []] + list(sky)
if not inputs:
    st.info("Upload one or more galaxy images, or fetch an SDSS cutout by its coordinates. Any "
            "JPEG or PNG works; for the best results use a colour SDSS-like cutout of one galaxy.")
    st.stop()


run_key = (str(model.path), model.card_mtime, tuple(key for key, _, _ in inputs))
stored = st.session_state.get(RESULT_KEY)
fresh = stored is None or stored["key"] != run_key
if fresh:
    with model_lock:  # a Grad-CAM hook from another session must not see these forward passes
        results = classify_uploads(classifier, [(name, data) for _, name, data in inputs])
    stored = {"key": run_key, "results": results, "cams": {}, "seconds": None}
    st.session_state[RESULT_KEY] = stored
results, cams = stored["results"], stored["cams"]
predictions = [r.prediction for r in results]
timing = st.empty()

ok = [p for p in predictions if p.error is None]
counts = {c: sum(p.label == c for p in ok) for c in CLASSES}
st.subheader(f"{len(ok)} of {len(predictions)} image(s) classified")
st.caption(" · ".join(f"{c}: {n}" for c, n in counts.items())
           + (f" · {len(predictions) - len(ok)} could not be read" if len(ok) < len(predictions) else ""))
st.download_button("Download results (CSV)", predictions_csv(predictions), "galaxy-predictions.csv",
                   "text/csv", icon=":material/download:")

pages = page_bounds(len(predictions), 1, PER_PAGE)[2]
page = st.number_input("Page", 1, pages, 1) if pages > 1 else 1
start, stop, _ = page_bounds(len(predictions), int(page), PER_PAGE)
show_cam = st.toggle("Show where the model looked (Grad-CAM)", value=True)
columns = st.columns(3)
for i in range(start, stop):
    prediction, item = predictions[i], results[i]
    with columns[(i - start) % 3].container(border=True):
        st.markdown(f"**{prediction.name}**")
        if prediction.error is not None:
            st.error(f"Not classified: {prediction.error}")
            continue
        probs = prediction.probabilities or {}
        st.markdown(f"### Predicted: {prediction.label}")
        st.caption(f"{probs[prediction.label]:.0%} probability")
        left, right = st.columns(2)
        width, height = item.size
        left.image(item.preview, caption=f"uploaded ({width}×{height})", width="stretch")
        if show_cam:
            if i not in cams:
                with model_lock:
                    cams[i] = classifier.grad_cam_overlay(item.framed)
            right.image(cams[i], caption=f"what the model sees; red drove '{prediction.label}'",
                        width="stretch")
        st.plotly_chart(charts.probabilities(probs), key=f"probs-{i}")

if fresh or stored["seconds"] is None:
    stored["seconds"] = time.perf_counter() - started
timing.caption(f":material/timer: {stored['seconds'] * 1000:.0f} ms from receiving the images to the "
               f"result (decoding, classifying{', Grad-CAM' if show_cam else ''} and drawing)")
