"""Mislabels: a ranked gallery of suspected label errors with the reason, and actions."""

import streamlit as st

from curation.analysis import analysis_record, analyze
from curation.decisions import apply_relabel, record_decision
from curation.images import thumbnail_path
from curation.review import mislabel_queue, sample_previews, unchecked_mislabel_reasons
from pages.common import USER_ERRORS, bump_data_version, errors_shown, open_page, show_error

dataset, field = open_page("Suspected mislabels")
label_field = st.session_state["label_field"]
if not label_field:
    st.info("This dataset has no classification labels, so there is nothing to check.")
    st.stop()
if not dataset.has_sample_field("mislabel_score"):
    # Why the last check did not run (one class, too few samples) is kept with the analysis,
    # so it survives the rerun and later visits instead of the page silently asking again.
    last = analysis_record(dataset)
    not_run = last.get("errors", {}).get("mislabels") or last.get("skipped", {}).get("mislabels")
    if not_run:
        st.warning(f"Labels could not be checked: {not_run}")
    else:
        st.info("Labels have not been checked yet.")
    if st.button("Check labels now", type="primary"):
        try:
            with st.spinner("Cross-validating a classifier on the embeddings and checking neighbours…"):
                analyze(dataset, ["mislabels"], field=field, label_field=label_field)
        except USER_ERRORS as error:  # e.g. no embedded samples: say so, one line
            show_error(error)
            st.stop()
        bump_data_version()
        st.rerun()
    st.stop()

queue = mislabel_queue(dataset, label_field)
filters = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
given = filters[0].selectbox("Given label", ["(any)"] + sorted(queue["label"].dropna().unique()), key="ml_given")
suggested = filters[1].selectbox("Suggested label", ["(any)"] + sorted(queue["suggested_label"].dropna().unique()),
                                 key="ml_suggested")
min_score = filters[2].slider("Minimum score", 0.0, 1.0, 0.5, 0.05, key="ml_min_score")
show_decided = filters[3].checkbox("Show decided", key="ml_show_decided")
view = queue[queue["mislabel_score"] >= min_score]
if given != "(any)":
    view = view[view["label"] == given]
if suggested != "(any)":
    view = view[view["suggested_label"] == suggested]
if not show_decided:
    view = view[view["decision"].isna()]
st.caption(f"{len(view):,} samples match (of {int((queue['mislabel_score'] >= 0.5).sum()):,} scoring 0.5 or more).")
# Samples the finder could not score (a class with a single sample, a NaN or zero vector) have no
# score and are not in the queue: say how many and why, so they are not silently missing.
unchecked = unchecked_mislabel_reasons(dataset)
if unchecked:
    st.caption(f"{sum(unchecked.values()):,} labelled samples could not be checked: "
               + "; ".join(f"{why} ({count:,})" for why, count in sorted(unchecked.items())) + ".")

for row in view.head(30).itertuples(index=False):
    with st.container(border=True):
        cells = st.columns([1, 4, 2], vertical_alignment="center")
        thumb = thumbnail_path(row.filepath)
        if thumb:
            cells[0].image(str(thumb), width="stretch")
        cells[1].markdown(f"given **{row.label}** → suggested **{row.suggested_label}** "
                          f"({row.suggested_confidence:.0%}) · score **{row.mislabel_score:.2f}**"
                          + (f" · decided: {row.decision}" if isinstance(row.decision, str) else ""))
        cells[1].caption(row.mislabel_reason or "")
        neighbours = sample_previews(dataset, list(row.mislabel_disagreeing_ids or [])[:4], label_field)
        if len(neighbours):
            previews = cells[1].columns(6)
            for position, neighbour in enumerate(neighbours.itertuples(index=False)):
                thumb = thumbnail_path(neighbour.filepath)
                if thumb:
                    previews[position].image(str(thumb), caption=f"neighbour: {neighbour.label}", width="stretch")
        actions = cells[2]
        if actions.button(f"Accept '{row.suggested_label}'", key=f"accept_{row.id}", type="primary", width="stretch"):
            with errors_shown():
                apply_relabel(dataset, [row.id], row.suggested_label, label_field=label_field,
                              reason=f"accepted suggestion ({row.mislabel_reason})", source="mislabels")
                bump_data_version()
                st.rerun()
        if actions.button("Send to relabel", key=f"annotate_{row.id}", width="stretch"):
            with errors_shown():
                record_decision(dataset, [row.id], "annotate", reason=row.mislabel_reason or "", source="mislabels")
                dataset.select([row.id]).tag_samples("relabel")
                bump_data_version()
                st.rerun()
        if actions.button("Dismiss", key=f"dismiss_{row.id}", width="stretch"):
            with errors_shown():
                record_decision(dataset, [row.id], "dismiss", reason="label is correct", source="mislabels")
                bump_data_version()
                st.rerun()
