"""AppTests of the label-quality pages: Annotators (agreement, consensus, disagreements) and Audit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
ANNOTATORS = ("ann", "bob", "cat")


@pytest.fixture(scope="module")
def voted(small_class_tree, tmp_path_factory):
    """The 60-image tree with 3 votes per image (bob wrong on every 4th, cat on every 3rd) and 5 gold samples."""
    import fiftyone as fo

    from curation.annotators import import_annotations
    from curation.datasets import load_dataset
    from curation.importers import import_dataset

    name = "t-label-quality"
    import_dataset(small_class_tree, name, format="classes", overwrite=True)
    dataset = load_dataset(name)
    ids, labels = dataset.values(["id", "ground_truth.label"])
    classes = sorted(set(labels))
    path = tmp_path_factory.mktemp("votes") / "votes.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "annotator", "label"])
        for i, (sample_id, label) in enumerate(zip(ids, labels)):
            other = classes[(classes.index(label) + 1) % len(classes)]
            writer.writerow([sample_id, "ann", label])
            writer.writerow([sample_id, "bob", other if i % 4 == 0 else label])
            writer.writerow([sample_id, "cat", other if i % 3 == 0 else label])
    report = import_annotations(dataset, path, format="csv")
    assert report.n_votes == 180
    dataset.select(ids[:5]).tag_samples("gold")
    yield dataset
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def _open(name: str, page: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("CURATION_DATASET", name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(page)
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, [b.label for b in at.button]
    return matches[0]


def test_annotators_page_shows_agreement_quality_gold_and_disagreements(voted, monkeypatch):
    from curation.annotators import agreement, read_votes

    at = _open(voted.name, "pages/agreement.py", monkeypatch)
    assert at.title[0].value == f"Annotators · {voted.name}"
    expected = agreement(read_votes(voted))
    metrics = _metrics(at)
    assert metrics["Krippendorff's alpha"] == f"{expected['alpha']:.2f}"
    assert metrics["Fleiss' kappa"] == f"{expected['kappa']:.2f}"
    assert metrics["Samples with votes"] == "60" and metrics["Votes"] == "180" and metrics["Annotators"] == "3"
    assert at.selectbox(key="ag_gold").value == "tag: gold"  # a "gold" tag is picked up by itself
    table = at.dataframe[0].value
    assert list(table["annotator"]) == ["ann", "bob", "cat"]  # by estimated quality
    assert list(table["samples"]) == [60, 60, 60]
    assert list(table["gold samples"]) == [5, 5, 5] and table["gold accuracy"].iloc[0] == 1.0
    assert all(" – " in text for text in table["gold 95% interval"])
    per_class = at.dataframe[1].value
    assert len(per_class) == 10 and per_class["votes"].sum() == 180
    assert len(at.get("plotly_chart")) == 1  # the kappa heat map
    split = sum(1 for i in range(60) if i % 4 == 0 or i % 3 == 0)
    assert f"Samples annotators disagree on ({split})" in [h.value for h in at.subheader]
    assert len(at.get("image")) == 12, len(at.get("image"))  # one page of thumbnails
    votes_text = " ".join(m.value for m in at.markdown)
    assert "ann: **" in votes_text and "bob: **" in votes_text and "cat: **" in votes_text
    at.number_input(key="ag_page").set_value(2).run()
    _ok(at)
    assert "Page 2 of" in " ".join(c.value for c in at.caption)


def test_annotators_page_writes_the_consensus_and_shows_errors_in_one_line(voted, monkeypatch):
    at = _open(voted.name, "pages/agreement.py", monkeypatch)
    at.selectbox(key="ag_method").select("dawid-skene")
    _button(at, "Compute and write consensus").click().run()
    _ok(at)
    assert any("Wrote the dawid-skene consensus of 60 samples" in s.value for s in at.success)
    voted.reload()
    assert voted.count("consensus") == 60 and voted.count("consensus_quality") == 60
    assert voted.values("consensus.label") == voted.values("ground_truth.label")  # ann is always right
    at.selectbox(key="ag_method").select("crowdlab")  # no embeddings in this dataset
    _button(at, "Compute and write consensus").click().run()
    _ok(at)
    assert any("crowdlab needs embeddings" in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="ag_into").set_value("ground_truth")
    at.selectbox(key="ag_method").select("majority")
    _button(at, "Compute and write consensus").click().run()
    _ok(at)
    assert any("ground_truth" in e.value and "\n" not in e.value for e in at.error), [e.value for e in at.error]


def test_annotators_page_without_votes_says_how_to_import(embedded_dataset, monkeypatch):
    at = _open(embedded_dataset.name, "pages/agreement.py", monkeypatch)
    infos = " ".join(i.value for i in at.info)
    assert "curation import-annotations --dataset test-embedded --from FILE" in infos
    assert not at.metric


def test_audit_page_starts_answers_and_reports(voted, monkeypatch):
    from curation.audit import audit_report

    at = _open(voted.name, "pages/audit.py", monkeypatch)
    assert at.title[0].value == f"Audit · {voted.name}"
    assert any("No audit yet" in i.value for i in at.info)
    at.number_input(key="au_size").set_value(12)
    at.selectbox(key="au_design").select("stratified")
    at.number_input(key="au_seed").set_value(3)
    _button(at, "Start audit").click().run()
    _ok(at)
    assert any("12 samples drawn (stratified design)" in s.value for s in at.success), [s.value for s in at.success]
    assert _metrics(at)["Answered"] == "0 / 12" and _metrics(at)["Pending"] == "12"
    assert _metrics(at)["Error rate"] == "—"
    assert "To review (12)" in [h.value for h in at.subheader]
    assert at.number_input(key="au_page").max == 2
    first = [b for b in at.button if b.label == "Correct"][0]
    first.click().run()
    _ok(at)
    wrong_key = [b for b in at.button if b.label == "Wrong"][0].key
    sample_id = wrong_key.removeprefix("au_wrong_")
    label_box = at.selectbox(key=f"au_label_{sample_id}")
    new_label = label_box.options[0]
    label_box.select(new_label)
    at.button(key=wrong_key).click().run()
    _ok(at)
    unsure = [b for b in at.button if b.label == "Unsure"][0]
    unsure.click().run()
    _ok(at)
    report = audit_report(voted)
    assert report["n_answered"] == 2 and report["n_wrong"] == 1 and report["n_unsure"] == 1
    metrics = _metrics(at)
    assert metrics["Answered"] == "2 / 12" and metrics["Pending"] == "9"
    assert metrics["Error rate"] == f"{report['error_rate']:.1%}"
    assert metrics["95% interval"] == f"{report['ci_low']:.1%} – {report['ci_high']:.1%}"
    assert metrics["Projected wrong labels"] == f"{report['projected_wrong']:,}"
    assert "To review (9)" in [h.value for h in at.subheader]
    assert voted[sample_id]["ground_truth"].label == new_label  # the wrong verdict relabelled it
    assert "verdicts in total reach ±2.0%" in " ".join(m.value for m in at.markdown)
    classes = at.dataframe[0].value
    assert classes["answered"].sum() == 2 and classes["wrong"].sum() == 1
    # a second start while this one is open: one line saying why, then replace it
    _button(at, "Start audit").click().run()
    _ok(at)
    assert any("is open (9 of 12 drawn samples unanswered)" in e.value for e in at.error), [e.value for e in at.error]
    at.checkbox(key="au_replace").check()
    at.selectbox(key="au_design").select("score")  # no mislabel scores here
    _button(at, "Start audit").click().run()
    _ok(at)
    assert any("score design needs current mislabel scores" in e.value for e in at.error)


def test_audit_page_on_unlabelled_dataset(tmp_path, monkeypatch, small_class_tree):
    import shutil
    import fiftyone as fo

    from curation.importers import import_dataset

    shutil.copytree(small_class_tree / "bag", tmp_path / "flat")
    import_dataset(tmp_path / "flat", "t-audit-unlabelled", format="images", overwrite=True)
    try:
        at = _open("t-audit-unlabelled", "pages/audit.py", monkeypatch)
        assert "This dataset has no classification labels, so there is nothing to audit." in [i.value for i in at.info]
        at.switch_page("pages/agreement.py")
        at.run()
        _ok(at)
        assert any("curation import-annotations" in i.value for i in at.info)
    finally:
        fo.delete_dataset("t-audit-unlabelled")


def test_annotators_page_auto_consensus_uses_crowdlab_with_embeddings(embedded_dataset, monkeypatch, tmp_path):
    from curation.annotators import import_annotations

    dataset = embedded_dataset.clone("t-label-quality-embedded", persistent=True)
    try:
        ids, labels = dataset.values(["id", "ground_truth.label"])
        rows = ["id,annotator,label"] + [f"{s},{a},{label}" for s, label in zip(ids, labels) for a in ANNOTATORS]
        rows += [f"{ids[0]},dan,{'bag' if labels[0] != 'bag' else 'coat'}"]
        (tmp_path / "votes.csv").write_text("\n".join(rows) + "\n")
        import_annotations(dataset, tmp_path / "votes.csv")
        at = _open(dataset.name, "pages/agreement.py", monkeypatch)
        assert at.selectbox(key="ag_method").value == "auto"
        _button(at, "Compute and write consensus").click().run()
        _ok(at)
        assert any("Wrote the crowdlab consensus of 60 samples" in s.value for s in at.success), \
            [s.value for s in at.success] + [e.value for e in at.error]
        dataset.reload()
        assert set(dataset.distinct("consensus.method")) == {"crowdlab"}
    finally:
        dataset.delete()
