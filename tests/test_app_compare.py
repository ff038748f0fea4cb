"""AppTests of the Compare page: a 10-class dataset against a 2-class batch, a batch embedded
with another model, and a dataset with nothing to compare it with."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from test_compare import BATCH, MISSING, other_model_batch, two_class_batch  # noqa: F401  (fixtures)

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGE = "pages/compare.py"


def _open(name: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("CURATION_DATASET", name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page(PAGE)
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def _unescape(text: str) -> str:
    return text.replace("\\", "")


def test_compare_page_shows_the_missing_classes_and_the_shift(embedded_dataset, two_class_batch, monkeypatch):
    at = _open(embedded_dataset.name, monkeypatch)
    at.selectbox(key="cmp_other").select(BATCH).run()
    _ok(at)
    assert at.title[0].value == f"Compare · {embedded_dataset.name}"
    metrics = _metrics(at)
    assert metrics["Classes missing from B"] == "8" and metrics["New classes in B"] == "0"
    assert float(metrics["Class mix p-value"]) < 1e-6
    assert float(metrics["Domain AUC"]) > 0.75
    warnings = [_unescape(w.value) for w in at.warning]
    assert f"Missing from B (8 of A's classes): {', '.join(MISSING)}" in warnings, warnings
    text = " ".join(_unescape(m.value) for m in at.markdown)
    assert "The class distributions **differ**" in text and "B differs from A" in text
    subheaders = [s.value for s in at.subheader]
    assert "Classes" in subheaders and "Coverage: where B falls relative to A" in subheaders and "Shift" in subheaders
    regions = next(s for s in subheaders if s.startswith("Regions of A that B lacks ("))
    assert not regions.startswith("Regions of A that B lacks (0 of")
    assert any(s.startswith("Near duplicates across the datasets (") for s in subheaders)
    assert "Labels the other dataset disagrees with" in subheaders
    assert "samples of B disagree with their neighbours in A" in text
    assert len(at.get("plotly_chart")) == 3  # class shares, coverage per class, region shares
    classes = at.dataframe[0].value
    assert sorted(classes.loc[classes["status"] == "missing from B", "class"]) == MISSING
    assert len(at.get("image")) >= 6  # example images of the regions B lacks


def test_compare_page_says_when_the_models_differ(embedded_dataset, other_model_batch, monkeypatch):
    at = _open(embedded_dataset.name, monkeypatch)
    at.selectbox(key="cmp_other").select(other_model_batch.name).run()
    _ok(at)
    assert _metrics(at)["Classes missing from B"] == "8"  # the class section still works
    skipped = [_unescape(w.value) for w in at.warning if "are skipped" in w.value]
    assert skipped and "different models" in skipped[0] and "clip-vit-b32-openai" in skipped[0]
    assert "efficientnet-lite0-imagenet at 160 px" in skipped[0]
    assert "Shift" not in [s.value for s in at.subheader]


def test_compare_page_without_a_second_dataset_says_so(embedded_dataset, monkeypatch):
    from curation import datasets

    monkeypatch.setattr(datasets, "list_dataset_names", lambda: [embedded_dataset.name])
    at = _open(embedded_dataset.name, monkeypatch)
    info = [_unescape(i.value) for i in at.info]
    assert any(f"There is no second dataset to compare {embedded_dataset.name} with" in text.replace("**", "")
               for text in info), info
    assert not at.metric and not at.get("plotly_chart")


def test_compare_page_with_an_unlabelled_batch_compares_the_embeddings_only(embedded_dataset, two_class_batch,
                                                                           fresh_name, monkeypatch):
    unlabelled = two_class_batch.clone(fresh_name)
    unlabelled.delete_sample_field("ground_truth")
    at = _open(embedded_dataset.name, monkeypatch)
    at.selectbox(key="cmp_other").select(fresh_name).run()
    _ok(at)
    assert any("Classes not compared" in i.value and "no classification field" in i.value for i in at.info)
    assert _metrics(at)["Classes missing from B"] == "—"
    subheaders = [s.value for s in at.subheader]
    assert "Coverage: where B falls relative to A" in subheaders and "Shift" in subheaders
    assert "Not checked: labels are needed on both sides." in [c.value for c in at.caption]
