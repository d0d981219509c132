"""Home: what the app does, the three classes with real examples, the model in use, where to go."""

import streamlit as st

from app_support.common import (
    EXAMPLE_PARAM,
    PAGE_INFO,
    PAGES,
    active_dataset,
    active_model,
    dataset_fingerprint,
    draw_thumbnail,
    label_rule,
    public,
    samples,
)
from app_support.tables import format_duration
from app_support.text import escape_markdown as esc
from galaxy_core.base import GalaxyError
from galaxy_core.serving import CREDIT, list_examples

CARD_HEIGHT = 570
IMAGE_PX = 160
CLASS_TEXT = {
    "Spiral": "A disk with arms or other features: more than 80% of Galaxy Zoo volunteers "
              "said *features or disk*.",
    "Elliptical": "A smooth, featureless ball of old stars: more than 80% of volunteers said *smooth*.",
    "Uncertain": "Volunteers did not agree strongly either way: faint, small, edge-on or unusual galaxies.",
}

st.title("Galaxy Zoo morphology classifier")
st.markdown(
    "A convolutional network that sorts SDSS galaxy images into **Spiral**, **Elliptical** or "
    "**Uncertain**, trained on the votes of Galaxy Zoo volunteers. Upload a photo or give sky "
    "coordinates to classify a galaxy, or build a dataset, train your own model and see where "
    "it goes wrong.")

dataset = active_dataset()
try:
    shipped = {name: [e for e in list_examples() if e.label == name] for name in CLASS_TEXT}
except GalaxyError as exc:
    st.warning(str(exc))
    shipped = {}
samples_of: dict = {}
if dataset is not None and not any(shipped.values()):
    try:
        samples_of = samples(str(dataset), dataset_fingerprint(dataset), 1, 0, label_rule())
    except (GalaxyError, OSError) as exc:
        st.warning(f"Could not read example galaxies from {public(dataset)}: {public(exc)}")

columns = st.columns(3)
for column, (name, text) in zip(columns, CLASS_TEXT.items()):
    with column.container(border=True, height=CARD_HEIGHT):  # one height, whatever the text
        st.subheader(name)
        st.markdown(text)
        if shipped.get(name):
            example = shipped[name][0]
            draw_thumbnail(example.path, IMAGE_PX, caption=example.caption, width="stretch")
            st.page_link(PAGES["classify"], label="Classify this galaxy", icon=":material/search:",
                         query_params={EXAMPLE_PARAM: example.id})
        elif samples_of.get(name):
            row = samples_of[name][0]
            draw_thumbnail(row["path"], IMAGE_PX, caption=f"{esc(row['id'])} ({esc(dataset.name)})", width="stretch")
if any(shipped.values()):
    st.caption(f"{sum(map(len, shipped.values()))} example galaxies ship with the app: try them all on the "
               f"Classify page. {CREDIT}")
elif dataset is None:
    st.caption("Example images appear here once there is a dataset (see the Dataset page).")

st.header("Model in use")
model = active_model()
if model is None:
    st.info("There is no model yet. Train one on the **Train** page (a few minutes on a laptop "
            "for a small dataset), or place a model bundle (card.json + model.safetensors) in "
            "`models/default`.")
else:
    card = model.card
    metrics, prov = card.metrics, card.provenance
    data = prov.data if prov is not None else None
    cols = st.columns(4)
    cols[0].metric("Model", model.name)
    cols[1].metric("Test accuracy", f"{metrics.accuracy:.1%}" if metrics is not None else "–")
    cols[2].metric("Galaxies", f"{data.galaxies:,}" if data is not None else "–",
                   help=data.split_text if data is not None else None)
    cols[3].metric("Training time", format_duration(prov.training_seconds if prov is not None else None))
    st.caption((f"{esc(data.split_text)} · " if data is not None else "")
               + f"trained {esc(prov.trained_at) if prov is not None else 'at an unknown time'} · "
               f"{esc(card.architecture.name)} at {card.input.input_size} px · balanced accuracy "
               + (f"{metrics.balanced_accuracy:.1%} on {metrics.n:,} held-out test galaxies"
                  if metrics is not None else "–")
               + f" · answers {esc(card.question)}")

st.header("Where to go")
links = [
    ("classify", "Classify a galaxy",
     "Upload images or give RA/Dec; see the class, probabilities and where the model looked."),
    ("dataset", "Build a dataset",
     "Download SDSS cutouts for a Galaxy Zoo catalogue, inspect class balance and pixels."),
    ("train", "Train a model",
     "Pick epochs, batch size and learning rate; watch loss and accuracy live."),
    ("results", "Inspect results",
     "Confusion matrix, per-class scores, calibration and the galaxies the model got wrong."),
]
for key, label, text in links:
    left, right = st.columns([1, 3], vertical_alignment="center")
    with left:
        st.page_link(PAGE_INFO[key].script, label=label, icon=PAGE_INFO[key].icon)
    right.caption(text)

if dataset is None and model is None:
    st.info("Getting started: open **Dataset** to download a few hundred galaxies (or point it at "
            "an existing folder), then **Train**.")
st.caption("Images: Sloan Digital Sky Survey. Labels: Galaxy Zoo (Lintott et al. 2008, 2011; "
           "Willett et al. 2013; Hart et al. 2016).")
