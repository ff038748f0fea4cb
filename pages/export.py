"""Export: leakage-free balanced splits, curated subsets in training formats, and the relabel round trip."""

import json
from pathlib import Path

import streamlit as st

from curation.decisions import decision_counts
from curation.export import EXPORT_FORMATS, ViewSpec, build_view, export_dataset
from curation.snapshots import list_snapshots
from curation.paths import default_export_dir
from curation.plots import split_distribution_bar
from curation.relabel import export_annotation_task
from curation.splits import (BALANCE_MODES, DEFAULT_SPLIT_FIELD, SplitConfig, make_splits, split_label_fields,
                             write_splits)
from pages.common import USER_ERRORS, bump_data_version, errors_shown, markdown_text, open_page, show_error
from pages.relabel_upload import apply_upload, preview_upload

SCORE_FIELDS = {"mislabel_score": "mislabel score", "outlier_score": "outlier score",
                "nearest_neighbor_similarity": "near-duplicate similarity", "leak_similarity": "leak similarity",
                "uncertainty_score": "uncertainty"}

dataset, field = open_page("Export", needs_embeddings=False)
label_field = st.session_state["label_field"]
counts = decision_counts(dataset)
removed, relabelled, annotate = (counts.get(name, 0) for name in ("remove", "relabel", "annotate"))
summary = st.columns(4)
summary[0].metric("Samples", f"{len(dataset):,}")
summary[1].metric("Decided remove", f"{removed:,}", help="left out of every export and split")
summary[2].metric("Relabelled", f"{relabelled:,}", help="exported with the corrected label")
summary[3].metric("Sent to annotation", f"{annotate:,}")

splits_tab, export_tab, relabel_tab = st.tabs(["Splits", "Export a subset", "Relabel round trip"])

# ---------------------------------------------------------------- splits
with splits_tab:
    st.caption("Train/val/test, stratified by class. Every near-duplicate group, leak pair and group-field value "
               "lands in exactly one split. Samples decided *remove* get no split.")
    split_labels = label_field
    stratify_fields = split_label_fields(dataset)
    if any(name != label_field for name in stratify_fields):
        split_labels = st.selectbox("Stratify by", [label_field, *(n for n in stratify_fields if n != label_field)],
                                    key="sp_labels", format_func=lambda name: name or "(no labels)",
                                    help="a classification field, or a detections field: images are then split by "
                                         "the classes of their boxes")
    ratio_cells = st.columns(5)
    train = ratio_cells[0].number_input("Train share", 0.0, 1.0, 0.8, 0.05, key="sp_train")
    val = ratio_cells[1].number_input("Val share", 0.0, 1.0, 0.1, 0.05, key="sp_val")
    test = ratio_cells[2].number_input("Test share", 0.0, 1.0, 0.1, 0.05, key="sp_test")
    seed = ratio_cells[3].number_input("Seed", 0, 2**31 - 1, 0, key="sp_seed")
    string_fields = sorted(name for name, kind in dataset.get_field_schema().items()
                           if type(kind).__name__ in ("StringField", "IntField")
                           and not name.startswith(("decision", "mislabel", "suggested", "leak", "nearest")))
    group_field = ratio_cells[4].selectbox("Group field", ["(none)"] + string_fields, key="sp_group",
                                           help="samples sharing a value (a patient, video or session id) stay together")
    balance_cells = st.columns([2, 1, 1, 2])
    balance = balance_cells[0].selectbox("Balancing", BALANCE_MODES, key="sp_balance", format_func={
        "none": "none (stratified only)", "cap": "cap per class", "undersample": "undersample to a target",
        "weights": "keep all, write class weights"}.get)
    cap = balance_cells[1].number_input("Cap per class", 1, 10**7, 50, key="sp_cap", disabled=balance != "cap")
    target = balance_cells[2].number_input("Target per class", 0, 10**7, 0, key="sp_target",
                                           disabled=balance != "undersample", help="0: the smallest class's count")
    use_groups = balance_cells[3].checkbox("Keep near duplicates and leaks together", True, key="sp_dups")
    try:
        config = SplitConfig(ratios=(("train", train), ("val", val), ("test", test)), seed=int(seed),
                             group_field=None if group_field == "(none)" else group_field,
                             use_duplicate_groups=use_groups, balance=balance,
                             cap=int(cap) if balance == "cap" else None,
                             target=(int(target) or None) if balance == "undersample" else None)
    except USER_ERRORS as error:
        show_error(error)
        config = None
    if st.button("Preview split", type="primary", key="sp_preview", disabled=config is None):
        with errors_shown():
            st.session_state["split_preview"] = (dataset.name, config, make_splits(dataset, split_labels, config),
                                                 split_labels)
    preview = st.session_state.get("split_preview")
    if preview and preview[0] == dataset.name and preview[1] == config and preview[3:] == (split_labels,):
        result = preview[2]
        counts = result.counts()
        st.markdown(" · ".join(f"**{name}** {count:,}" for name, count in counts.items())
                    + f" · excluded {result.excluded_count():,} · {result.n_groups:,} groups "
                    f"(largest {result.largest_group})")
        st.plotly_chart(split_distribution_bar(result.distribution, config.split_names), width="stretch",
                        key="sp_chart")
        if result.image_distribution is not None:
            st.caption("Counts are boxes per class; the images containing each class follow the table.")
        st.dataframe(result.distribution, width="stretch")
        if result.image_distribution is not None:
            st.dataframe(result.image_distribution, width="stretch")
        if result.class_weights:
            st.caption("Class weights (train): " + ", ".join(f"{k} {v:.3f}" for k, v in result.class_weights.items()))
        save = st.columns([2, 1, 2], vertical_alignment="bottom")
        split_field = save[0].text_input("Write to field", DEFAULT_SPLIT_FIELD, key="sp_field")
        as_tags = save[1].checkbox("Also as tags", key="sp_tags")
        if save[2].button("Save split to the dataset", key="sp_save"):
            with errors_shown():
                written = write_splits(dataset, result, field=split_field, tags=as_tags)
                bump_data_version()
                st.success(f"Wrote the split of {written:,} samples to field '{split_field}'. "
                           "Export it on the next tab with that split field.")
    elif preview:
        st.caption("Settings changed: preview again.")

