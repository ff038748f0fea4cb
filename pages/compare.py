"""Compare: the current dataset (A) against another one (B), for example a new batch."""

import streamlit as st

from curation import datasets as ds
from curation.compare import CompareConfig, compare_datasets
from curation.compare_plots import class_share_figure, class_table, coverage_figure, coverage_table, \
    region_share_figure, region_table, shift_table
from curation.images import thumbnail_path
from pages.common import dataset_names, errors_shown, markdown_text, open_page, show_thumbnails

GALLERY_LIMIT = 24
PAIR_LIMIT = 20
REGIONS_SHOWN = 6

dataset, _ = open_page("Compare", needs_embeddings=False)
others = [name for name in dataset_names() if name != dataset.name]
if not others:
    st.info(f"There is no second dataset to compare **{markdown_text(dataset.name)}** with. Import one (for example "
            "a new batch) on the **Data** page or run `curation import SOURCE --name NAME`, embed it with the same "
            "model, then pick it here.")
    st.stop()

controls = st.columns([3, 2, 1, 1, 1], vertical_alignment="bottom")
other = controls[0].selectbox("Compare with (B)", others, key="cmp_other",
                              help="A is the dataset picked in the sidebar; B is usually the new batch")
dataset_b = ds.load_dataset(other)
label_fields_b = ds.label_fields(dataset_b)
label_field_b = None
if label_fields_b:
    default_b = ds.default_label_field(dataset_b)
    label_field_b = controls[1].selectbox("B's label field", label_fields_b, index=label_fields_b.index(default_b),
                                          key=f"cmp_label_b_{other}")
else:
    controls[1].caption("B has no classification labels.")
k = controls[2].number_input("Neighbours (k)", 1, 50, CompareConfig.k, key="cmp_k",
                             help="neighbours in the other dataset that vote on a sample's label")
far_quantile = controls[3].number_input("Far quantile", 0.5, 0.999, CompareConfig.far_quantile, 0.005, format="%.3f",
                                        key="cmp_far", help="B is far from A beyond this quantile of A's own "
                                        "nearest-neighbour distances (0.99: 1% of B is far if B is drawn like A)")
vote_share = controls[4].number_input("Vote share", 0.55, 1.0, CompareConfig.min_vote_share, 0.05, format="%.2f",
                                      key="cmp_vote", help="share of the neighbours that must agree on another class")


@st.cache_data(show_spinner="Comparing the datasets (neighbours across them, a domain classifier, regions)…",
               max_entries=8)
def comparison_of(name_a: str, name_b: str, label_field_a, label_field_b, field_a, config: CompareConfig,
                  versions: tuple):
    return compare_datasets(ds.load_dataset(name_a), ds.load_dataset(name_b), label_field_a=label_field_a,
                            label_field_b=label_field_b, embeddings_field=field_a, config=config)


def _versions(collection) -> tuple:
    """What invalidates a cached comparison: sample and embedding counts (this session's edits bump data_version)."""
    return (len(collection), tuple((status.field, status.embedded) for status in ds.embedding_statuses(collection)))


config = CompareConfig(k=int(k), far_quantile=float(far_quantile), min_vote_share=float(vote_share))
result = None
with errors_shown():
    result = comparison_of(dataset.name, other, st.session_state["label_field"], label_field_b,
                           st.session_state["embedding_field"], config,
                           (_versions(dataset), _versions(dataset_b), st.session_state["data_version"]))
if result is None:
    st.stop()


