"""Fixtures shared by the AppTest files (imported by them, so other tests never import Streamlit)."""

from __future__ import annotations

import pytest
import streamlit as st


@pytest.fixture(autouse=True)
def fresh_caches():
    """Cached models, tables and the job registry live per process; each test starts clean."""
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()
