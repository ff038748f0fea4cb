"""Findings: run every finder, read their one-line summaries, download the per-sample CSV."""

import streamlit as st

from curation.analysis import analysis_record, analyze, committed_runs, findings_columns
from curation.finders import finder_specs
from curation.finders.image_quality import images_by_issue
from curation.images import thumbnail_path
from pages.common import USER_ERRORS, bump_data_version, findings, open_page, show_error

dataset, field = open_page("Findings")

NAMES = [spec.name for spec in finder_specs()]
chosen = st.multiselect("Finders", NAMES, default=NAMES, key="findings_chosen")
if st.button("Run analysis", type="primary", disabled=not chosen):
    bar = st.progress(0.0, text="Building the neighbour graph…")
    try:
        report = analyze(dataset, chosen, field=field, label_field=st.session_state["label_field"],
                         progress=lambda name, done, total: bar.progress(done / max(total, 1), text=f"Running {name}…"))
    except USER_ERRORS as error:  # e.g. no embedded samples: say so, one line
        bar.empty()
        show_error(error)
        st.stop()
    bar.empty()
    for name, reason in report.errors.items():
        st.error(f"{name} failed: {reason}")
    bump_data_version()

analysis = analysis_record(dataset)
if not analysis:
    st.info("No analysis yet: run it above, or `curation analyze --dataset " + dataset.name + "`.")
    st.stop()

st.caption(f"Last analysis {analysis['updated_at']} on `{analysis['embedding_field']}`"
           + (f", labels from `{analysis['label_field']}`" if analysis.get("label_field") else ""))
for name, summary in analysis.get("summaries", {}).items():
    st.markdown(f"- **{name}**: {summary}")
for name, reason in analysis.get("skipped", {}).items():
    st.markdown(f"- **{name}**: not run ({reason})")
for name, reason in analysis.get("errors", {}).items():
    st.markdown(f"- **{name}**: failed ({reason})")

issues = images_by_issue(dataset)
if issues:
    st.subheader("Image quality")
    issue = st.selectbox("Issue", list(issues), format_func=lambda name: f"{name.replace('_', ' ')} ({len(issues[name]):,})",
                         key="findings_image_issue")
    cells = st.columns(6)
    for position, row in enumerate(issues[issue].head(24).itertuples(index=False)):
        with cells[position % 6]:
            thumb = thumbnail_path(row.filepath)
            if thumb:
                st.image(str(thumb), width="stretch")
            st.caption(row.image_issue_reason or row.image_issue)
    if len(issues[issue]) > 24:
        st.caption(f"… and {len(issues[issue]) - 24:,} more; filter on `image_issue` in the FiftyOne App or the CSV below.")

table = findings(dataset.name, repr(sorted((committed_runs(dataset) or {}).items())), st.session_state["data_version"])
sort_by = st.selectbox("Sort by", [c for c in findings_columns() if c.endswith("_score") or c.endswith("_similarity")],
                       key="findings_sort")
st.dataframe(table.sort_values(sort_by, ascending=False, na_position="last").head(500), hide_index=True,
             column_config={"filepath": st.column_config.TextColumn(width="medium")})
st.download_button("Download findings CSV", lambda: table.to_csv(index=False).encode(),  # written on click only
                   file_name=f"{dataset.name}-findings.csv",
                   mime="text/csv")