def percent(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def p_text(value) -> str:
    if value is None:
        return "—"
    return "< 1e-300" if value == 0 else f"{value:.2g}"


# ---------------------------------------------------------------- classes
st.caption(f"A: **{markdown_text(result.name_a)}** ({result.samples_a:,} samples) · B: **{markdown_text(result.name_b)}** "
           f"({result.samples_b:,} samples)")
test = result.class_test
metrics = st.columns(6)
metrics[0].metric("Classes missing from B", "—" if result.class_skipped else len(result.missing_in_b))
metrics[1].metric("New classes in B", "—" if result.class_skipped else len(result.new_in_b))
metrics[2].metric("Class mix p-value", p_text(test.get("p_value")), help="chi-square test of homogeneity: small means "
                  "the class distributions differ")
metrics[3].metric("Cramér's V", "—" if test.get("cramers_v") is None else f"{test['cramers_v']:.2f}",
                  help="size of the class-mix difference: 0 same mix, 1 no class in common")
coverage = result.coverage
shift = result.shift
metrics[4].metric("B far from A", percent(coverage["share_far"]) if coverage else "—",
                  help="share of B further from A than A's own samples are from each other (the far quantile)")
metrics[5].metric("Domain AUC", "—" if not shift or shift.get("auc") is None else f"{shift['auc']:.2f}",
                  help="how well a classifier tells B from A: 0.5 not at all, 1.0 perfectly")

st.subheader("Classes")
if result.class_skipped:
    st.info(f"Classes not compared: {markdown_text(result.class_skipped)}.")
else:
    if result.missing_in_b:
        st.warning(f"Missing from B ({len(result.missing_in_b)} of A's classes): "
                   + ", ".join(markdown_text(name) for name in result.missing_in_b))
    if result.new_in_b:
        st.info("New in B (not in A): " + ", ".join(markdown_text(name) for name in result.new_in_b))
    if "reason" in test:
        st.caption(f"No test: {markdown_text(test['reason'])}.")
    else:
        verdict = "differ" if test["p_value"] < 0.05 else "do not differ significantly"
        st.markdown(f"The class distributions **{verdict}**: chi-square {test['chi2']:.1f} with {test['dof']} degrees "
                    f"of freedom, p {'' if test['p_value'] == 0 else '= '}{p_text(test['p_value'])}, Cramér's V {test['cramers_v']:.2f}."
                    + (f" {test['small_expected_cells']} cells expect fewer than 5 samples, so the p-value is rough."
                       if test["small_expected_cells"] else ""))
    left, right = st.columns([1, 1])
    left.plotly_chart(class_share_figure(result), width="stretch", key="cmp_classes")
    right.dataframe(class_table(result), hide_index=True, width="stretch",
                    column_config={"A share": st.column_config.NumberColumn(format="%.3f"),
                                   "B share": st.column_config.NumberColumn(format="%.3f"),
                                   "adjusted residual": st.column_config.NumberColumn(format="%+.1f")})
    st.caption("Adjusted residual: how many standard errors B's count of a class is above (+) or below (−) what A's "
               "mix predicts; beyond ±2 the class drives the difference.")

if result.embedding_skipped:
    st.warning(f"Coverage, shift, regions, near duplicates and label disagreements are skipped: "
               f"{result.embedding_skipped}")
    for note in result.notes:
        st.caption(markdown_text(note))
    st.stop()

embeddings = result.embeddings
st.caption(f"Embeddings: {markdown_text(embeddings['model_a'])}, {embeddings['dimension']}-d; "
           f"{embeddings['embedded_a']:,} samples of A and {embeddings['embedded_b']:,} of B embedded.")

# ---------------------------------------------------------------- coverage
st.subheader("Coverage: where B falls relative to A")
st.markdown(f"**{percent(coverage['share_far'])}** of B ({coverage['n_far']:,} of {coverage['n']:,}) is far from "
            f"everything in A; about {percent(coverage['expected_share_if_alike'])} would be if B were drawn like A.")
if result.coverage_reverse:
    st.markdown(f"**{percent(result.coverage_reverse['share_far'])}** of A is far from everything in B "
                "(what the batch does not reach).")
left, right = st.columns([3, 2])
left.plotly_chart(coverage_figure(result), width="stretch", key="cmp_coverage")
right.dataframe(coverage_table(result), hide_index=True, width="stretch",
                column_config={"share far": st.column_config.NumberColumn(format="%.3f"),
                               "median distance to A": st.column_config.NumberColumn(format="%.3f")})
st.caption(coverage["method"] + ".")
if len(result.far_b):
    with st.expander(f"B's samples furthest from A ({len(result.far_b):,})"):
        far = result.far_b.assign(caption=[f"{label or ''} · distance {distance:.3f}"
                                           for label, distance in zip(result.far_b["label"], result.far_b["distance"])])
        show_thumbnails(far, limit=GALLERY_LIMIT, caption_column="caption")

# ---------------------------------------------------------------- shift
st.subheader("Shift")
st.markdown(shift["verdict"] + ".")
st.dataframe(shift_table(result), hide_index=True, width="stretch",
             column_config={"AUC": st.column_config.NumberColumn(format="%.3f"),
                            "p-value": st.column_config.NumberColumn(format="%.2g")})
st.caption(shift["method"] + ".")

# ---------------------------------------------------------------- regions
regions = result.regions
st.subheader(f"Regions of A that B lacks ({regions['n_lacking']} of {regions['n_regions']})")
st.plotly_chart(region_share_figure(result), width="stretch", key="cmp_regions")
if regions["n_lacking"]:
    st.markdown(f"They hold **{percent(regions['share_a_in_lacking'])}** of A. The A samples nearest each region's "
                "centre show what B is missing:")
    st.dataframe(region_table(result), hide_index=True, width="stretch",
                 column_config={"A share": st.column_config.NumberColumn(format="%.3f"),
                                "B share": st.column_config.NumberColumn(format="%.3f"),
                                "p-value": st.column_config.NumberColumn(format="%.2g")})
    lacking = regions["table"][regions["table"]["lacking"]].head(REGIONS_SHOWN)
    for region, examples, dominant in zip(lacking["region"], lacking["examples_a"], lacking["dominant_classes"]):
        st.markdown(f"**Region {region}** · " + (", ".join(f"{markdown_text(name)} {share:.0%}"
                                                          for name, share in dominant) or "unlabelled"))
        cells = st.columns(6)
        for cell, example in zip(cells, examples):
            thumb = thumbnail_path(example["filepath"])
            if thumb is None:
                cell.warning("cannot show this image")
            else:
                cell.image(str(thumb), width="stretch")
else:
    st.caption("B reaches every region of A in about A's proportions (no region where B's share is at most half of A's "
               "and significantly so).")
st.caption(regions["method"] + ".")

# ---------------------------------------------------------------- duplicates across
pairs = result.duplicates
st.subheader(f"Near duplicates across the datasets ({len(pairs):,} pairs)")
st.caption(f"Cosine similarity ≥ {result.duplicate_threshold:.3f} ({markdown_text(result.duplicate_threshold_source)}).")
if not len(pairs):
    st.caption("No image of B is a near duplicate of one in A.")
for pair in pairs.head(PAIR_LIMIT).itertuples(index=False):
    with st.container(border=True):
        cells = st.columns([1, 1, 4], vertical_alignment="center")
        for cell, side, path, label in ((cells[0], "B", pair.filepath_b, pair.label_b),
                                        (cells[1], "A", pair.filepath_a, pair.label_a)):
            thumb = thumbnail_path(path)
            if thumb is None:
                cell.warning("cannot show this image")
            else:
                cell.image(str(thumb), width="stretch")
            cell.caption(f"{side} · {markdown_text(label or 'unlabelled')}")
        differ = " · **labels differ**" if pair.label_a != pair.label_b else ""
        cells[2].markdown(f"similarity **{pair.similarity:.3f}**{differ}")
if len(pairs) > PAIR_LIMIT:
    st.caption(f"Showing {PAIR_LIMIT} of {len(pairs):,}; `curation compare --dataset {result.name_a} --with "
               f"{result.name_b} --json` lists them all.")

# ---------------------------------------------------------------- label disagreements
votes = result.disagreements
st.subheader("Labels the other dataset disagrees with")
if result.class_skipped:
    st.caption("Not checked: labels are needed on both sides.")
else:
    count_b = int((votes["side"] == "b").sum())
    count_a = int((votes["side"] == "a").sum())
    st.caption(f"Samples whose label loses to at least {config.min_vote_share:.0%} of their {config.k} nearest "
               "neighbours in the other dataset (samples far from the other dataset, or of a class it lacks, are not "
               "judged).")
    st.markdown(f"**{count_b:,}** samples of B disagree with their neighbours in A, **{count_a:,}** of A with theirs "
                "in B.")
    side = st.segmented_control("Samples of", ["B judged by A", "A judged by B"], default="B judged by A",
                                key="cmp_side")
    chosen = votes[votes["side"] == ("a" if side == "A judged by B" else "b")]
    if not len(chosen):
        st.caption("None.")
    else:
        gallery = chosen.assign(caption=[f"{label} → {suggested} ({share:.0%})" for label, suggested, share
                                         in zip(chosen["label"], chosen["suggested"], chosen["vote_share"])])
        show_thumbnails(gallery, limit=GALLERY_LIMIT, caption_column="caption")

for note in result.notes:
    st.caption(f"Note: {markdown_text(note)}")
