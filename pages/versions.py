"""Versions: the dataset's snapshots, what changed between two of them (or since one), restore and undo."""

import streamlit as st

from curation import datasets as ds
from curation.images import thumbnail_path
from curation.snapshots import CURRENT, create_snapshot, diff_snapshots, list_snapshots, restore_events, \
    restore_snapshot, undo_restore
from curation.version_plots import DIFF_COUNTS, GALLERIES, change_gallery, format_time, quality_changes, \
    snapshot_choice_label, snapshot_table, transition_figure
from pages.common import bump_data_version, errors_shown, markdown_text, open_page

GALLERY_LIMIT = 24
GALLERY_COLUMNS = 8
CURRENT_LABEL = "current state"

dataset, _ = open_page("Versions", needs_embeddings=False)


def code(text: str) -> str:
    """A name inside a code span (shown as typed there; only a backtick would end the span)."""
    return str(text).replace("`", "'")


def message(text: str) -> None:
    """A success line shown once, after the rerun that follows a change."""
    st.session_state["ve_message"] = text
    bump_data_version()
    st.rerun()


def restored_text(result, *, capital: bool = False) -> str:
    """The restore's summary without its command-line undo hint (this page has a button)."""
    text = result.summary().split(". Undo: ")[0]
    return text[:1].upper() + text[1:] if capital else text


# ---------------------------------------------------------------- create
if st.session_state.pop("ve_clear_form", False):  # set before the inputs are drawn, so the browser's empty too
    st.session_state["ve_name"] = ""
    st.session_state["ve_note"] = ""
with st.container(border=True):
    st.markdown("**Create snapshot** · records every sample's label, decision, splits and tags, and the quality "
                "figures of this moment")
    form = st.columns([2, 5, 2], vertical_alignment="bottom")
    name = form[0].text_input("Name", key="ve_name", placeholder="next vN",
                              help="letters, digits, '.', '_' or '-'; empty: the next v1, v2, …")
    note = form[1].text_input("Note", key="ve_note", placeholder="why this version matters")
    if form[2].button("Create snapshot", type="primary", width="stretch"):
        with errors_shown(), st.spinner("Recording the curation state…"):
            ref = create_snapshot(dataset, name.strip() or None, note=note.strip())
            st.session_state["ve_clear_form"] = True
            message(f"Created snapshot {ref.name}: {ref.samples:,} samples, "
                    f"{ref.quality.get('decisions_made', 0):,} decisions.")
if st.session_state.get("ve_message"):
    st.success(markdown_text(st.session_state.pop("ve_message")))

# ---------------------------------------------------------------- list
show_auto = st.checkbox("show automatic snapshots", key="ve_show_auto",
                        help="taken by themselves before every bulk change (decisions on several samples, a relabel "
                             "import, splits, tags on many samples, a restore)")
every = list_snapshots(dataset)
refs = every if show_auto else [ref for ref in every if ref.kind != "auto"]
hidden = len(every) - len(refs)
st.subheader(f"Snapshots ({len(refs):,})")
if not every:
    st.info(f"No snapshots of **{markdown_text(dataset.name)}** yet. Create one above to record where the curation "
            f"stands (or run `curation snapshot create --dataset {code(dataset.name)}`); one is also taken "
            "automatically before every bulk change.")
    st.stop()
if refs:
    st.dataframe(snapshot_table(refs), hide_index=True, width="stretch")
if hidden:
    st.caption(f"{hidden:,} automatic snapshot{'s' if hidden != 1 else ''} hidden (taken before bulk changes): tick "
               "**show automatic snapshots** to list and pick them.")
if not refs:
    st.info("No snapshot created by hand or by an export yet: create one above.")
    st.stop()

# ---------------------------------------------------------------- diff
by_name = {ref.name: ref for ref in refs}
names = list(by_name)
st.subheader("What changed")
pickers = st.columns([3, 3, 2], vertical_alignment="bottom")
a = pickers[0].selectbox("From (A)", names, index=len(names) - 1, key="ve_a",
                         format_func=lambda option: snapshot_choice_label(by_name[option]))
b_options = [CURRENT, *names]
b = pickers[1].selectbox("To (B)", b_options, key="ve_b",
                         format_func=lambda option: CURRENT_LABEL if option == CURRENT
                         else snapshot_choice_label(by_name[option]))


@st.cache_data(show_spinner="Comparing the versions…", max_entries=8, ttl=120)
def difference(dataset_name: str, created_at: str, name_a: str, name_b: str, data_version: int):
    """The diff (snapshots never change; the current state is read again after this session
    writes, and at least every two minutes)."""
    return diff_snapshots(ds.load_dataset(dataset_name), name_a, None if name_b == CURRENT else name_b)


