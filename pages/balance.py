"""Balance: class counts, what the data cannot separate, and thin regions of the embedding space."""

import pandas as pd
import streamlit as st

from curation.finders.base import FinderInputError
from curation.plots import class_count_bar, cluster_mix_bar, confusion_heatmap
from pages.common import balance_report, open_page

dataset, field = open_page("Balance & coverage")
controls = st.columns(2)
min_share = controls[0].slider("Flag classes below this share", 0.0, 0.5, 0.05, 0.01, format="%.2f", key="bal_min_share")
n_clusters = controls[1].number_input("Regions (k-means clusters)", 2, 50, 10, key="bal_clusters")
try:
    report = balance_report(dataset.name, field, st.session_state["label_field"], dataset.exists(field).count(),
                            float(min_share), int(n_clusters))
except FinderInputError as error:
    st.info(str(error))
    st.stop()

metrics = st.columns(3)
metrics[0].metric("Classes", len(report.counts))
metrics[1].metric("Imbalance (largest / smallest)", f"{report.imbalance_ratio:.1f}x")
metrics[2].metric(f"Classes below {min_share:.0%}", len(report.below_share))

st.subheader("Suggestions")
if report.suggestions:
    for suggestion in report.suggestions:
        st.markdown(f"- {suggestion}")
else:
    st.caption("Nothing stands out: classes are balanced, separable and evenly covered.")

left, right = st.columns(2)
with left:
    st.plotly_chart(class_count_bar(report.counts.to_dict()), width="stretch", key="bal_counts")
    st.dataframe(pd.DataFrame({"samples": report.counts, "share": report.shares.round(3),
                               "cv accuracy": report.accuracy.reindex(report.counts.index).round(3)}))
with right:
    st.markdown("**Confusion (cross-validated)**")
    if report.confusion.notna().any().any():
        st.plotly_chart(confusion_heatmap(report.confusion), width="stretch", key="bal_confusion")
    else:
        st.caption("Not available: no classifier can be cross-validated on these labels (see the suggestions).")
st.subheader("Class mix per region")
st.plotly_chart(cluster_mix_bar(report.cluster_mix), width="stretch", key="bal_mix")
if not report.thin.empty:
    st.markdown("**Thinly covered (class, region) pairs**")
    st.dataframe(report.thin, hide_index=True)
