"""Streamlit entry point: page config, navigation and the shared sidebar.

Run with ``streamlit run app.py``.  Folders come from GALAXY_DATA_ROOT, GALAXY_MODELS_ROOT and
GALAXY_CACHE_DIR (default: data/, models/ and data/.cache in this folder).

The pages live in ``app_pages/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the
entry script as a legacy multipage app until ``st.navigation`` first runs in the process, so a
server whose first visitor follows a deep link (``/classify``) would list every module in that
folder as a page and skip this script's sidebar.
"""

import streamlit as st

from app_support.common import PAGE_INFO, job_sidebar, model_sidebar, server_limits

st.set_page_config(page_title="Galaxy Zoo classifier", page_icon=":material/blur_on:", layout="wide")

navigation = st.navigation([st.Page(page.script, title=page.title, icon=page.icon, default=index == 0)
                            for index, page in enumerate(PAGE_INFO.values())])

model_sidebar()
job_sidebar()
if server_limits().demo_mode:
    st.sidebar.caption(":material/visibility: A public demo: classify galaxies and see the results.")

navigation.run()