# ---------------------------------------------------------------- export
with export_tab:
    cells = st.columns([2, 3], vertical_alignment="bottom")
    export_format = cells[0].selectbox("Format", list(EXPORT_FORMATS), key="ex_format")
    cells[1].caption(EXPORT_FORMATS[export_format])
    split_fields = [name for name in (DEFAULT_SPLIT_FIELD, "split") if dataset.has_sample_field(name)]
    filters = st.columns(4)
    split_field = filters[0].selectbox("Split field", ["(no splits)"] + split_fields, key="ex_split_field",
                                       index=1 if split_fields else 0,
                                       help="lay the export out per split; samples without a split are left out")
    classes = sorted(c for c in dataset.distinct(f"{label_field}.label") if c) if label_field else []
    chosen_classes = filters[1].multiselect("Classes", classes, key="ex_classes", placeholder="all classes")
    tags = filters[2].multiselect("With tags", sorted(dataset.distinct("tags")), key="ex_tags", placeholder="any")
    decided = filters[3].multiselect("Decisions", ["none", "keep", "relabel", "annotate", "dismiss"], key="ex_decisions",
                                     placeholder="any (removed always left out)",
                                     format_func=lambda d: "undecided" if d == "none" else d,
                                     help="e.g. only what a person has looked at: keep + relabel")
    scores = [name for name in SCORE_FIELDS if dataset.has_sample_field(name)]
    cut = st.columns([2, 2, 3], vertical_alignment="bottom")
    score_field = cut[0].selectbox("Leave out by score", ["(none)"] + scores, key="ex_score_field",
                                   format_func=lambda name: SCORE_FIELDS.get(name, name), disabled=not scores,
                                   help="run the finders first" if not scores else
                                   "samples scoring at or above the cut-off are left out")
    score_cut = cut[1].slider("Cut-off", 0.5, 1.0, 0.9, 0.01, key="ex_score_cut", disabled=score_field == "(none)")
    only_selection = cut[2].checkbox(f"Only the map selection ({len(st.session_state['selected_ids'])})",
                                     key="ex_only_selection", disabled=not st.session_state["selected_ids"])
    with_embeddings = cut[2].checkbox("Include embeddings", key="ex_embeddings",
                                      disabled=export_format not in ("csv", "parquet") or not field,
                                      help="csv (embeddings.npy beside the manifest) and parquet (a list column) only")
    spec = ViewSpec(classes=tuple(chosen_classes), tags=tuple(tags), decisions=tuple(decided),
                    ids=tuple(st.session_state["selected_ids"]) if only_selection else (),
                    max_scores=((score_field, float(score_cut)),) if score_field != "(none)" else (),
                    split_field=None if split_field == "(no splits)" else split_field)
    versions = [ref.name for ref in reversed(list_snapshots(dataset, kinds=("manual", "export")))]
    version = st.selectbox("Version", ["current state"] + versions, key="ex_version",
                           help="export the current labels and decisions (recorded as a snapshot first), or those "
                                "of an earlier snapshot (Versions page)")
    count = len(build_view(dataset, label_field, spec))
    if version != "current state":
        st.caption(f"The filters apply to snapshot {version}'s labels, decisions, splits and tags; "
                   f"{count:,} samples match them in the current state.")
    out_dir = st.text_input("Export to (a new directory)", str(default_export_dir(dataset.name, export_format)),
                            key=f"ex_out_{export_format}")
    label = f"Export {count:,} samples" if version == "current state" else f"Export snapshot {version}"
    if st.button(label, type="primary", disabled=not count and version == "current state", key="ex_go"):
        try:
            with st.spinner(f"Writing {export_format}…"):
                report = export_dataset(dataset, out_dir, format=export_format, label_field=label_field, spec=spec,
                                        embeddings_field=field if with_embeddings else None,
                                        snapshot=None if version == "current state" else version)
        except USER_ERRORS as error:
            show_error(error)
        else:
            st.session_state["last_export"] = str(report.out_dir)
            st.success(f"Exported {report.samples:,} samples to {report.out_dir} ({report.files:,} files) from "
                       f"snapshot {report.snapshot}.")
            for reason, left in report.left_out.items():
                st.warning(f"Left out {left:,}: {reason}")
    last = st.session_state.get("last_export")
    if last and (Path(last) / "provenance.json").exists():
        manifest = json.loads((Path(last) / "provenance.json").read_text())
        made_from = (manifest.get("snapshot") or {}).get("name")
        with st.expander(f"Provenance of the last export: {manifest['removed']} removed, "
                         f"{manifest['relabelled']} relabelled" + (f", from snapshot {made_from}" if made_from else "")):
            st.json(manifest, expanded=1)

