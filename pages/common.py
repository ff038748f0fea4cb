"""What every page shares: session defaults, the sidebar dataset picker, cached loaders,
and how a failure is shown.

Only UI glue lives here: every number comes from ``curation``; these wrappers add
Streamlit caching keyed on the dataset name, its data version and the settings.

Failures: a :class:`~curation.errors.CurationError` or an ``OSError`` carries a reason meant
for a person and is shown as that one line (:func:`show_error`, :func:`errors_shown`).
Anything else is a bug: app.py logs its traceback on the server and the page shows only its
type (:func:`show_unexpected`). A traceback never reaches the browser.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import streamlit as st

import curation  # noqa: F401  (environment defaults before fiftyone)
from curation import datasets as ds
from curation import mapview
from curation.database import bound_fiftyone_exit_hook
from curation.embeddings import default_embedding_field
from curation.errors import CurationError
from curation.projection import ClusterConfig, ProjectionConfig

logger = logging.getLogger("curation.app")

# Failures whose message is meant for the person using the app.
USER_ERRORS = (CurationError, OSError)
# FiftyOne's exit hook asks MongoDB whether other clients are connected; with the database
# already gone it waits for pymongo's 30 s server selection. This bounds it.
DATABASE_EXIT_TIMEOUT_S = 1.0
# What markdown_text escapes: every character that could start markup in st.markdown.
_MARKDOWN_SPECIAL = frozenset("\\`*_{}[]()<>#+-.!|~$:")


def _route_through_app_frame() -> None:
    """Make a page URL opened first after a server start run through app.py.

    With a ``pages/`` folder beside the main script, Streamlit starts in its old multipage
    mode and, if the first request is for a page (a bookmarked ``/map``), runs that file
    directly: no st.navigation, no sidebar, a page list of every file. app.py's
    ``st.navigation`` switches the process to the new mode; this does the same and reruns,
    so app.py runs and routes to the requested page.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_route_through_app_frame()


bound_fiftyone_exit_hook(DATABASE_EXIT_TIMEOUT_S)  # the server exits within seconds of SIGTERM


def one_line(error: BaseException) -> str:
    """An error's message on one line (library messages are; this keeps the layout if one is not)."""
    return " ".join(str(error).split()) or type(error).__name__


def markdown_text(text: str) -> str:
    """``text`` (a file name or message from outside) for st.markdown, shown as typed: no
    markup, links or HTML."""
    return "".join(f"\\{char}" if char in _MARKDOWN_SPECIAL else char for char in str(text))


def show_error(error: BaseException) -> None:
    """Show a failure meant for a person (a ``CurationError`` or ``OSError``) as one line."""
    st.error(one_line(error))


class UnexpectedError(Exception):
    """What the page shows for a bug: the original type's name, a generic message, no traceback."""

    def __init__(self, error: BaseException):
        super().__init__("Something went wrong that the app did not expect; the details are in the server log.")
        self.alternate_name = type(error).__name__  # Streamlit shows this as the exception's type


def show_unexpected(error: BaseException) -> None:
    """Log a bug's traceback on the server; the page shows its type and no details.

    Shown as an exception element (not ``st.error``) so that AppTests still see a crashed
    page in ``at.exception``; the element is built, never raised, so it carries no traceback.
    """
    logger.error("unexpected error while running a page", exc_info=error)
    st.exception(UnexpectedError(error))


@contextmanager
def errors_shown() -> Iterator[None]:
    """Run an action whose failure must not end the page: a ``CurationError`` or ``OSError``
    is shown as one line where the action's output would go, and the page goes on. Anything
    else propagates to app.py, which logs it."""
    try:
        yield
    except USER_ERRORS as error:
        show_error(error)


SESSION_DEFAULTS = {
    "dataset_name": None,
    "label_field": None,
    "embedding_field": None,
    "selected_ids": [],
    "data_version": 0,
    "last_message": None,
}


def init_session() -> None:
    """Initialise every session key in one place."""
    for key, value in SESSION_DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = list(value) if isinstance(value, list) else value


def bump_data_version() -> None:
    """Call after writing to the dataset so cached tables are read again."""
    st.session_state["data_version"] += 1


@st.cache_resource(show_spinner="Preparing the demo dataset…")
def ensure_demo() -> str:
    from curation.importers import DEMO_DATASET, ensure_demo_dataset

    ensure_demo_dataset(DEMO_DATASET)
    return DEMO_DATASET


def dataset_names() -> list[str]:
    return ds.list_dataset_names()


def current_dataset():
    """The dataset picked in the sidebar, or None (with a message shown) if there is none."""
    name = st.session_state.get("dataset_name")
    if not name:
        st.info("No dataset yet. Import one on the **Data** page, or run `curation import SOURCE --name NAME`.")
        return None
    try:
        return ds.load_dataset(name)
    except ds.DatasetNotFoundError as error:
        st.error(str(error))
        return None


def _pick(label: str, options: list[str], state_key: str, default: str | None, *, show_label: bool = True,
          names: dict[str, str] | None = None) -> str:
    """A sidebar selectbox whose choice lives in ``st.session_state[state_key]``.

    The widget itself is keyless: Streamlit drops a keyed widget's state on any run that does
    not draw it, and the persistent choice must survive page switches and tests.
    """
    current = st.session_state.get(state_key)
    if current not in options:
        current = default if default in options else options[0]
    choice = st.selectbox(label, options, index=options.index(current),
                          label_visibility="visible" if show_label else "collapsed",
                          format_func=(lambda option: names.get(option, option)) if names else str)
    st.session_state[state_key] = choice
    return choice


