"""Map: UMAP of the embeddings, coloured by label, field or cluster; lasso to select and tag.

At a million samples the chart draws a seeded sample of points over a density image of
all of them; a lasso or box is resolved on the server against every sample.
"""

import pandas as pd
import streamlit as st

from curation import datasets as ds
from curation import mapview
from curation.plots import map_view_figure
from curation.projection import ClusterConfig, ProjectionConfig
from pages.common import (USER_ERRORS, bump_data_version, clusters, open_page, projection, show_error,
                          show_thumbnails)

SELECTION_ROWS = 1_000  # rows of a selection read for the table; the count is always exact


@st.cache_resource(show_spinner="Reading sample labels and tags…", max_entries=2)
def map_table(name: str, field: str, label_field: str | None, config: ProjectionConfig, embedded_count: int,
              data_version: int) -> pd.DataFrame:
    """Coordinates plus file path, label and tags: shared, not copied on every rerun (1M rows). Read-only."""
    return mapview.with_attributes(ds.load_dataset(name), projection(name, field, config, embedded_count), label_field)


@st.cache_resource(show_spinner="Colouring the map…", max_entries=4)
def map_colors(name: str, field: str, label_field: str | None, config: ProjectionConfig, color_by: str,
               n_clusters: int, embedded_count: int, data_version: int) -> pd.Series:
    frame = map_table(name, field, label_field, config, embedded_count, data_version)
    if color_by in (mapview.COLOR_KMEANS, mapview.COLOR_HDBSCAN):
        method = "kmeans" if color_by == mapview.COLOR_KMEANS else "hdbscan"
        return mapview.aligned_colors(clusters(name, field, ClusterConfig(method=method, n_clusters=n_clusters),
                                               embedded_count), frame)
    return mapview.color_column(ds.load_dataset(name), frame, color_by, field)


@st.cache_resource(show_spinner="Drawing the map…", max_entries=4)
def map_chart(name: str, field: str, label_field: str | None, config: ProjectionConfig, color_by: str,
              n_clusters: int, embedded_count: int, data_version: int):
    frame = map_table(name, field, label_field, config, embedded_count, data_version)
    colors = map_colors(name, field, label_field, config, color_by, n_clusters, embedded_count, data_version)
    return map_view_figure(frame, colors)


dataset, field = open_page("Map")

controls = st.columns([2, 1, 1, 1])
color_by = controls[0].selectbox("Colour by", mapview.color_options(dataset), key="map_color_by")
n_clusters = controls[1].number_input("k-means clusters", 2, 100, 10, key="map_n_clusters",
                                      disabled=color_by != mapview.COLOR_KMEANS)
n_neighbors = controls[2].number_input("UMAP neighbours", 5, 100, 15, key="map_n_neighbors")
min_dist = controls[3].number_input("UMAP min distance", 0.0, 1.0, 0.1, step=0.05, key="map_min_dist")

embedded_count = dataset.exists(field).count()
key = (dataset.name, field, st.session_state["label_field"],
       ProjectionConfig(n_neighbors=int(n_neighbors), min_dist=float(min_dist)))
frame = map_table(*key, embedded_count, st.session_state["data_version"])
figure, drawn = map_chart(*key, color_by, int(n_clusters), embedded_count, st.session_state["data_version"])

if drawn < len(frame):
    shown = (f"{drawn:,} drawn as points over a density image of all of them; a lasso or box selects every "
             "sample inside it, drawn or not. ")
else:
    shown = ""
st.caption(f"{len(frame):,} samples. {shown}Drag to lasso-select (box select and click are in the chart's "
           "toolbar); the selection appears below.")
event = st.plotly_chart(figure, key="map_chart", on_select="rerun",
                        selection_mode=("points", "box", "lasso"), width="stretch")
chosen = mapview.selected_ids(frame, event.selection) if event and event.selection else None
if chosen is not None:
    st.session_state["selected_ids"] = chosen

selected = st.session_state["selected_ids"]
st.subheader(f"Selection ({len(selected):,} samples)")
if not selected:
    st.caption("Nothing selected yet.")
    st.stop()

tag_columns = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
tag = tag_columns[0].text_input("Tag", value="relabel", key="tag_name")
add = tag_columns[1].button("Add tag", type="primary", width="stretch")
remove = tag_columns[2].button("Remove tag", width="stretch")
clear = tag_columns[3].button("Clear selection", width="stretch")
if add or remove:
    try:
        count = (ds.tag_samples if add else ds.untag_samples)(dataset, selected, tag)
    except USER_ERRORS as error:
        show_error(error)
    else:
        bump_data_version()
        st.success(f"{'Tagged' if add else 'Untagged'} {count} samples with '{tag.strip()}' (saved in the dataset).")
if clear:
    st.session_state["selected_ids"] = []
    st.session_state.pop("map_chart", None)  # forget the chart's own lasso too
    st.rerun()

table = mapview.selection_table(dataset, selected, st.session_state["label_field"], limit=SELECTION_ROWS)
if len(selected) > len(table):
    st.caption(f"Showing the first {len(table):,} of {len(selected):,} selected samples.")
show_thumbnails(table)
with st.expander("Selected samples as a table"):
    st.dataframe(table, hide_index=True)