# ---------------------------------------------------------------- relabel round trip
with relabel_tab:
    st.caption(f"{annotate:,} samples are sent to annotation. Export them as a task, fix the labels in the tool, "
               "and import its export: each changed label keeps the old one and names the tool as the source.")
    task_fields = split_label_fields(dataset)  # classifications, then boxes (Detections)
    if not task_fields:
        st.info("This dataset has no classification labels or boxes to correct.")
    else:
        cells = st.columns([1, 1, 3, 1], vertical_alignment="bottom")
        task_field = cells[0].selectbox("Labels", task_fields, key="rl_field",
                                        index=task_fields.index(label_field) if label_field in task_fields else 0,
                                        help="a classification field, or a detections field: its boxes go to the "
                                             "tool and come back as box decisions (class, moved, removed, added)")
        tool = cells[1].selectbox("Tool", ["cvat", "labelstudio"], key="rl_tool",
                                  format_func={"cvat": "CVAT (for images 1.1)", "labelstudio": "Label Studio"}.get)
        task_dir = cells[2].text_input("Write the task to", str(default_export_dir(dataset.name, f"{tool}-task")),
                                       key=f"rl_out_{tool}")
        if cells[3].button("Export task", disabled=not annotate, key="rl_export", width="stretch"):
            try:
                task = export_annotation_task(dataset, task_dir, format=tool, label_field=task_field)
            except USER_ERRORS as error:
                show_error(error)
            else:
                boxes = f", {task.n_boxes:,} boxes" if task.n_boxes else ""
                st.success(f"Wrote {task.n_samples} images{boxes} and {len(task.classes)} classes to {task.out_dir}; "
                           "its README.txt says how to load it.")
        upload = st.file_uploader("Corrected annotations (CVAT annotations.xml or zip, Label Studio JSON)",
                                  type=["xml", "zip", "json"], key="rl_upload")
        if upload is not None:
            checked = preview_upload(st.session_state, dataset, upload, label_field=task_field,
                                     data_version=st.session_state["data_version"])
            if checked.error:
                st.error(markdown_text(checked.error))
            else:
                found = checked.result
                st.markdown(f"**{markdown_text(checked.name)}**: {markdown_text(found.summary())}")
                for problem in found.problems[:20]:
                    st.warning(markdown_text(problem))
                if found.changed:
                    st.dataframe([{"id": i, "old": old, "new": new} for i, old, new in found.changed],
                                 hide_index=True)
                box_lines = found.box_change_lines()
                if box_lines:
                    st.dataframe({"box change": box_lines}, hide_index=True)
                if st.button("Apply these corrections", type="primary", key="rl_apply",
                             disabled=not found.has_changes):
                    with errors_shown():
                        applied = apply_upload(dataset, upload, label_field=task_field)
                        bump_data_version()
                        st.success(markdown_text(applied.summary()))