def sidebar() -> None:
    """Dataset, label field and embedding pickers, shared by all pages."""
    from curation.database import check_database

    status = check_database()
    if not status.ok:
        st.error(f"FiftyOne's database is not usable: {status.detail}")
        st.stop()
    names = dataset_names()
    if not names and os.environ.get("CURATION_NO_DEMO") != "1":
        names = [ensure_demo()]
    with st.sidebar:
        st.markdown("### Dataset")
        if not names:
            st.caption("No datasets yet.")
            st.session_state["dataset_name"] = None
            return
        name = _pick("Dataset", names, "dataset_name", os.environ.get("CURATION_DATASET"), show_label=False)
        dataset = ds.load_dataset(name)
        fields = ds.label_fields(dataset)
        if fields:
            _pick("Label field", fields, "label_field", ds.default_label_field(dataset))
        else:
            st.session_state["label_field"] = None
            st.caption("No classification labels in this dataset.")
        statuses = ds.embedding_statuses(dataset)
        embedding_fields = [status.field for status in statuses]
        if embedding_fields:
            # The model's name, not the long field name (which the Overview page shows).
            _pick("Embeddings", embedding_fields, "embedding_field", default_embedding_field(dataset),
                  names={status.field: status.model for status in statuses})
        else:
            st.session_state["embedding_field"] = None
        selected = len(st.session_state["selected_ids"])
        if selected:
            st.caption(f"{selected} samples selected on the map")


@st.cache_data(show_spinner="Computing the map (UMAP; the first map in a new server takes ~40 s to compile)…",
               max_entries=16)
def projection(name: str, field: str, config: ProjectionConfig, embedded_count: int) -> pd.DataFrame:
    return mapview.projection_frame(ds.load_dataset(name), field, config)


@st.cache_data(show_spinner="Reading sample labels and tags…", max_entries=8)
def map_points(name: str, field: str, label_field: str | None, config: ProjectionConfig, embedded_count: int,
               data_version: int) -> pd.DataFrame:
    """Map coordinates plus file path, label and tags; re-read after this session writes."""
    coordinates = projection(name, field, config, embedded_count)
    return mapview.with_attributes(ds.load_dataset(name), coordinates, label_field)


@st.cache_data(show_spinner="Reading the findings…", max_entries=4)
def findings(name: str, committed: str, data_version: int) -> pd.DataFrame:
    """The findings table (one row per sample), read again when an analysis run is committed
    (``committed``: the committed run ids, read from the database on each rerun) or this
    session writes; not on every rerun."""
    from curation.analysis import findings_table

    return findings_table(ds.load_dataset(name))


@st.cache_data(show_spinner="Clustering…", max_entries=16)
def clusters(name: str, field: str, config: ClusterConfig, embedded_count: int) -> pd.Series:
    return mapview.cluster_labels(ds.load_dataset(name), field, config)


def show_thumbnails(table: pd.DataFrame, *, columns: int = 6, limit: int = 60, caption_column: str = "label") -> None:
    """A grid of cached thumbnails (never the full-size originals)."""
    from curation.images import thumbnail_path

    rows = table.head(limit)
    grid = st.columns(columns)
    for position, row in enumerate(rows.itertuples(index=False)):
        thumb = thumbnail_path(row.filepath)
        with grid[position % columns]:
            caption = str(getattr(row, caption_column) or "")
            if thumb is None:
                st.warning(f"cannot show {os.path.basename(row.filepath)}")
            else:
                st.image(str(thumb), caption=caption, width="stretch")
    if len(table) > limit:
        st.caption(f"Showing {limit} of {len(table)}.")


@st.cache_resource(show_spinner="Finding nearest neighbours…", max_entries=4)
def finder_context(name: str, field: str, label_field: str | None, embedded_count: int):
    """The finders' shared context (embeddings, labels, splits, neighbour graph) for a dataset."""
    from curation.analysis import build_context

    return build_context(ds.load_dataset(name), field=field, label_field=label_field)


@st.cache_data(show_spinner="Cross-validating a classifier on the embeddings…", max_entries=8)
def balance_report(name: str, field: str, label_field: str | None, embedded_count: int, min_share: float,
                   n_clusters: int):
    """:func:`curation.balance.compute_balance` on :func:`finder_context`, kept per setting (a
    rerun does not cross-validate again); keyed as the context is."""
    from curation.balance import compute_balance

    context = finder_context(name, field, label_field, embedded_count)
    return compute_balance(context, min_share=min_share, n_clusters=n_clusters)


def open_page(title: str, *, needs_embeddings: bool = True):
    """Every page's start: the current dataset and embedding field, with the title drawn.

    Stops the page with a message saying what to do when there is no dataset or, where the
    page needs them, no embeddings.
    """
    dataset = current_dataset()
    if dataset is None:
        st.stop()
    st.title(f"{title} · {dataset.name}")
    field = st.session_state["embedding_field"]
    if needs_embeddings and not field:
        st.warning(f"No embeddings yet: compute them on the **Data** page or run `curation embed --dataset {dataset.name}`.")
        st.stop()
    if needs_embeddings and not dataset.exists(field).count():
        st.warning(f"None of the {len(dataset):,} samples has an embedding in `{field}`: compute them on the **Data** "
                   f"page or run `curation embed --dataset {dataset.name}`.")
        st.stop()
    return dataset, field