diff = None
with errors_shown():
    diff = difference(dataset.name, str(dataset.created_at), a, b, st.session_state["data_version"])
if diff is not None:
    label_b = CURRENT_LABEL if diff.b == CURRENT else diff.b
    pickers[2].caption(f"{markdown_text(diff.a)} → {markdown_text(label_b)}")
    counts = diff.counts()
    cells = st.columns(len(DIFF_COUNTS))
    for cell, (key, label) in zip(cells, DIFF_COUNTS):
        cell.metric(label, f"{counts[key]:,}")
    changes = quality_changes(diff.quality_a, diff.quality_b)
    st.caption("Quality figures of B, with the change from A:")
    cells = st.columns(len(changes))
    for cell, change in zip(cells, changes):
        cell.metric(change["label"], change["value"], change["delta"], delta_color=change["delta_color"])
    if diff.is_empty():
        st.success(f"No differences: {markdown_text(diff.a)} and {markdown_text(label_b)} hold the same labels, "
                   "decisions, splits, tags and files.")
    matrix = diff.transition_matrix()
    if not matrix.empty:
        st.markdown("**Relabelled: from → to**")
        st.plotly_chart(transition_figure(matrix), width="stretch")
        st.caption("Rows: the label in A; columns: the label in B; cells: how many samples moved.")
    for kind, title in GALLERIES:
        total = counts[kind]
        if not total:
            continue
        frame = getattr(diff, kind)
        ids = list(frame["id"].head(GALLERY_LIMIT))
        filepaths = {} if "filepath" in frame else dict(zip(*dataset.select(ids).values(["id", "filepath"])))
        rows, total = change_gallery(diff, kind, filepaths, limit=GALLERY_LIMIT)
        st.markdown(f"**{title} ({total:,})**")
        grid = st.columns(GALLERY_COLUMNS)
        for position, row in enumerate(rows.itertuples(index=False)):
            with grid[position % GALLERY_COLUMNS]:
                thumb = thumbnail_path(row.filepath) if row.filepath else None
                if thumb is None:
                    st.caption("(image not available)")
                else:
                    st.image(str(thumb), width="stretch")
                st.caption(markdown_text(row.caption))
        if total > len(rows):
            st.caption(f"and {total - len(rows):,} more (all of them: `curation snapshot diff --dataset "
                       f"{code(dataset.name)} {code(diff.a)}{'' if diff.b == CURRENT else ' ' + code(diff.b)} --json`)")
    if counts["added"] or counts["removed"] or counts["files_changed"]:
        st.caption(f"{counts['added']:,} samples added, {counts['removed']:,} removed from the dataset and "
                   f"{counts['files_changed']:,} files changed on disk between A and B.")

# ---------------------------------------------------------------- restore
st.subheader("Restore")
st.caption("Brings back a snapshot's labels, decisions, splits and tags as one new change: the state before is "
           "saved as an automatic snapshot first, every restored sample gets a `restore` entry in its history, "
           "and nothing is deleted.")
if st.session_state.pop("ve_ask_again", False):  # each restore is confirmed on its own (set before the box is drawn)
    st.session_state["ve_confirm"] = False
restore_cells = st.columns([3, 4, 2], vertical_alignment="bottom")
target = restore_cells[0].selectbox("Snapshot to restore", names, index=len(names) - 1, key="ve_restore",
                                    format_func=lambda option: snapshot_choice_label(by_name[option]))
confirmed = restore_cells[1].checkbox(f"Yes, replace the current labels, decisions, splits and tags with "
                                      f"{markdown_text(target)}'s", key="ve_confirm")

if restore_cells[2].button("Restore", type="primary", disabled=not confirmed, width="stretch"):
    with errors_shown(), st.spinner(f"Restoring {target}…"):
        result = restore_snapshot(dataset, target)
        st.session_state["ve_ask_again"] = True
        message(f"{restored_text(result, capital=True)}. Undo last restore brings back {result.before}, the state before.")

restores = restore_events(dataset)
undo_cells = st.columns([2, 7], vertical_alignment="center")
if undo_cells[0].button("Undo last restore", disabled=not restores, width="stretch"):
    with errors_shown(), st.spinner("Undoing the last restore…"):
        result = undo_restore(dataset)
        message(f"Undid the last restore: {restored_text(result)}. Undo last restore again redoes it.")
if restores:
    last = restores[-1]
    undo_cells[1].caption(f"Last restore: {markdown_text(last.get('snapshot'))} at {format_time(last.get('at'))} "
                          f"({last.get('restored', 0):,} samples changed); undoing restores "
                          f"{markdown_text(last.get('before'))}, the state just before it. Undoing twice redoes it.")
else:
    undo_cells[1].caption("No restore yet.")
