"""Audit: draw a sample with known inclusion probabilities, answer it, and estimate the share of wrong labels."""

import streamlit as st
from fiftyone import ViewField as F

from curation.audit import CORRECT_LABEL_FIELD, DESIGNS, ID_FIELD, LABEL_FIELD, VERDICT_FIELD, answer, audit_report, \
    current_audit, start_audit
from curation.images import thumbnail_path
from curation.quality_plots import audit_class_figure, audit_class_table
from pages.common import bump_data_version, errors_shown, markdown_text, open_page

PAGE_SIZE = 6
DESIGN_HELP = ("uniform: every labelled sample has the same chance; stratified: by class, so each class gets its own "
               "estimate; score: strata by mislabel score, oversampling high scores (needs `curation analyze`), "
               "still unbiased and usually narrower")

dataset, _ = open_page("Audit", needs_embeddings=False)
label_field = st.session_state["label_field"]
if not label_field:
    st.info("This dataset has no classification labels, so there is nothing to audit.")
    st.stop()


def percent(value) -> str:
    return "—" if value is None else f"{value:.1%}"


audit = current_audit(dataset)
pending_count = 0
if audit and dataset.has_sample_field(ID_FIELD):
    pending_count = dataset.match(F(ID_FIELD) == audit["id"]).exists(VERDICT_FIELD, False).count()

with st.expander("Start an audit", expanded=audit is None):
    controls = st.columns([2, 2, 2, 2], vertical_alignment="bottom")
    labelled = dataset.exists(f"{label_field}.label").count()
    size = controls[0].number_input("Samples to review", 1, max(labelled, 1), min(100, max(labelled, 1)), key="au_size")
    design = controls[1].selectbox("Design", DESIGNS, key="au_design", help=DESIGN_HELP)
    seed = controls[2].number_input("Seed", 0, 2**31 - 1, 0, key="au_seed")
    replace = False
    if pending_count:
        replace = st.checkbox(f"Discard the open audit ({pending_count} samples unanswered)", key="au_replace")
    if controls[3].button("Start audit", type="primary", width="stretch"):
        with errors_shown():
            started = start_audit(dataset, int(size), design, int(seed), replace=replace)
            bump_data_version()
            st.session_state.pop("au_page", None)
            st.session_state["au_message"] = (f"Started audit {started.audit_id}: {len(started.ids):,} samples drawn "
                                              f"({started.design} design).")
            st.rerun()
if st.session_state.get("au_message"):
    st.success(st.session_state.pop("au_message"))
if audit is None:
    st.info("No audit yet: start one above. Review the drawn samples here, or answer them from a CSV with "
            f"`curation audit answer --dataset {dataset.name} --from FILE.csv`.")
    st.stop()

st.caption(f"Audit {audit['id']} · {audit['design']} design · seed {audit.get('seed')} · "
           f"{len(audit['samples']):,} of {audit['population']:,} labelled samples drawn · labels of "
           f"`{audit['label_field']}` as they were when drawn")

# ---------------------------------------------------------------- report
report = audit_report(dataset, margin=st.session_state.get("au_margin", 0.02))
st.subheader("Report")
metrics = st.columns([1, 1.7, 1.2, 1, 0.8])
metrics[0].metric("Error rate", percent(report["error_rate"]),
                  help="estimated share of wrong labels in the whole dataset")
metrics[1].metric("95% interval", "—" if report["error_rate"] is None
                  else f"{percent(report['ci_low'])} – {percent(report['ci_high'])}")
metrics[2].metric("Projected wrong labels", "—" if report["projected_wrong"] is None else
                  f"{report['projected_wrong']:,}",
                  help="error rate x labelled samples")
metrics[3].metric("Answered", f"{report['n_answered']:,} / {report['n_drawn']:,}",
                  help="correct + wrong verdicts; unsure ones are left out of the estimate")
