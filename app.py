"""The frame: page config, session defaults, navigation. Pages live in pages/."""

import streamlit as st

import curation  # noqa: F401  (sets FiftyOne's environment before anything imports it)
from pages.common import init_session, sidebar

st.set_page_config(page_title="Curation", page_icon=":material/photo_library:", layout="wide")
init_session()

navigation = st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page("pages/findings.py", title="Findings", icon=":material/troubleshoot:"),
    st.Page("pages/review.py", title="Review", icon=":material/rule:"),
    st.Page("pages/mislabels.py", title="Mislabels", icon=":material/label_off:"),
    st.Page("pages/duplicates.py", title="Duplicates", icon=":material/content_copy:"),
    st.Page("pages/balance.py", title="Balance", icon=":material/balance:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
    st.Page("pages/data.py", title="Data", icon=":material/upload:"),
])
sidebar()
navigation.run()
