"""Objects: the boxes of a detection dataset. The object map (UMAP of the box embeddings;
lasso to tag boxes and narrow the queue) and the object review queue: fix a box's class,
remove a box, add a box the model found and nobody drew, send the image to annotation; undo."""

import shlex

import pandas as pd
import streamlit as st

from curation import datasets as ds
from curation.decisions import decisions_for, record_decision, undo_decision
from curation.models import MODEL_REGISTRY
from curation.object_decisions import (accept_missing, accept_object_suggestions, keep_objects, relabel_objects,
                                       remove_objects, undo_objects)
from curation.object_images import (annotation_reason, crop_thumbnail_path, detections_fields, display_label,
                                    image_with_boxes, object_analysis_record, object_projection_frame, object_queue,
                                    object_review_table, tag_objects, untag_objects, with_object_attributes)
from curation.object_plots import COLOR_OPTIONS, object_scatter
from curation.objects import ISSUES, analyze_objects, write_object_findings
from curation.patches import compute_patch_embeddings, patch_record
from curation.projection import ProjectionConfig
from pages.common import bump_data_version, errors_shown, markdown_text, open_page

PAGE_SIZE = 12
SELECTION_SHOWN = 18
AUTOMATIC_MODEL = "(as before, else the image embeddings' model)"
ISSUE_WORDS = {"mislabel": "wrong class?", "duplicate": "drawn twice", "missing": "missing box",
               "spurious": "nothing there?", "localization": "badly placed", "degenerate": "broken box"}
ACTIONS = {"accept": "accept the suggested class", "relabel": "relabel to a class", "remove": "remove the box",
           "add": "add the missing box", "keep": "keep (dismiss the flag)", "annotate": "send the image to annotation"}
for key, value in {"obj_selected": [], "obj_last": None}.items():  # this page's session keys, in one place
    st.session_state.setdefault(key, value)


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 'es' if word.endswith('x') else 's'}"


def shown(label) -> str:
    """A class name from the data, for markdown: drawable and without markup."""
    return markdown_text(display_label(label))


@st.cache_data(show_spinner="Computing the object map (UMAP; the first map in a new server takes ~40 s to compile)…",
               max_entries=8)
def object_coordinates(name: str, field: str, config: ProjectionConfig, embedded_at: str):
    return object_projection_frame(ds.load_dataset(name), field, config)


@st.cache_data(show_spinner="Reading the boxes…", max_entries=8)
def review_table(name: str, field: str, data_version: int, changed_at, analysed_at: str | None):
    """Read again after this session writes, and after anyone else does (``changed_at``: the
    samples' latest ``last_modified_at``), so two people never review from a stale queue."""
    return object_review_table(ds.load_dataset(name), field)


dataset, _ = open_page("Objects", needs_embeddings=False)
fields = detections_fields(dataset)
if not fields:
    st.info(f"**{markdown_text(dataset.name)}** has no Detections field (boxes), so there are no objects to show. "
            "Import a detection dataset (COCO, YOLO, CVAT, a FiftyOne dataset) on the **Data** page or with "
            "`curation import SOURCE --name NAME --format coco`.")
    st.stop()

# ---------------------------------------------------------------- field, embeddings, findings
picks = st.columns([2, 2, 3], vertical_alignment="bottom")
field = picks[0].selectbox("Boxes (Detections field)", fields, key="obj_field")
analysis = object_analysis_record(dataset, field)
embedding = patch_record(dataset, field)
others = [name for name in fields if name != field]
recorded = ((analysis or {}).get("predictions") or {}).get("predictions_field")
predictions = picks[1].selectbox("Model predictions (optional)", [None, *others], key="obj_predictions",
                                 index=([None, *others].index(recorded) if recorded in others else 0),
                                 format_func=lambda name: "none" if name is None else name,
                                 help="a model's detections with confidences: finds missing, spurious and badly "
                                      "placed boxes")
command_embed = f"curation embed --dataset {shlex.quote(dataset.name)} --patches {shlex.quote(field)}"
command_analyze = (f"curation analyze --dataset {shlex.quote(dataset.name)} --patches {shlex.quote(field)}"
                   + (f" --predictions {shlex.quote(predictions)}" if predictions else ""))


