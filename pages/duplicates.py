"""Duplicates: near-duplicate groups (verified pairs, live threshold), keep/remove per image, leaks between splits."""

import streamlit as st

from curation.analysis import attach_stored_verifier, calibrate_dataset, stored_threshold
from curation.decisions import decisions_for, record_decision
from curation.finders.base import FinderInputError
from curation.finders.duplicates import DEFAULT_THRESHOLD, DuplicateConfig, find_duplicates, group_members
from curation.finders.leakage import find_leaks, leak_pairs
from curation.images import thumbnail_path
from curation.plots import precision_recall_figure
from pages.common import bump_data_version, errors_shown, finder_context, open_page

dataset, field = open_page("Duplicates")
context = finder_context(dataset.name, field, st.session_state["label_field"], dataset.exists(field).count())
verified = attach_stored_verifier(dataset, context)

controls = st.columns([3, 2], vertical_alignment="bottom")
if verified:
    verifier = context.duplicate_verifier
    threshold = controls[0].slider(
        "Verified probability threshold", 0.01, 1.00, float(min(max(verifier["threshold"], 0.01), 1.0)), 0.01,
        format="%.2f", key=f"dup_probability_{field}",
        help="Candidate pairs (each image's nearest neighbours) scored by a verifier calibrated on this dataset's "
             "own edited images: embedding similarity plus low-resolution pixel and hash similarity. Pairs at or "
             "above this probability are near duplicates.")
    config = DuplicateConfig(method="verified", probability_threshold=threshold)
else:
    threshold = controls[0].slider("Similarity threshold", 0.80, 1.00, float(stored_threshold(dataset, field) or DEFAULT_THRESHOLD),
                                   0.005, format="%.3f", key=f"dup_threshold_{field}",
                                   help="Pairs at or above this cosine similarity are near duplicates.")
    config = DuplicateConfig(method="cosine", threshold=threshold)
if controls[1].button("Calibrate on this dataset", help="Embeds edited copies (crops, shifts, flips, colour, JPEG, noise, "
                      "blur) of up to 200 of its images, compares them with each image's nearest neighbours, and fits "
                      "the verifier and its threshold (about a minute on a CPU)"):
    with errors_shown():
        with st.spinner("Embedding edited copies of the dataset's images…"):
            record = calibrate_dataset(dataset, field=field)
        st.session_state.pop(f"dup_probability_{field}", None)
        st.success(f"Calibrated: verified probability >= {record['threshold']:.2f} (expected precision "
                   f"{record['precision']:.2f}, recall {record['recall']:.2f} of edited copies)")
        st.rerun()

if verified:
    with st.expander(f"Calibration: probability >= {verifier['threshold']:.2f}, expected precision "
                     f"{verifier['precision']:.2f}, recall {verifier['recall']:.2f} of edited copies of "
                     f"{verifier['sample_size']} images"):
        st.plotly_chart(precision_recall_figure(verifier["curve"], verifier["threshold"],
                                                x_title="verified probability threshold"),
                        width="stretch", key="pr_curve")
        st.caption(f"Precision is the one expected on this dataset, with {verifier['duplicate_rate']:.2g} duplicate "
                   "pairs per image (estimated from its own candidate pairs); recall is measured on the edited copies, "
                   "which are easier than real re-shoots. "
                   "Recall per edit at the chosen threshold: "
                   + ", ".join(f"{name} {value:.0%}" for name, value in verifier["recall_by_edit"].items()))
else:
    st.caption(f"Near duplicates by cosine similarity only: the verifier is {context.duplicate_verifier_note}.")

result = find_duplicates(context, config)
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
        leaks = find_leaks(context, config)
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
