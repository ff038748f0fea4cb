"""Data: import images from disk into a FiftyOne dataset, and compute embeddings."""

import pandas as pd
import streamlit as st

from curation import datasets as ds
from curation.embeddings import compute_embeddings
from curation.importers import FORMATS, import_dataset
from curation.models import DEFAULT_MODEL, MODEL_REGISTRY, resolve_model
from pages.common import USER_ERRORS, bump_data_version, show_error

st.title("Data")

st.subheader("Import from disk")
st.caption("A folder with one sub-folder per class, an unlabelled image folder, COCO, YOLO, CVAT image, "
           "a FiftyOne dataset directory, or a CSV with a filepath and a label column.")
with st.form("import_form"):
    source = st.text_input("Folder or CSV file", placeholder="/path/to/images")
    columns = st.columns(3)
    name = columns[0].text_input("New dataset name")
    data_format = columns[1].selectbox("Format", FORMATS, help="auto detects the format from the files")
    label_field = columns[2].text_input("Label field", value=ds.DEFAULT_LABEL_FIELD)
    overwrite = st.checkbox("Replace a dataset of the same name")
    submitted = st.form_submit_button("Import", type="primary")
if submitted:
    if not source.strip() or not name.strip():
        st.error("Import needs both a source path and a dataset name.")
    else:
        try:
            with st.spinner(f"Importing {source}…"):
                report = import_dataset(source.strip(), name.strip(), format=data_format,
                                        label_field=label_field.strip() or ds.DEFAULT_LABEL_FIELD, overwrite=overwrite)
        except USER_ERRORS as error:
            show_error(error)
        else:
            st.success(f"Imported {report.samples:,} samples as **{report.name}** ({report.format}).")
            for warning in report.warnings:
                st.warning(warning)
            st.session_state["dataset_name"] = report.name
            bump_data_version()

st.subheader("Embeddings")
name = st.session_state.get("dataset_name")
if not name:
    st.caption("Pick or import a dataset first.")
    st.stop()
dataset = ds.load_dataset(name)
statuses = ds.embedding_statuses(dataset)
if statuses:
    st.dataframe(pd.DataFrame([{
        "field": s.field, "model": s.model, "embedded": s.embedded, "failed": s.failed, "samples": s.total,
        "fallback": s.fallback_reason or "",
    } for s in statuses]), hide_index=True)
else:
    st.caption(f"**{name}** has no embeddings yet.")

columns = st.columns([2, 2, 1])
model_names = sorted(MODEL_REGISTRY)
model = columns[0].selectbox("Model", model_names, index=model_names.index(DEFAULT_MODEL),
                             format_func=lambda key: f"{key} — {MODEL_REGISTRY[key].description}")
checkpoint = columns[1].text_input("Local checkpoint (optional)", help="a weights file, for machines without internet")
device = columns[2].selectbox("Device", ["auto", "cpu", "cuda"])
if st.button("Compute embeddings", type="primary"):
    bar = st.progress(0.0, text="Loading the model…")
    try:
        spec = resolve_model(model, checkpoint.strip() or None)
        run = compute_embeddings(dataset, model=spec, device=device,
                                 progress=lambda done, total: bar.progress(done / max(total, 1),
                                                                           text=f"Embedded {done:,} of {total:,}"))
    except USER_ERRORS as error:
        bar.empty()
        show_error(error)
    else:
        bar.progress(1.0, text="Done")
        st.success(f"Embedded {run.embedded:,} new samples with **{run.model}** on {run.device} "
                   f"({run.already_done:,} already done, {len(run.failures)} skipped).")
        if run.fallback_reason:
            st.info(run.fallback_reason)
        if run.failures:
            st.dataframe(pd.DataFrame(run.failures, columns=["filepath", "reason"]), hide_index=True)
        st.session_state["embedding_field"] = run.field
        bump_data_version()
