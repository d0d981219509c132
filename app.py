"""Streamlit entry point: page config, navigation and the shared sidebar.

Run with ``streamlit run app.py``.  Folders come from GALAXY_DATA_ROOT, GALAXY_MODELS_ROOT and
GALAXY_CACHE_DIR (default: data/, models/ and data/.cache in this folder).

The pages live in ``app_pages/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the
entry script as a legacy multipage app until ``st.navigation`` first runs in the process, so a
server whose first visitor follows a deep link (``/classify``) would list every module in that
folder as a page and skip this script's sidebar.
"""

import streamlit as st

from app_support.common import PAGE_ICONS, PAGES, folders, job_sidebar, model_sidebar

st.set_page_config(page_title="Galaxy Zoo classifier", page_icon=":material/blur_on:", layout="wide")

navigation = st.navigation([
    st.Page(PAGES["home"], title="Home", icon=PAGE_ICONS["home"], default=True),
    st.Page(PAGES["dataset"], title="Dataset", icon=PAGE_ICONS["dataset"]),
    st.Page(PAGES["train"], title="Train", icon=PAGE_ICONS["train"]),
    st.Page(PAGES["results"], title="Results", icon=PAGE_ICONS["results"]),
    st.Page(PAGES["classify"], title="Classify", icon=PAGE_ICONS["classify"]),
])

model_sidebar()
job_sidebar()
with st.sidebar:
    paths = folders()
    st.caption(f"Data: `{paths.data_root}`  \nModels: `{paths.models_root}`")

navigation.run()
