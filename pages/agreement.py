"""Annotators: agreement between annotators, their quality, the samples they split on, consensus."""

import streamlit as st

from curation import datasets as ds
from curation.annotators import (DEFAULT_FIELD, METHODS, agreement, consensus, gold_accuracy, gold_labels, read_votes,
                                 vote_embeddings, write_consensus)
from curation.images import thumbnail_path
from curation.quality_plots import annotator_table, disagreements, kappa_heatmap, per_class_table
from pages.common import USER_ERRORS, bump_data_version, errors_shown, markdown_text, one_line, open_page, show_error

PAGE_SIZE = 12
NONE = "(none)"


def number(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


dataset, _ = open_page("Annotators", needs_embeddings=False)


def vote_fields() -> list[str]:
    """Fields holding several classifications per sample (fo.Classifications)."""
    import fiftyone as fo

    schema = dataset.get_field_schema(embedded_doc_type=fo.Classifications)
    fields = sorted(schema)
    return sorted(fields, key=lambda name: name != DEFAULT_FIELD)


fields = vote_fields()
if not fields:
    st.info("This dataset has no annotations from several annotators yet. Import them with "
            f"`curation import-annotations --dataset {dataset.name} --from FILE [--format csv|cvat|labelstudio|fields]` "
            "(a CSV holds `filepath` or `id`, `annotator`, `label` and optionally `time`; `--format fields` reads "
            "several label fields of this dataset).")
    st.stop()

controls = st.columns([2, 2, 3], vertical_alignment="bottom")
vote_field = controls[0].selectbox("Annotations field", fields, key="ag_field")
tags = sorted(dataset.count_sample_tags())
label_field = st.session_state["label_field"]
gold_options = [NONE] + [f"tag: {tag}" for tag in tags] + [f"field: {name}" for name in ds.label_fields(dataset)
                                                           if name != label_field and name != "consensus"]
default_gold = next((option for option in gold_options if option in ("tag: gold", "field: gold")), NONE)
gold_choice = controls[1].selectbox("Gold samples", gold_options, index=gold_options.index(default_gold), key="ag_gold",
                                    help="Samples whose answer is known: a tag (the answer is in the label field) "
                                         "or a field holding the answer where it is set.")

@st.cache_data(show_spinner="Measuring agreement…", max_entries=4)
def measured(name: str, field_name: str, data_version: int):
    """The votes and their agreement; read again after this session writes (``data_version``)."""
    votes = read_votes(ds.load_dataset(name), field_name)
    return votes, agreement(votes)


try:
    votes, summary = measured(dataset.name, vote_field, st.session_state["data_version"])
except USER_ERRORS as error:
    show_error(error)
    st.stop()

gold = None
if gold_choice != NONE:
    kind, _, name = gold_choice.partition(": ")
    with errors_shown():
        answers = gold_labels(dataset, field_name=name if kind == "field" else None,
                              tag=name if kind == "tag" else None, label_field=label_field or "ground_truth")
        gold = gold_accuracy(votes, answers)
        if not answers:
            st.warning(f"No gold answers found in {gold_choice}.")

metrics = st.columns(5)
metrics[0].metric("Krippendorff's alpha", number(summary["alpha"]))
metrics[1].metric("Fleiss' kappa", number(summary["kappa"]))
metrics[2].metric("Samples with votes", f"{summary['n_samples']:,}")
metrics[3].metric("Votes", f"{summary['n_votes']:,}")
metrics[4].metric("Annotators", f"{len(votes.annotators):,}")
st.caption("Alpha and kappa: 1 is perfect agreement, 0 what chance gives; missing votes are allowed.")

st.subheader("Annotators")
st.dataframe(annotator_table(summary, gold), hide_index=True, width="stretch",
             column_config={"quality": st.column_config.NumberColumn(format="%.2f",
                                                                     help="Dawid-Skene estimate of accuracy"),
                            "agreement": st.column_config.NumberColumn(
                                format="%.2f", help="share of their votes matching another annotator's vote"),
                            "gold accuracy": st.column_config.NumberColumn(format="%.2f")})
if summary["confused"]:
    st.caption("Most confused classes: " + ", ".join(f"{markdown_text(p['a'])} / {markdown_text(p['b'])} ({p['count']})"
                                                     for p in summary["confused"][:5]))
left, right = st.columns([1, 1])
with left:
    st.subheader("Per class")
    st.dataframe(per_class_table(summary), hide_index=True, width="stretch",
                 column_config={"alpha": st.column_config.NumberColumn(format="%.2f"),
                                "kappa": st.column_config.NumberColumn(format="%.2f")})
with right:
    st.subheader("Between annotators")
    if len(votes.annotators) >= 2:
        st.plotly_chart(kappa_heatmap(votes.annotators, summary["pairs"]), width="stretch")
    else:
        st.caption("One annotator: no pairs to compare.")

st.subheader("Consensus")
action = st.columns([2, 2, 2], vertical_alignment="bottom")
method = action[0].selectbox("Method", METHODS, key="ag_method",
                             help="auto: CROWDLAB when every voted sample has an embedding, else Dawid-Skene")
into = action[1].text_input("Write into field", "consensus", key="ag_into")
if action[2].button("Compute and write consensus", type="primary"):
    with errors_shown():
        embeddings, note = None, None
        field = st.session_state["embedding_field"]
        if field and method in ("auto", "crowdlab"):
            embeddings = vote_embeddings(dataset, votes, field)
            if embeddings is None and method == "auto":
                note = "CROWDLAB needs an embedding for every voted sample; used Dawid-Skene"
        with st.spinner("Computing the consensus…"):
            try:
                result = consensus(votes, method, embeddings=embeddings)
            except USER_ERRORS as error:
                if method != "auto" or embeddings is None:
                    raise
                result = consensus(votes, "dawid-skene")  # auto: what the data allows
                note = f"CROWDLAB could not run ({one_line(error)}); used Dawid-Skene"
            write_consensus(dataset, result, into=into.strip())
        bump_data_version()
        note = note or result.note
        st.session_state["ag_message"] = (f"Wrote the {result.method} consensus of {len(result.sample_ids):,} samples "
                                          f"into `{into.strip()}` and `{into.strip()}_quality`."
                                          + (f" ({note})" if note else ""))
        st.rerun()
if st.session_state.get("ag_message"):
    st.success(st.session_state.pop("ag_message"))

split = disagreements(votes)
st.subheader(f"Samples annotators disagree on ({len(split):,})")
if split.empty:
    st.caption("Every sample with two or more votes has unanimous votes.")
else:
    pages = max(1, (len(split) + PAGE_SIZE - 1) // PAGE_SIZE)
    if int(st.session_state.get("ag_page") or 1) > pages:
        st.session_state["ag_page"] = pages
    page = int(st.number_input("Page", 1, pages, key="ag_page")) if pages > 1 else 1
    shown = split.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    paths = dict(zip(*dataset.select(list(shown["id"])).values(["id", "filepath"])))
    current = {}
    if label_field:
        current = dict(zip(*dataset.select(list(shown["id"])).values(["id", f"{label_field}.label"])))
    grid = st.columns(4)
    for position, row in enumerate(shown.itertuples(index=False)):
        with grid[position % 4].container(border=True):
            thumb = thumbnail_path(paths[row.id]) if row.id in paths else None
            if thumb is None:
                st.warning("cannot show this image")
            else:
                st.image(str(thumb), width="stretch")
            if current.get(row.id) is not None:
                st.caption(f"label: {markdown_text(current[row.id])}")
            st.markdown("  \n".join(f"{markdown_text(annotator)}: **{markdown_text(label)}**"
                                    for annotator, label in row.votes))
    st.caption(f"Page {page} of {pages}; the most split samples first.")
