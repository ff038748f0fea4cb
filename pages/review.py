"""Review: one ranked queue of everything the finders flag; keep, remove, relabel, annotate, undo."""

import streamlit as st

from curation.analysis import analyze
from curation.decisions import (DECISIONS, accept_suggestions, apply_relabel, decided_samples, record_decision,
                                undo_decision)
from curation.images import thumbnail_path
from curation.finders import finder_specs
from curation.review import QueueFilter, review_queue
from pages.common import bump_data_version, errors_shown, open_page

PAGE_SIZE = 20
SPECS = {spec.name: spec for spec in finder_specs()}  # registry order: the queue's display order
FINDER_TITLES = {name: spec.title for name, spec in SPECS.items()}

def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


ACTION_WORDS = {"accept": "relabelled to the suggested label", "relabel": "relabelled", "annotate": "sent to annotation",
                "keep": "kept", "remove": "removed", "dismiss": "dismissed"}

dataset, field = open_page("Review queue")
label_field = st.session_state["label_field"]

if not any(dataset.has_sample_field(spec.flag_field) for spec in SPECS.values()):
    st.info("No findings yet: run the finders to fill the queue.")
    if st.button("Run all finders", type="primary"):
        with errors_shown():
            with st.spinner(f"Running the finders ({', '.join(FINDER_TITLES.values())})…"):
                report = analyze(dataset, field=field, label_field=label_field)
            st.session_state["review_notes"] = [f"{name} did not run: {reason}"
                                                for name, reason in {**report.errors, **report.skipped}.items()]
            bump_data_version()
            st.rerun()
    st.stop()
for note in st.session_state.pop("review_notes", []):  # from the run above, shown once
    st.warning(note)


def act(decision: str, ids: list[str], *, reason: str, new_label: str | None = None) -> None:
    """Record a decision, remember it for undo, and rerun (or say in one line why it failed)."""
    with errors_shown():
        if decision == "accept":
            count = accept_suggestions(dataset, ids, label_field=label_field, source="review")
        elif decision == "relabel":
            count = apply_relabel(dataset, ids, new_label, label_field=label_field, reason=reason, source="review")
        else:
            count = record_decision(dataset, ids, decision, reason=reason, source="review")
        st.session_state["review_last"] = {"ids": ids, "decision": decision, "count": count,
                                           "filters": st.session_state.get("rv_filter_signature")}
        bump_data_version()
        st.rerun()


def undo(ids: list[str], *, forget_last: bool = False) -> None:
    """Undo the decisions on ``ids`` and rerun (or say in one line why it failed)."""
    with errors_shown():
        undo_decision(dataset, ids)
        if forget_last:
            st.session_state["review_last"] = None
        bump_data_version()
        st.rerun()


# ---------------------------------------------------------------- filters
classes = sorted(c for c in dataset.distinct(f"{label_field}.label") if c) if label_field else []
tags = sorted(dataset.distinct("tags"))
selected_on_map = st.session_state["selected_ids"]
filters = st.columns([3, 3, 2, 2], vertical_alignment="bottom")
finders = filters[0].multiselect("Finders", list(SPECS), format_func=FINDER_TITLES.get, key="rv_finders",
                                 placeholder="all finders")
chosen_classes = filters[1].multiselect("Classes", classes, key="rv_classes", placeholder="all classes")
chosen_tags = filters[2].multiselect("Tags", tags, key="rv_tags", placeholder="any tags")
min_priority = filters[3].slider("Minimum priority", 0.0, 1.0, 0.0, 0.05, key="rv_min_priority")
toggles = st.columns(3)
only_map = toggles[0].checkbox(f"Only the map selection ({len(selected_on_map)})", key="rv_only_map",
                               disabled=not selected_on_map)
show_decided = toggles[1].checkbox("Show decided samples", key="rv_show_decided")

queue = review_queue(dataset, label_field, QueueFilter(
    finders=tuple(finders), classes=tuple(chosen_classes), tags=tuple(chosen_tags),
    ids=tuple(selected_on_map) if only_map and selected_on_map else (), min_priority=float(min_priority),
    include_decided=show_decided))
signature = (tuple(finders), tuple(chosen_classes), tuple(chosen_tags), min_priority, only_map, show_decided)
st.session_state["rv_filter_signature"] = signature
counts = queue["finders"].explode().value_counts() if len(queue) else {}
st.subheader(f"{plural(len(queue), 'sample')} to review")
if len(queue):
    st.caption(" · ".join(f"{FINDER_TITLES[name]} {int(counts[name])}" for name in SPECS if name in counts)
               + " · ranked by priority: the finders' scores combined (a label-next proposal counts half)")

last = st.session_state.get("review_last")
if last and last.get("filters") != signature:
    last = st.session_state["review_last"] = None  # the message belonged to another view of the queue
if last:
    note = st.columns([5, 1], vertical_alignment="center")
    note[0].success(f"{plural(last['count'], 'sample')} {ACTION_WORDS[last['decision']]}. Stored on the samples.")
    if note[1].button("Undo", key="rv_undo_last", width="stretch"):
        undo(last["ids"], forget_last=True)

