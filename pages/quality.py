"""Quality: one point per snapshot (and the current state last) for the figures that say how clean the data is."""

import streamlit as st

from curation import datasets as ds
from curation.snapshots import CURRENT, trend
from curation.version_plots import TREND_CHARTS, trend_figure, trend_metrics, trend_table
from pages.common import errors_shown, open_page

dataset, _ = open_page("Quality", needs_embeddings=False)

include_auto = st.checkbox("include automatic snapshots", key="qu_auto",
                           help="the snapshots taken by themselves before every bulk change")


@st.cache_data(show_spinner="Reading the quality figures of every snapshot…", max_entries=8, ttl=120)
def trend_of(dataset_name: str, created_at: str, with_auto: bool, data_version: int):
    """The trend (the stored snapshots never change; the current state is read again after
    this session writes, and at least every two minutes)."""
    return trend(ds.load_dataset(dataset_name), include_auto=with_auto)


table = None
with errors_shown():
    table = trend_of(dataset.name, str(dataset.created_at), include_auto, st.session_state["data_version"])
if table is None:
    st.stop()

stored = int((table["kind"] != CURRENT).sum())
if not stored:
    command_name = dataset.name.replace("`", "'")  # inside a code span, shown as typed
    st.info("No snapshots yet, so the charts show the current state as one point. Add a snapshot on the "
            f"**Versions** page (or run `curation snapshot create --dataset {command_name}`) whenever "
            "the curation reaches a stage worth keeping; each one becomes a point here.")

cells = st.columns(6)
for cell, figure in zip(cells, trend_metrics(table)):
    cell.metric(figure["label"], figure["value"], figure["delta"], delta_color=figure["delta_color"],
                help="now, and the change since the last snapshot")
points = f"{stored:,} snapshot{'s' if stored != 1 else ''} and the current state" if stored else "The current state"
st.caption(f"{points} (the star on the shaded band, “now”). Each snapshot's figures are those of the moment it "
           "was taken; suspected mislabels, duplicates, leaks and outliers count the open findings (flagged and not "
           "yet decided).")

charts = st.columns(2)
for position, chart in enumerate(TREND_CHARTS):
    with charts[position % 2]:
        st.plotly_chart(trend_figure(table, chart), width="stretch", key=f"qu_chart_{chart.key}")

st.subheader("Figures per snapshot")
st.dataframe(trend_table(table), hide_index=True, width="stretch",
             column_config={"imbalance": st.column_config.NumberColumn(format="%.2f"),
                            "audited error rate": st.column_config.NumberColumn(format="percent"),
                            "alpha": st.column_config.NumberColumn(format="%.2f"),
                            "kappa": st.column_config.NumberColumn(format="%.2f")})
