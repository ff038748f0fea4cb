"""AppTests for the curation pages: the review queue and the export page (splits, exports, relabel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fiftyone import ViewField as F
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="module")
def analysed(embedded_dataset):
    """A clone of the 60-sample dataset with every finder run and a planted label error."""
    from curation.analysis import analyze

    dataset = embedded_dataset.clone()
    dataset.persistent = True
    planted = dataset.match({"ground_truth.label": "trouser"}).first()
    planted.ground_truth.label = "bag"
    planted.save()
    analyze(dataset)
    yield dataset
    dataset.delete()


@pytest.fixture
def app(analysed, monkeypatch, tmp_path):
    monkeypatch.setenv("CURATION_DATASET", analysed.name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    monkeypatch.setenv("CURATION_EXPORT_DIR", str(tmp_path / "exports"))

    def make(page: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=180)
        at.run()
        at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield make
    from curation.decisions import clear_decision

    clear_decision(analysed, analysed.values("id"))


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_review_queue_lists_flagged_samples_with_reasons(app, analysed):
    from curation.review import review_queue

    at = app("pages/review.py")
    assert at.title[0].value == f"Review queue · {analysed.name}"
    expected = review_queue(analysed, "ground_truth")
    assert f"{len(expected):,} samples to review" in [h.value for h in at.subheader]
    cards = [m.value for m in at.markdown if "priority **" in m.value]
    assert len(cards) == min(20, len(expected))
    assert cards[0].startswith(f"**{expected['label'].iloc[0]}**") and f"{expected['priority'].iloc[0]:.2f}" in cards[0]
    planted = analysed.match({"ground_truth.label": "bag"}).match({"mislabel_flag": True})
    assert len(planted)  # the trouser labelled "bag" is in the queue with the suggestion
    assert any("→ suggested **trouser**" in card for card in cards)


def test_review_actions_store_decisions_and_undo_restores(app, analysed):
    at = app("pages/review.py")
    first = at.session_state  # noqa: F841  (the page's state is per AppTest)
    from curation.review import review_queue

    top = review_queue(analysed, "ground_truth")["id"].iloc[0]
    _button(at, "Remove").click().run()  # the first card's Remove
    assert not at.exception, [e.value for e in at.exception]
    assert analysed[top]["decision"] == "remove" and analysed[top]["decision_source"] == "review"
    assert top not in set(review_queue(analysed, "ground_truth")["id"])
    assert any("1 sample removed" in s.value for s in at.success)
    _button(at, "Undo").click().run()
    assert analysed[top]["decision"] is None


def test_review_accepts_the_suggested_label(app, analysed):
    at = app("pages/review.py")
    at.multiselect(key="rv_finders").set_value(["mislabels"]).run()
    at.multiselect(key="rv_classes").set_value(["bag"]).run()
    sample = analysed.match({"ground_truth.label": "bag", "mislabel_flag": True, "suggested_label": "trouser"}).first()
    _button(at, "Accept").click().run()
    assert not at.exception
    sample.reload()
    assert sample.ground_truth.label == "trouser" and sample["previous_label"] == "bag"


def test_review_bulk_action_on_the_filtered_queue(app, analysed):
    at = app("pages/review.py")
    at.multiselect(key="rv_finders").set_value(["outliers"]).run()
    count = len(analysed.match({"outlier_flag": True}))
    at.text_input(key="rv_reason").set_value("odd ones").run()
    at.selectbox(key="rv_decision").select("annotate").run()
    _button(at, f"Apply to {count:,} sample{'' if count == 1 else 's'}").click().run()
    assert not at.exception
    decided = analysed.match({"decision": "annotate"})
    assert len(decided) == count and set(decided.values("decision_reason")) == {"odd ones"}


def test_export_page_previews_saves_splits_and_exports(app, analysed, tmp_path):
    at = app("pages/export.py")
    assert at.title[0].value == f"Export · {analysed.name}"
    assert {m.label for m in at.metric} == {"Samples", "Decided remove", "Relabelled", "Sent to annotation"}
    at.selectbox(key="sp_balance").select("cap").run()
    at.number_input(key="sp_cap").set_value(4).run()
    _button(at, "Preview split").click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table.columns[:3]) == ["train", "val", "test"] and (table["train"] <= 4).all()
    _button(at, "Save split to the dataset").click().run()
    assert not at.exception
    assert set(analysed.distinct("curation_split")) == {"train", "val", "test"}
    at.selectbox(key="ex_format").select("folders").run()
    at.selectbox(key="ex_split_field").select("curation_split").run()
    out = tmp_path / "export-here"
    at.text_input(key="ex_out_folders").set_value(str(out)).run()
    exported = len(analysed.exists("curation_split"))
    _button(at, f"Export {exported:,} samples").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"Exported {exported:,} samples to {out}" in s.value for s in at.success)
    manifest = json.loads((out / "provenance.json").read_text())
    assert manifest["splits"]["config"]["balance"] == "cap" and manifest["splits"]["config"]["cap"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "test", "train", "val"]
    _button(at, f"Export {exported:,} samples").click().run()  # same directory again: refused, said so
    assert any("already exists" in e.value for e in at.error)


def test_export_page_writes_a_relabel_task(app, analysed, tmp_path):
    from curation.decisions import record_decision

    record_decision(analysed, analysed.values("id")[:3], "annotate", reason="check")
    at = app("pages/export.py")
    assert [m.value for m in at.metric if m.label == "Sent to annotation"] == ["3"]
    out = tmp_path / "task"
    at.text_input(key="rl_out_cvat").set_value(str(out)).run()
    _button(at, "Export task").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (out / "annotations.xml").exists() and len(list((out / "images").iterdir())) == 3


def test_overview_shows_where_the_curation_stands(app, analysed):
    from curation.decisions import record_decision
    from curation.review import review_queue

    queue = review_queue(analysed, "ground_truth")
    record_decision(analysed, queue["id"].iloc[:3].tolist(), "remove", reason="test")
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["To review"] == f"{len(queue) - 3:,}" and metrics["Removed"] == "3"
    assert any(c.value.startswith("Findings of ") for c in at.caption)


def test_export_page_filters_by_decision_and_score(app, analysed, tmp_path):
    from curation.decisions import record_decision

    ids = analysed.values("id")
    record_decision(analysed, ids[:5], "keep", reason="looked at it")
    at = app("pages/export.py")
    at.selectbox(key="ex_format").select("csv").run()
    at.selectbox(key="ex_split_field").select("(no splits)").run()  # another test may have saved a split
    at.multiselect(key="ex_decisions").set_value(["keep"]).run()
    assert any(b.label == "Export 5 samples" for b in at.button)
    at.multiselect(key="ex_decisions").set_value([]).run()
    at.selectbox(key="ex_score_field").select("outlier_score").run()
    at.slider(key="ex_score_cut").set_value(0.5).run()
    kept = len(analysed.match((F("outlier_score") == None) | (F("outlier_score") < 0.5)))  # noqa: E711
    assert any(b.label == f"Export {kept:,} samples" for b in at.button), [b.label for b in at.button]


def test_review_relabels_one_sample_to_a_chosen_class(app, analysed):
    from curation.review import review_queue

    at = app("pages/review.py")
    top = review_queue(analysed, "ground_truth").iloc[0]
    choice = next(c for c in sorted(analysed.distinct("ground_truth.label")) if c not in (top["label"], top["suggested_label"]))
    at.selectbox(key=f"rv_class_{top['id']}").select(choice).run()
    _button(at, f"Relabel to {choice}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    sample = analysed[top["id"]]
    sample.reload()
    assert sample.ground_truth.label == choice and sample["previous_label"] == top["label"]
    assert sample["decision_reason"] == f"relabelled to {choice} in review"