def embed_boxes(model: str) -> None:
    bar = st.progress(0.0, text="Loading the model…")
    with errors_shown():
        run = compute_patch_embeddings(
            dataset, field, model=None if model == AUTOMATIC_MODEL else model,
            progress=lambda done, total: bar.progress(done / max(total, 1), text=f"Embedded {done:,} of {total:,} boxes"))
        st.session_state["obj_notes"] = [
            ("success", f"Embedded {run.embedded:,} boxes with **{run.model}** ({run.already_done:,} already done, "
                        f"{len(run.skipped)} skipped, {run.failed} on unreadable images).")
        ] + ([("info", run.fallback_reason)] if run.fallback_reason else [])
        bump_data_version()
        st.rerun()
    bar.empty()


def find_issues() -> None:
    with errors_shown():
        with st.spinner(f"Finding object issues in {field}…"):
            result = analyze_objects(dataset, field, predictions)
            write_object_findings(dataset, field, result)
        notes = [("success", f"Object findings: {result.summary()}")]
        skipped = (result.info.get("mislabels") or {}).get("skipped")
        if skipped:
            notes.append(("warning", f"Wrong classes were not checked: {skipped}"))
        st.session_state["obj_notes"] = notes
        bump_data_version()
        st.rerun()


for kind, note in st.session_state.pop("obj_notes", []):  # from a run above, shown once
    getattr(st, kind)(note)

if not embedding:
    st.warning(f"The boxes of `{field}` have no embeddings yet, so there is no object map and no check for wrong "
               f"classes. Run `{command_embed}`, or embed them here.")
if not analysis:
    st.info(f"No object findings for `{field}` yet: run `{command_analyze}`, or find them here"
            + (" (embed the boxes first to check their classes too)." if not embedding else "."))
with st.expander("Embed the boxes and find object issues", expanded=not (embedding and analysis),
                 icon=":material/play_circle:"):
    if embedding:
        st.caption(f"Boxes embedded with **{markdown_text(embedding.get('model'))}** "
                   f"(updated {embedding.get('updated_at', '?')}); embedding again only does new or changed boxes.")
    if analysis:
        st.caption(f"Last analysed {analysis.get('updated_at', '?')}: {markdown_text(analysis.get('summary', ''))}")
    run = st.columns([3, 2, 2], vertical_alignment="bottom")
    models = [AUTOMATIC_MODEL, *sorted(MODEL_REGISTRY)]
    model = run[0].selectbox("Model for the boxes", models, key="obj_embed_model")
    if run[1].button("Embed the boxes", key="obj_embed", width="stretch", type="secondary" if embedding else "primary"):
        embed_boxes(model)
    if run[2].button("Find object issues", key="obj_analyze", width="stretch",
                     type="primary" if embedding and not analysis else "secondary"):
        find_issues()

embedded_at = (embedding or {}).get("updated_at")
analysed_at = (analysis or {}).get("updated_at")
table = review_table(dataset.name, field, st.session_state["data_version"], dataset.max("last_modified_at"),
                     analysed_at)
if table.empty:
    st.info(f"`{field}` holds no boxes yet.")
    st.stop()
known_ids = set(table["object_id"].dropna())
st.session_state["obj_selected"] = [i for i in st.session_state["obj_selected"] if i in known_ids]
classes = sorted({str(label) for label in table["label"].dropna()})

