"""The frame: page config, session defaults, navigation. Pages live in pages/.

A page's failure never shows a traceback: a ``CurationError`` or ``OSError`` that no page
handled is shown as its one-line reason, anything else is logged on the server and shown
by type only (see pages/common.py).
"""

import streamlit as st

import curation  # noqa: F401  (sets FiftyOne's environment before anything imports it)
from curation.db_server import ensure_server_once
from pages.common import USER_ERRORS, init_session, show_error, show_unexpected, sidebar

ensure_server_once()  # before FiftyOne connects: it attaches to the kept database service (curation.db_server)

st.set_page_config(page_title="Curation", page_icon=":material/photo_library:", layout="wide")
init_session()

# Grouped by what a user is doing; expanded, so no page hides behind "View more".
navigation = st.navigation({
    "": [st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True)],
    "Explore": [
        st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("pages/findings.py", title="Findings", icon=":material/troubleshoot:"),
        st.Page("pages/balance.py", title="Balance", icon=":material/balance:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    ],
    "Fix": [
        st.Page("pages/review.py", title="Review", icon=":material/rule:"),
        st.Page("pages/objects.py", title="Objects", icon=":material/select_all:"),
        st.Page("pages/mislabels.py", title="Mislabels", icon=":material/label_off:"),
        st.Page("pages/duplicates.py", title="Duplicates", icon=":material/content_copy:"),
        st.Page("pages/agreement.py", title="Annotators", icon=":material/groups:"),
        st.Page("pages/audit.py", title="Audit", icon=":material/fact_check:"),
    ],
    "Track": [
        st.Page("pages/versions.py", title="Versions", icon=":material/history:"),
        st.Page("pages/quality.py", title="Quality", icon=":material/monitoring:"),
    ],
    "Data": [
        st.Page("pages/export.py", title="Export", icon=":material/download:"),
        st.Page("pages/data.py", title="Data", icon=":material/upload:"),
    ],
}, expanded=True)
try:
    sidebar()
    navigation.run()
except USER_ERRORS as error:
    show_error(error)
except Exception as error:  # a bug: logged with its traceback, shown without it  # noqa: BLE001
    show_unexpected(error)
