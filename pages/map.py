"""Map: UMAP of the embeddings, coloured by label, field or cluster; lasso to select and tag."""

import pandas as pd
import streamlit as st

from curation import datasets as ds
from curation import mapview
from curation.plots import scatter_map
from curation.projection import ClusterConfig, ProjectionConfig
from pages.common import USER_ERRORS, bump_data_version, clusters, map_points, open_page, show_error, show_thumbnails

dataset, field = open_page("Map")

controls = st.columns([2, 1, 1, 1])
color_by = controls[0].selectbox("Colour by", mapview.color_options(dataset), key="map_color_by")
n_clusters = controls[1].number_input("k-means clusters", 2, 100, 10, key="map_n_clusters",
                                      disabled=color_by != mapview.COLOR_KMEANS)
n_neighbors = controls[2].number_input("UMAP neighbours", 5, 100, 15, key="map_n_neighbors")
min_dist = controls[3].number_input("UMAP min distance", 0.0, 1.0, 0.1, step=0.05, key="map_min_dist")

embedded_count = dataset.exists(field).count()
frame = map_points(dataset.name, field, st.session_state["label_field"],
                   ProjectionConfig(n_neighbors=int(n_neighbors), min_dist=float(min_dist)), embedded_count,
                   st.session_state["data_version"])
if color_by in (mapview.COLOR_KMEANS, mapview.COLOR_HDBSCAN):
    method = "kmeans" if color_by == mapview.COLOR_KMEANS else "hdbscan"
    names = clusters(dataset.name, field, ClusterConfig(method=method, n_clusters=int(n_clusters)), embedded_count)
    colors = pd.Series(names.loc[frame["id"]].to_numpy(), index=frame.index)
else:
    colors = mapview.color_column(dataset, frame, color_by, field)

st.caption(f"{len(frame):,} samples. Drag to lasso-select (box select and click are in the chart's toolbar); "
           "the selection appears below.")
event = st.plotly_chart(scatter_map(frame, colors), key="map_chart", on_select="rerun",
                        selection_mode=("points", "box", "lasso"), width="stretch")
points = event.selection.points if event and event.selection else []
if points:
    st.session_state["selected_ids"] = list(dict.fromkeys(point["customdata"] for point in points))

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

table = mapview.selection_table(dataset, selected, st.session_state["label_field"])
show_thumbnails(table)
with st.expander("Selected samples as a table"):
    st.dataframe(table, hide_index=True)
