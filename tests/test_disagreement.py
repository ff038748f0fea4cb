"""The disagreement finder: split votes with a weak consensus, or a consensus against the label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.annotators import votes_from_table
from curation.finders.base import FinderInputError
from curation.finders.disagreement import DisagreementConfig, find_disagreement
from finder_helpers import make_context


def _context(votes_rows, labels, n=8):
    rng = np.random.default_rng(0)
    context = make_context(rng.normal(size=(n, 8)), labels=labels, k=3)
    context.annotator_votes = votes_from_table(votes_rows)
    return context


def test_split_votes_and_contradicted_labels_are_flagged():
    rows = []
    for sample in range(6):  # s0..s5: unanimous "cat"
        rows += [(f"s{sample}", annotator, "cat") for annotator in ("ann", "bob", "cy")]
    rows += [("s6", "ann", "cat"), ("s6", "bob", "dog"), ("s6", "cy", "bird")]  # a three-way split
    context = _context(rows, labels=["cat"] * 5 + ["dog", "cat", None])  # s5 labelled dog, voted cat
    result = find_disagreement(context, DisagreementConfig(method="dawid-skene"))
    table = result.table
    assert table.loc["s0", "consensus_label"] == "cat" and table.loc["s0", "annotator_agreement"] == 1.0
    assert not table.loc["s0", "is_issue"]
    assert table.loc["s5", "is_issue"] and table.loc["s5", "consensus_label"] == "cat"  # contradicts its label
    assert table.loc["s6", "is_issue"] and table.loc["s6", "annotator_agreement"] == pytest.approx(1 / 3)
    assert table.loc["s6", "score"] == pytest.approx(1 - table.loc["s6", "consensus_quality"])
    assert np.isnan(table.loc["s7", "score"]) and not table.loc["s7", "is_issue"]  # no votes
    assert table["score"].dropna().between(0, 1).all()
    assert "2 of 7 voted samples flagged" in result.summary and result.info["method"] == "dawid-skene"


def test_without_votes_or_with_bad_settings_the_finder_says_why():
    context = make_context(np.eye(4), labels=["a", "b", "a", "b"], k=2)
    with pytest.raises(FinderInputError, match="run `curation import-annotations` first"):
        find_disagreement(context)
    context.annotator_votes = votes_from_table([("elsewhere", "ann", "a"), ("elsewhere", "bob", "b")])
    with pytest.raises(FinderInputError, match="none of the voted samples is among the analysed"):
        find_disagreement(context)
    context.annotator_votes = votes_from_table([("s0", "ann", "a"), ("s0", "bob", "b")])
    with pytest.raises(FinderInputError, match="quality_threshold: expected a value in"):
        find_disagreement(context, DisagreementConfig(quality_threshold=0))


def test_analyze_reads_votes_fills_the_findings_and_the_queue(embedded_dataset, fresh_name, tmp_path):
    from curation.analysis import analyze, findings_table
    from curation.annotators import import_annotations
    from curation.review import review_queue

    dataset = embedded_dataset.clone(fresh_name)
    ids, labels = dataset.values(["id", "ground_truth.label"])
    lines = ["id,annotator,label"]
    for index, (sample_id, label) in enumerate(zip(ids, labels)):
        for annotator in ("ann", "bob", "cy"):
            vote = label
            if index < 4 and annotator != "ann":  # the first four: two of three say "bag"
                vote = "bag" if label != "bag" else "coat"
            lines.append(f"{sample_id},{annotator},{vote}")
    votes = tmp_path / "votes.csv"
    votes.write_text("\n".join(lines) + "\n")
    import_annotations(dataset, votes, format="csv")
    report = analyze(dataset, ["disagreement"])
    assert "disagreement" in report.results, (report.skipped, report.errors)
    table = findings_table(dataset).set_index("id")
    assert {"consensus_label", "consensus_quality", "annotator_agreement"} <= set(table.columns)
    assert table["consensus_label"].notna().all()
    flagged = set(dataset.match({"disagreement_flag": True}).values("id"))
    assert set(ids[:4]) <= flagged  # the consensus there differs from the label
    queue = review_queue(dataset, "ground_truth")
    assert set(ids[:4]) <= set(queue[queue["finders"].map(lambda f: "disagreement" in f)]["id"])
    reasons = queue.set_index("id").loc[ids[0], "reason"]
    assert "annotators disagree" in reasons


def test_analyze_without_votes_skips_the_finder_with_a_reason(embedded_dataset, fresh_name):
    from curation.analysis import analyze

    report = analyze(embedded_dataset.clone(fresh_name), ["disagreement"])
    assert "import-annotations" in report.skipped["disagreement"]