# ---------------------------------------------------------------- object map
if embedding:
    st.subheader("Object map")
    controls = st.columns([2, 1, 1])
    color_by = controls[0].selectbox("Colour by", COLOR_OPTIONS, key="obj_color_by")
    n_neighbors = controls[1].number_input("UMAP neighbours", 5, 100, 15, key="obj_n_neighbors")
    min_dist = controls[2].number_input("UMAP min distance", 0.0, 1.0, 0.1, step=0.05, key="obj_min_dist")
    coordinates = object_coordinates(dataset.name, field, ProjectionConfig(n_neighbors=int(n_neighbors),
                                                                          min_dist=float(min_dist)), embedded_at)
    frame = with_object_attributes(coordinates, table)
    if frame.empty:
        st.info(f"No box has a current embedding (boxes edited since, or a new model): run `{command_embed}`.")
    else:
        st.caption(f"{plural(len(frame), 'box')}, placed by how alike they look. Drag to lasso-select (box select "
                   "and click are in the chart's toolbar); tag the selection or review only it below.")
        event = st.plotly_chart(object_scatter(frame, color_by), key="obj_map_chart", on_select="rerun",
                                selection_mode=("points", "box", "lasso"), width="stretch")
        points = event.selection.points if event and event.selection else []
        if points:
            st.session_state["obj_selected"] = list(dict.fromkeys(point["customdata"] for point in points))
    selected = st.session_state["obj_selected"]
    if selected:
        st.markdown(f"**Selection: {plural(len(selected), 'box')}**")
        tagging = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
        tag = tagging[0].text_input("Tag (on the boxes, as FiftyOne label tags)", value="check", key="obj_tag_name")
        add = tagging[1].button("Tag boxes", type="primary", key="obj_tag_add", width="stretch")
        remove = tagging[2].button("Remove tag", key="obj_tag_remove", width="stretch")
        if tagging[3].button("Clear selection", key="obj_clear", width="stretch"):
            st.session_state["obj_selected"] = []
            st.session_state.pop("obj_map_chart", None)  # forget the chart's own lasso too
            st.rerun()
        if add or remove:
            with errors_shown():
                count = (tag_objects if add else untag_objects)(dataset, field, selected, tag)
                bump_data_version()
                st.success(f"{'Tagged' if add else 'Untagged'} {plural(count, 'box')} with '{markdown_text(tag.strip())}' "
                           "(saved on the boxes; the FiftyOne App shows label tags).")
        boxes = table[table["object_id"].isin(selected)].set_index("object_id").reindex(selected[:SELECTION_SHOWN])
        grid = st.columns(6)
        for position, (object_id, row) in enumerate(boxes.iterrows()):
            crop = crop_thumbnail_path(row["filepath"], row["bounding_box"])
            with grid[position % 6]:
                if crop:
                    st.image(str(crop), caption=shown(row["label"]), width="stretch")
                else:
                    st.caption(f"{shown(row['label'])}: no crop (broken box or unreadable image)")
        if len(selected) > SELECTION_SHOWN:
            st.caption(f"Showing {SELECTION_SHOWN} of {len(selected)}.")

# ---------------------------------------------------------------- review queue
st.subheader("Review queue")
if not analysis:
    st.caption("The queue fills once the object issues are found (above).")
    st.stop()


def remember(kind: str, ids: list[str], text: str, *, also: tuple[str, list[str]] | None = None) -> None:
    """Keep the last action for its Undo button (``also``: a second kind of ids it touched), and rerun."""
    st.session_state["obj_last"] = {"kind": kind, "ids": ids, "text": text, "field": field, "also": also}
    bump_data_version()
    st.rerun()


def act(action: str, rows, *, new_label: str | None = None, reason: str = "") -> None:
    """Apply ``action`` to the queue rows ``rows`` (or say in one line why it failed)."""
    with errors_shown():
        boxes = [i for i, decided in zip(rows["object_id"], rows["decision"]) if isinstance(i, str) and decided is None]
        if action == "accept":
            count = accept_object_suggestions(dataset, field, boxes, source="objects")
            remember("objects", boxes, f"{plural(count, 'box')} relabelled to the suggested class.")
        elif action == "relabel":
            count = relabel_objects(dataset, field, boxes, new_label, reason=reason or f"relabelled to {new_label}",
                                    source="objects")
            remember("objects", boxes, f"{plural(count, 'box')} relabelled to {shown(new_label)}.")
        elif action == "remove":
            count = remove_objects(dataset, field, boxes, reason=reason or "removed in object review", source="objects")
            remember("objects", boxes, f"{plural(count, 'box')} removed (kept for undo; exports leave them out).")
        elif action == "add":
            missing = [i for i, added in zip(rows["missing_id"], rows["added_id"]) if isinstance(i, str) and added is None]
            added = accept_missing(dataset, field, missing, source="objects")
            remember("objects", added, f"{plural(len(added), 'missing box')} added to {markdown_text(field)}.")
        elif action == "keep":
            reason = reason or "reviewed in object review: right as it is"
            missing = [i for i, decided in zip(rows["missing_id"], rows["decision"]) if isinstance(i, str) and decided is None]
            count = (keep_objects(dataset, field, boxes, reason=reason, source="objects") if boxes else 0) + \
                (keep_objects(dataset, f"{field}_missing", missing, reason=reason, source="objects") if missing else 0)
            remember("objects", boxes, f"{plural(count, 'box')} kept: off the queue.",
                     also=("missing", missing) if missing else None)
        elif action == "annotate":
            images = list(dict.fromkeys(rows["sample_id"]))
            for sample_id in images:
                record_decision(dataset, [sample_id], "annotate", source="objects",
                                reason=reason or annotation_reason(field, rows[rows["sample_id"] == sample_id]))
            remember("samples", images, f"{plural(len(images), 'image')} sent to annotation, with the boxes to fix "
                                        "in the reason.")