metrics[4].metric("Pending", f"{report['n_pending']:,}")
if report["projected_wrong"] is not None:
    st.caption(f"Projected wrong labels: {report['projected_wrong']:,} "
               f"({report['projected_wrong_low']:,} – {report['projected_wrong_high']:,}) of "
               f"{report['population']:,}; {report['n_wrong']:,} wrong and {report['n_unsure']:,} unsure verdicts so far.")
margin_cells = st.columns([2, 5], vertical_alignment="bottom")
margin = margin_cells[0].number_input("Margin (± share)", 0.001, 0.5, 0.02, 0.005, format="%.3f", key="au_margin")
if report["verdicts_for_margin"] is None:
    margin_cells[1].caption("Answer some samples to see how many verdicts a margin needs.")
else:
    margin_cells[1].markdown(f"About **{report['verdicts_for_margin']:,}** verdicts in total reach ±{margin:.1%} "
                             f"(**{report['more_verdicts_for_margin']:,}** more than now).")
if report.get("strata_without_verdicts"):
    missing = report["strata_without_verdicts"]
    st.caption(f"{missing} of {len(report['strata'])} strata have no verdicts yet: until they do, the estimate "
               "covers the others only and is not design-unbiased.")
if report["per_class"]:
    st.plotly_chart(audit_class_figure(report), width="stretch")
    st.dataframe(audit_class_table(report), hide_index=True, width="stretch",
                 column_config={name: st.column_config.NumberColumn(format="%.3f")
                                for name in ("error rate", "95% low", "95% high")})
st.caption(report["method"])

# ---------------------------------------------------------------- pending samples
st.subheader(f"To review ({pending_count:,})")
if not pending_count:
    st.success("Every drawn sample has a verdict.")
    st.stop()
pending = dataset.match(F(ID_FIELD) == audit["id"]).exists(VERDICT_FIELD, False)
pages = max(1, (pending_count + PAGE_SIZE - 1) // PAGE_SIZE)
if int(st.session_state.get("au_page") or 1) > pages:  # fewer pages once samples are answered
    st.session_state["au_page"] = pages
page = int(st.number_input("Page", 1, pages, key="au_page")) if pages > 1 else 1
ids, paths, labels = pending.skip((page - 1) * PAGE_SIZE).limit(PAGE_SIZE).values(["id", "filepath", LABEL_FIELD])
classes = sorted(str(c) for c in dataset.distinct(f"{label_field}.label"))


def record(sample_id: str, verdict: str, label: str | None = None) -> None:
    with errors_shown():
        result = answer(dataset, [{"id": sample_id, "verdict": verdict, "label": label}])
        if result.rejected:
            st.error(result.rejected[0])
            return
        bump_data_version()
        st.rerun()


grid = st.columns(3)
for position, (sample_id, path, given) in enumerate(zip(ids, paths, labels)):
    with grid[position % 3].container(border=True):
        thumb = thumbnail_path(path)
        if thumb is None:
            st.warning("cannot show this image")
        else:
            st.image(str(thumb), width="stretch")
        st.markdown(f"labelled **{markdown_text(given)}**")
        buttons = st.columns(2)
        if buttons[0].button("Correct", key=f"au_correct_{sample_id}", type="primary", width="stretch"):
            record(sample_id, "correct")
        if buttons[1].button("Unsure", key=f"au_unsure_{sample_id}", width="stretch"):
            record(sample_id, "unsure")
        others = [c for c in classes if c != given] or classes
        wrong = st.columns([3, 2], vertical_alignment="bottom")
        right_label = wrong[0].selectbox("Right label", others, key=f"au_label_{sample_id}")
        if wrong[1].button("Wrong", key=f"au_wrong_{sample_id}", width="stretch"):
            record(sample_id, "wrong", right_label)
st.caption(f"Page {page} of {pages}. A wrong verdict relabels the sample (a decision with source `audit`); "
           f"the audit keeps the label as drawn (`{LABEL_FIELD}`, answer in `{CORRECT_LABEL_FIELD}`).")