if queue.empty:
    st.info("Nothing to review with these filters." + ("" if show_decided else " Decided samples are hidden."))
    st.stop()

# ---------------------------------------------------------------- bulk actions
with st.expander(f"Bulk actions on the {plural(len(queue), 'sample')} in this queue", icon=":material/done_all:"):
    table = queue[["label", "suggested_label", "priority", "finders", "reason", "decision"]].assign(
        finders=queue["finders"].map(", ".join))
    picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="multi-row", key="rv_table",
                          height=260, column_config={"priority": st.column_config.ProgressColumn(
                              "priority", min_value=0.0, max_value=1.0, format="%.2f")})
    rows = picked.selection.rows if picked and picked.selection else []
    target_ids = queue["id"].iloc[rows].tolist() if rows else queue["id"].tolist()
    st.caption(f"Applies to the {plural(len(rows), 'ticked row')}." if rows else
               f"No rows ticked: applies to all {plural(len(queue), 'sample')} in the queue.")
    bulk = st.columns([3, 2, 2], vertical_alignment="bottom")
    reason = bulk[0].text_input("Reason (stored with the decision)", key="rv_reason")
    decision = bulk[1].selectbox("Decision", [d for d in DECISIONS if d != "relabel"] + ["accept", "relabel"],
                                 format_func=lambda d: {"accept": "accept suggested label",
                                                        "annotate": "send to annotation"}.get(d, d), key="rv_decision")
    new_label = bulk[2].selectbox("New class", classes, key="rv_new_label", disabled=decision != "relabel") \
        if classes else None
    if st.button(f"Apply to {plural(len(target_ids), 'sample')}", type="primary", key="rv_apply"):
        act(decision, target_ids, reason=reason or f"bulk {decision} in review", new_label=new_label)

# ---------------------------------------------------------------- gallery
pages = max(1, -(-len(queue) // PAGE_SIZE))
page = st.columns([1, 5])[0].number_input(f"Page (of {pages})", 1, pages, 1, key="rv_page") if pages > 1 else 1
for row in queue.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE].itertuples(index=False):
    with st.container(border=True):
        cells = st.columns([1, 5, 2], vertical_alignment="center")
        thumb = thumbnail_path(row.filepath)
        if thumb:
            cells[0].image(str(thumb), width="stretch")
        else:
            cells[0].warning("image unreadable")
        badges = " ".join(f":orange-badge[{FINDER_TITLES[name]}]" for name in row.finders)
        suggestion = (f" → suggested **{row.suggested_label}**"
                      if isinstance(row.suggested_label, str) and row.suggested_label != row.label else "")
        cells[1].markdown(f"**{row.label or 'unlabelled'}**{suggestion} · priority **{row.priority:.2f}** {badges}"
                          + (f" · decided: **{row.decision}**" if isinstance(row.decision, str) else ""))
        cells[1].caption(row.reason)
        if isinstance(row.decision, str):
            if cells[2].button("Undo", key=f"rv_undo_{row.id}", width="stretch"):
                undo([row.id])
            continue
        # Fixed positions on every card, so a hand moving down the list never hits another action.
        buttons = cells[2].columns(2)
        mislabel = "mislabels" in row.finders and bool(suggestion)
        if buttons[0].button("Accept", key=f"rv_accept_{row.id}", type="primary" if mislabel else "secondary",
                             width="stretch", disabled=not suggestion,
                             help=f"relabel to {row.suggested_label}" if suggestion else "no other label is suggested"):
            act("accept", [row.id], reason="")
        if buttons[1].button("Keep", key=f"rv_keep_{row.id}", width="stretch"):
            act("keep", [row.id], reason=f"reviewed: {row.reason}")
        if buttons[0].button("Remove", key=f"rv_remove_{row.id}", width="stretch"):
            act("remove", [row.id], reason=row.reason)
        if buttons[1].button("Annotate", key=f"rv_annotate_{row.id}", width="stretch", help="send to annotation"):
            act("annotate", [row.id], reason=row.reason)
        if classes:
            with cells[2].popover("Relabel to…", width="stretch"):
                others = [c for c in classes if c != row.label]
                chosen = st.selectbox("Class", others, key=f"rv_class_{row.id}",
                                      index=others.index(row.suggested_label) if row.suggested_label in others else 0)
                if st.button(f"Relabel to {chosen}", key=f"rv_relabel_{row.id}", type="primary", width="stretch"):
                    act("relabel", [row.id], reason=f"relabelled to {chosen} in review", new_label=chosen)

# ---------------------------------------------------------------- recent decisions
recent = decided_samples(dataset, label_field, newest=10)
if recent:
    with st.expander(f"Recent decisions ({len(recent)})"):
        for record in recent:
            line = st.columns([5, 1], vertical_alignment="center")
            change = (f"{record.previous_label} → {record.label}" if record.decision == "relabel" else record.label)
            line[0].markdown(f"`{record.at}` **{record.decision}** {change} · {record.reason or ''} "
                             f"({record.source or 'unknown source'})")
            if line[1].button("Undo", key=f"rv_recent_undo_{record.id}", width="stretch"):
                undo([record.id])
