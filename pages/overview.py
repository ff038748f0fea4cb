"""Overview: size, classes, embedding status and tags of the current dataset."""

import pandas as pd
import streamlit as st

from curation import datasets as ds
from curation.embeddings import embedding_failures
from curation.plots import class_count_bar
from curation.review import curation_status
from pages.common import open_page

dataset, _ = open_page("Overview", needs_embeddings=False)
summary = ds.summarize(dataset, st.session_state["label_field"])

embedded = summary.embeddings[0] if summary.embeddings else None
columns = st.columns(4)
columns[0].metric("Samples", f"{summary.sample_count:,}")
columns[1].metric("Classes", len([c for c in summary.class_counts if c is not None]) if summary.label_field else "—")
columns[2].metric("Embedded", f"{embedded.embedded:,} / {embedded.total:,}" if embedded else "not yet")
columns[3].metric("Tagged samples", f"{sum(summary.tags.values()):,}" if summary.tags else "0")

st.subheader("Curation")
status = curation_status(dataset)
if not status.analysed_at:
    st.caption("The finders have not run yet: open **Review** (or run `curation analyze "
               f"--dataset {summary.name}`) to find duplicates, leaks, suspected mislabels and outliers.")
else:
    cells = st.columns(4)
    cells[0].metric("To review", f"{status.to_review:,}", help="flagged by a finder and not decided yet")
    cells[1].metric("Removed", f"{status.decisions.get('remove', 0):,}")
    cells[2].metric("Relabelled", f"{status.decisions.get('relabel', 0):,}")
    cells[3].metric("Sent to annotation", f"{status.decisions.get('annotate', 0):,}")
    flagged = " · ".join(f"{name.replace('_', ' ')} {count:,}" for name, count in status.flagged.items())
    st.caption(f"Findings of {status.analysed_at}: {flagged or 'nothing flagged'}.")
    for field, counts in status.splits.items():
        st.caption(f"Split saved in `{field}`: " + ", ".join(f"{name} {count:,}" for name, count in counts.items()))
    links = st.columns(4)
    links[0].page_link("pages/review.py", label="Review the queue", icon=":material/rule:")
    links[1].page_link("pages/export.py", label="Split and export", icon=":material/download:")

st.subheader("Embeddings")
if not summary.embeddings:
    st.warning("This dataset has no embeddings yet. Compute them on the **Data** page "
               f"or run `curation embed --dataset {summary.name}`.")
else:
    for status in summary.embeddings:
        line = f"**{status.model}** in field `{status.field}`: {status.embedded:,} of {status.total:,} samples"
        if status.failed:
            line += f", {status.failed:,} images could not be read"
        st.markdown(line + (f" (updated {status.updated_at})" if status.updated_at else ""))
        if status.fallback_reason:
            st.info(f"Requested {status.requested_model}: {status.fallback_reason}")
        failures = embedding_failures(dataset, status.field)
        if failures:
            with st.expander(f"{len(failures)} images skipped"):
                st.dataframe(pd.DataFrame(failures, columns=["filepath", "reason"]), hide_index=True)

st.subheader("Classes")
if not summary.label_field:
    st.caption("No classification label field: the dataset is unlabelled.")
elif not summary.class_counts:
    st.caption(f"No labels in `{summary.label_field}`.")
else:
    st.plotly_chart(class_count_bar(summary.class_counts, title=f"Samples per class ({summary.label_field})"),
                    width="stretch", key="class_counts")
    table = pd.DataFrame({"class": [str(c) if c is not None else "(unlabelled)" for c in summary.class_counts],
                          "samples": list(summary.class_counts.values())})
    with st.expander("Class counts as a table"):
        st.dataframe(table, hide_index=True)

st.subheader("Tags")
if summary.tags:
    st.dataframe(pd.DataFrame({"tag": list(summary.tags), "samples": list(summary.tags.values())}), hide_index=True)
else:
    st.caption("No tags yet: select samples on the **Map** and tag them.")
