"""Duplicates: near-duplicate groups with a live threshold, keep/remove per image, leaks between splits."""

import streamlit as st

from curation.analysis import stored_threshold, calibrate_dataset
from curation.datasets import curation_info
from curation.decisions import decisions_for, record_decision
from curation.finders.base import FinderInputError
from curation.finders.duplicates import DEFAULT_THRESHOLD, DuplicateConfig, find_duplicates, group_members
from curation.finders.leakage import find_leaks, leak_pairs
from curation.images import thumbnail_path
from curation.plots import precision_recall_figure
from pages.common import bump_data_version, errors_shown, finder_context, open_page

dataset, field = open_page("Duplicates")
context = finder_context(dataset.name, field, st.session_state["label_field"], dataset.exists(field).count())

calibrated = stored_threshold(dataset, field)
controls = st.columns([3, 2], vertical_alignment="bottom")
threshold = controls[0].slider("Similarity threshold", 0.80, 1.00, float(calibrated or DEFAULT_THRESHOLD), 0.005,
                               format="%.3f", key=f"dup_threshold_{field}",
                               help="Pairs at or above this cosine similarity are near duplicates.")
if controls[1].button("Calibrate on this dataset", help="Embeds edited copies (flip, crop, JPEG, brightness) of 100 "
                      "of its images and picks the threshold that finds them at 95% precision"):
    with errors_shown():
        with st.spinner("Embedding edited copies of 100 images…"):
            calibration = calibrate_dataset(dataset, field=field)
        st.session_state.pop(f"dup_threshold_{field}", None)
        st.success(f"Calibrated threshold: {calibration.threshold:.3f} (precision {calibration.precision:.2f}, "
                   f"recall {calibration.recall:.2f})")
        st.rerun()

stored = curation_info(dataset).get("calibration", {}).get(field)
if stored:
    with st.expander(f"Calibration: threshold {stored['threshold']:.3f}, precision {stored['precision']:.2f}, "
                     f"recall {stored['recall']:.2f} on {stored['sample_size']} images"):
        st.plotly_chart(precision_recall_figure(stored["curve"], stored["threshold"]), width="stretch", key="pr_curve")
        st.caption("Recall per edit at the chosen threshold: "
                   + ", ".join(f"{name} {value:.0%}" for name, value in stored["recall_by_transform"].items()))
else:
    st.caption(f"Threshold not calibrated for this model yet; the default is {DEFAULT_THRESHOLD}.")

result = find_duplicates(context, DuplicateConfig(threshold=threshold))
members = group_members(result, context)
counts = st.columns(3)
counts[0].metric("Groups", f"{members['group'].nunique():,}")
counts[1].metric("Samples in groups", f"{len(members):,}")
counts[2].metric("Suggested for removal", f"{int(result.table['is_issue'].sum()):,}")

tab_groups, tab_leaks = st.tabs(["Near-duplicate groups", "Leaks between splits"])
with tab_groups:
    if members.empty:
        st.info("No near duplicates at this threshold.")
    else:
        group_ids = list(dict.fromkeys(members["group"]))
        page_size = 10
        pages = max(1, -(-len(group_ids) // page_size))
        page = st.columns([1, 5])[0].number_input(f"Page (of {pages})", 1, pages, 1, key="dup_page")
        shown = group_ids[(page - 1) * page_size: page * page_size]
        decided = decisions_for(dataset, list(members[members["group"].isin(shown)]["id"]))
        for group in shown:
            rows = members[members["group"] == group]
            with st.container(border=True):
                head = st.columns([4, 1, 1], vertical_alignment="center")
                head[0].markdown(f"**Group {group}** · {len(rows)} images")
                if head[1].button("Apply suggestion", key=f"apply_{group}", help="keep the suggested image, remove the rest"):
                    with errors_shown():
                        record_decision(dataset, list(rows[rows["keep"]]["id"]), "keep",
                                        reason=f"near-duplicate group {group}", source="duplicates")
                        record_decision(dataset, list(rows[~rows["keep"]]["id"]), "remove",
                                        reason=f"near duplicate of a kept image (group {group})", source="duplicates")
                        bump_data_version()
                        st.rerun()
                cells = st.columns(6)
                for position, row in enumerate(rows.head(6).itertuples(index=False)):
                    with cells[position]:
                        thumb = thumbnail_path(row.filepath)
                        if thumb:
                            st.image(str(thumb), width="stretch")
                        status = decided.get(row.id)
                        badge = "suggested keeper" if row.keep else f"similarity {row.similarity:.3f}"
                        st.caption(f"{row.label or ''} · {badge}" + (f" · **{status}**" if status else ""))
                        choice = st.segmented_control("decision", ["keep", "remove"], key=f"d_{row.id}",
                                                      default=status if status in ("keep", "remove") else None,
                                                      label_visibility="collapsed")
                        if choice and choice != status:
                            with errors_shown():
                                record_decision(dataset, [row.id], choice, reason=f"near-duplicate group {group}",
                                                source="duplicates")
                                bump_data_version()
                if len(rows) > 6:
                    st.caption(f"… and {len(rows) - 6} more in this group.")

with tab_leaks:
    try:
        leaks = find_leaks(context, DuplicateConfig(threshold=threshold))
    except FinderInputError as error:
        st.info(f"Leakage check unavailable: {error}.")
    else:
        st.caption(leaks.summary)
        for pair in leak_pairs(leaks, context).head(40).itertuples(index=False):
            with st.container(border=True):
                cells = st.columns([1, 1, 4], vertical_alignment="center")
                for cell, side in zip(cells[:2], "ab"):
                    thumb = thumbnail_path(getattr(pair, f"{side}_filepath"))
                    if thumb:
                        cell.image(str(thumb), width="stretch")
                    cell.caption(f"{getattr(pair, f'{side}_split')} · {getattr(pair, f'{side}_label') or ''}")
                cells[2].markdown(f"similarity **{pair.similarity:.3f}**")