def undo(kind: str, ids: list[str]) -> None:
    """Undo the latest decision on boxes of the field (``objects``), on boxes of
    ``<field>_missing`` (``missing``) or on images (``samples``), and rerun."""
    with errors_shown():
        if kind == "samples":
            undo_decision(dataset, ids)
        else:
            undo_objects(dataset, field if kind == "objects" else f"{field}_missing", ids)
        st.session_state["obj_last"] = None
        bump_data_version()
        st.rerun()


present = [issue for issue in ISSUES if (table["issue"] == issue).any()]
selected = st.session_state["obj_selected"]
filters = st.columns([3, 3, 2], vertical_alignment="bottom")
chosen_issues = filters[0].multiselect("Issues", present, key="obj_issues", placeholder="all issues",
                                       format_func=lambda issue: f"{issue} ({ISSUE_WORDS.get(issue, '')})")
chosen_classes = filters[1].multiselect("Classes", classes, key="obj_classes", placeholder="all classes",
                                        format_func=display_label)
min_score = filters[2].slider("Minimum score", 0.0, 1.0, 0.0, 0.05, key="obj_min_score")
toggles = st.columns(3)
only_selection = toggles[0].checkbox(f"Only the map selection ({len(selected)})", key="obj_only_selection",
                                     disabled=not selected)
show_decided = toggles[1].checkbox("Show decided boxes", key="obj_show_decided")
queue = object_queue(table, issues=chosen_issues, classes=chosen_classes, min_score=min_score,
                     object_ids=selected if only_selection and selected else (), include_decided=show_decided)
image_decisions = decisions_for(dataset, list(dict.fromkeys(queue["sample_id"]))) if len(queue) else {}

st.markdown(f"**{plural(len(queue), 'box')} to review**"
            + (" · " + " · ".join(f"{issue} {count}" for issue, count in queue["issue"].value_counts().items())
               if len(queue) else "") + " · ranked by the score of each box's issue")
last = st.session_state["obj_last"]
if last and last.get("field") == field:
    note = st.columns([5, 1], vertical_alignment="center")
    note[0].success(last["text"])
    if note[1].button("Undo", key="obj_undo_last", width="stretch"):
        if last.get("also"):
            with errors_shown():
                undo_objects(dataset, f"{field}_missing", last["also"][1])
        undo(last["kind"], last["ids"])
if queue.empty:
    st.info("Nothing to review with these filters." + ("" if show_decided else " Decided boxes are hidden."))
    st.stop()

with st.expander(f"Bulk actions on the {plural(len(queue), 'box')} in this queue", icon=":material/done_all:"):
    overview = queue[["label", "suggested_label", "issue", "issue_score", "decision"]].assign(
        label=queue["label"].map(display_label),
        suggested_label=queue["suggested_label"].map(lambda s: display_label(s) if isinstance(s, str) else ""))
    picked = st.dataframe(overview, hide_index=True, on_select="rerun", selection_mode="multi-row", key="obj_table",
                          height=260, column_config={"issue_score": st.column_config.ProgressColumn(
                              "score", min_value=0.0, max_value=1.0, format="%.2f")})
    ticked = picked.selection.rows if picked and picked.selection else []
    targets = queue.iloc[ticked] if ticked else queue
    st.caption(f"Applies to the {plural(len(ticked), 'ticked row')}." if ticked else
               f"No rows ticked: applies to all {plural(len(queue), 'box')} in the queue.")
    bulk = st.columns([3, 2, 2], vertical_alignment="bottom")
    reason = bulk[0].text_input("Reason (stored with the decision)", key="obj_reason")
    action = bulk[1].selectbox("Action", list(ACTIONS), format_func=ACTIONS.get, key="obj_action")
    new_label = bulk[2].selectbox("New class", classes, key="obj_new_label", format_func=display_label,
                                  disabled=action != "relabel")
    if st.button(f"Apply to {plural(len(targets), 'row')}", type="primary", key="obj_apply"):
        act(action, targets, new_label=new_label, reason=reason)

pages = max(1, -(-len(queue) // PAGE_SIZE))
page = st.columns([1, 5])[0].number_input(f"Page (of {pages})", 1, pages, 1, key="obj_page") if pages > 1 else 1
for position in range((page - 1) * PAGE_SIZE, min(len(queue), page * PAGE_SIZE)):
    row = queue.iloc[position]
    rows = queue.iloc[[position]]
    missing = row["issue"] == "missing"
    key = f"m{row['missing_id']}" if missing else row["object_id"]
    with st.container(border=True):
        cells = st.columns([1, 4, 2], vertical_alignment="center")
        crop = crop_thumbnail_path(row["filepath"], row["bounding_box"])
        if crop:
            cells[0].image(str(crop), width="stretch")
        else:
            cells[0].caption("no crop: the box has no area inside the image, or the image is unreadable")
        suggestion = (f" → suggested **{shown(row['suggested_label'])}**"
                      if isinstance(row["suggested_label"], str) and row["suggested_label"] != row["label"] else "")
        what = "missing" if missing else "box"
        cells[1].markdown(f"**{shown(row['label'])}** {what}{suggestion} · :orange-badge[{markdown_text(row['issue'])}] "
                          f"score **{row['issue_score']:.2f}**"
                          + (f" · decided: **{markdown_text(row['decision'])}**" if isinstance(row["decision"], str)
                             else ""))
        details = [ISSUE_WORDS.get(row["issue"], "")]
        if isinstance(row["duplicate_of"], str):
            details.append(f"same object as box {row['duplicate_of']}")
        if missing and pd.notna(row["confidence"]):
            details.append(f"the model sees a {display_label(row['label'])} here (confidence {row['confidence']:.2f}) "
                           "that nobody annotated")
        if isinstance(row["previous_label"], str):
            details.append(f"was {display_label(row['previous_label'])}")
        cells[1].caption(" · ".join(markdown_text(d) for d in details if d))
        show_image = cells[1].toggle("Show image", key=f"obj_show_{key}",
                                     help="the whole image with every box, this one highlighted")
        sent = image_decisions.get(row["sample_id"]) == "annotate"
        decided = isinstance(row["decision"], str)
        # Fixed places: the first row decides the box, the second the image (or the class).
        first, second = cells[2].columns(3), cells[2].columns(2)
        if decided:
            if first[0].button("Undo", key=f"obj_undo_{key}", width="stretch",
                               help=f"undo '{row['decision']}' on this box"):
                if missing and row["added_id"] is None:  # a decision on the missing box itself
                    undo("missing", [row["missing_id"]])
                else:
                    undo("objects", [row["added_id"] if missing else row["object_id"]])
        elif missing:
            if first[0].button("Add box", key=f"obj_add_{key}", type="primary", width="stretch",
                               help="accept the model's box into the annotations"):
                act("add", rows)
            if first[1].button("Keep", key=f"obj_keep_{key}", width="stretch",
                               help="not missing: dismiss the flag (undoable)"):
                act("keep", rows)
        else:
            if first[0].button("Accept", key=f"obj_accept_{key}", width="stretch", disabled=not suggestion,
                               type="primary" if suggestion and row["issue"] == "mislabel" else "secondary",
                               help=f"relabel to {shown(row['suggested_label'])}" if suggestion
                               else "no other class is suggested"):
                act("accept", rows)
            if first[1].button("Remove", key=f"obj_remove_{key}", width="stretch",
                               type="primary" if row["issue"] == "duplicate" else "secondary"):
                act("remove", rows, reason=f"removed in object review ({row['issue']})")
            if first[2].button("Keep", key=f"obj_keep_{key}", width="stretch",
                               help="the box is right as it is: dismiss the flag (undoable)"):
                act("keep", rows)
        image_slot = first[1] if decided else second[0]
        if sent:
            if image_slot.button("Undo annotate", key=f"obj_unannotate_{key}", width="stretch",
                                 help="the image was sent to annotation; take it back"):
                undo("samples", [row["sample_id"]])
        elif image_slot.button("Annotate", key=f"obj_annotate_{key}", width="stretch",
                               help="send the image to annotation, naming this box in the reason"):
            act("annotate", rows)
        if not missing and not decided and classes:
            with second[1].popover("Relabel…", width="stretch"):
                others = [c for c in classes if c != row["label"]] or classes
                chosen = st.selectbox("Class", others, key=f"obj_class_{key}", format_func=display_label,
                                      index=others.index(row["suggested_label"]) if row["suggested_label"] in others
                                      else 0)
                if st.button(f"Relabel to {shown(chosen)}", key=f"obj_relabel_{key}", type="primary",
                             width="stretch"):
                    act("relabel", rows, new_label=chosen)
        if sent:
            cells[1].caption("The image is sent to annotation.")
        if show_image:
            picture = image_with_boxes(dataset, field, row["sample_id"],
                                       highlight_id=row["missing_id"] if missing else row["object_id"])
            if picture:
                st.image(str(picture), width="stretch", caption=f"every box of {markdown_text(field)}; this one highlighted")
            else:
                st.warning("The image cannot be read.")
