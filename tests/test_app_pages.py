"""AppTests: every page runs on a small real dataset and shows what it should."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def app(embedded_dataset, monkeypatch):
    monkeypatch.setenv("CURATION_DATASET", embedded_dataset.name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")

    def make(page: str | None = None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=180)
        at.run()
        if page:
            at.switch_page(page)
            at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


def _metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def test_overview_shows_counts_classes_and_embedding_model(app, embedded_dataset):
    at = app()
    assert at.title[0].value == f"Overview · {embedded_dataset.name}"
    metrics = _metrics(at)
    assert metrics["Samples"] == "60"
    assert metrics["Classes"] == "10"
    assert metrics["Embedded"] == "60 / 60"
    markdown = " ".join(m.value for m in at.markdown)
    assert "efficientnet-lite0-imagenet" in markdown and "embeddings_efficientnet_lite0_imagenet" in markdown
    assert at.sidebar.selectbox[0].value == embedded_dataset.name
    assert at.sidebar.selectbox[1].value == "ground_truth"
    assert at.session_state["dataset_name"] == embedded_dataset.name


def test_map_page_draws_every_embedded_sample(app):
    at = app("pages/map.py")
    assert at.title[0].value.startswith("Map · ")
    assert any(caption.value.startswith("60 samples.") for caption in at.caption)
    assert "Nothing selected yet." in [caption.value for caption in at.caption]
    colour_options = at.selectbox(key="map_color_by").options
    assert colour_options[:4] == ["label", "cluster (k-means)", "cluster (HDBSCAN)", "tags"]


def test_map_colour_by_kmeans_runs(app):
    at = app("pages/map.py")
    at.selectbox(key="map_color_by").select("cluster (k-means)").run()
    assert not at.exception
    assert not at.number_input(key="map_n_clusters").disabled


def test_map_selection_is_shown_and_tagged_into_the_dataset(app, embedded_dataset):
    at = app("pages/map.py")
    chosen = embedded_dataset.take(4, seed=3).values("id")
    at.session_state["selected_ids"] = chosen
    at.run()
    assert [h.value for h in at.subheader if h.value.startswith("Selection")] == ["Selection (4 samples)"]
    assert len(at.get("image")) == 4  # one cached thumbnail per selected sample
    at.text_input(key="tag_name").set_value("needs-review")
    [button for button in at.button if button.label == "Add tag"][0].click().run()
    assert not at.exception
    assert any("Tagged 4 samples with 'needs-review'" in s.value for s in at.success)
    embedded_dataset.reload()
    assert embedded_dataset.count_sample_tags().get("needs-review") == 4
    assert sorted(embedded_dataset.match_tags("needs-review").values("id")) == sorted(chosen)
    embedded_dataset.untag_samples("needs-review")


def test_data_page_reports_a_missing_source_by_name(app, tmp_path):
    at = app("pages/data.py")
    missing = tmp_path / "no-such-folder"
    at.text_input[0].set_value(str(missing))
    at.text_input[1].set_value("t-missing")
    at.button[0].click().run()
    assert any(str(missing) in e.value and "no such file" in e.value for e in at.error)


def test_data_page_imports_and_embeds_with_per_file_failures(app, small_class_tree, tmp_path):
    import shutil
    import fiftyone as fo

    source = tmp_path / "tree"
    shutil.copytree(small_class_tree / "bag", source / "bag")
    shutil.copytree(small_class_tree / "trouser", source / "trouser")
    (source / "bag" / "broken.png").write_bytes(b"")
    at = app("pages/data.py")
    at.text_input[0].set_value(str(source))
    at.text_input[1].set_value("t-app-import")
    at.button[0].click().run()
    assert not at.exception
    assert any("Imported 13 samples as **t-app-import**" in s.value for s in at.success)
    assert at.session_state["dataset_name"] == "t-app-import"
    at.selectbox[-2].select("efficientnet-lite0-imagenet")
    [button for button in at.button if button.label == "Compute embeddings"][0].click().run()
    assert not at.exception
    assert any("Embedded 12 new samples" in s.value and "1 skipped" in s.value for s in at.success)
    failures = at.dataframe[-1].value
    assert list(failures["reason"]) == ["empty file (0 bytes)"]
    fo.delete_dataset("t-app-import")


def test_pages_say_so_when_the_database_is_unusable(app, monkeypatch):
    from curation import database

    monkeypatch.setattr(database, "check_database",
                        lambda: database.DatabaseStatus(False, "uri", "cannot reach the MongoDB at FIFTYONE_DATABASE_URI='mongodb://x'"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert any("database is not usable" in e.value and "mongodb://x" in e.value for e in at.error)



def test_findings_page_runs_the_finders_and_lists_their_summaries(app, embedded_dataset):
    at = app("pages/findings.py")
    assert at.title[0].value == f"Findings · {embedded_dataset.name}"
    at.multiselect(key="findings_chosen").set_value(["duplicates", "outliers"])
    [b for b in at.button if b.label == "Run analysis"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "**duplicates**:" in text and "near-duplicate groups" in text and "**outliers**:" in text
    table = at.dataframe[0].value
    assert len(table) == 60 and "outlier_score" in table.columns


def test_duplicates_page_shows_groups_counts_and_threshold(app, embedded_dataset, fresh_name, monkeypatch):
    from curation.analysis import VERIFIER_INFO_KEY
    from curation.datasets import curation_info, update_curation_info

    clone = embedded_dataset.clone(fresh_name)
    update_curation_info(clone, **{VERIFIER_INFO_KEY: {}})  # not calibrated yet: cosine similarity
    monkeypatch.setenv("CURATION_DATASET", fresh_name)
    at = app("pages/duplicates.py")
    assert at.title[0].value == f"Duplicates · {fresh_name}"
    metrics = _metrics(at)
    assert set(metrics) == {"Groups", "Samples in groups", "Suggested for removal"}
    slider = at.slider[0]
    assert slider.label == "Similarity threshold" and slider.value == pytest.approx(0.95)
    assert any("by cosine similarity only" in c.value and "not calibrated" in c.value for c in at.caption)
    loose = slider.set_value(0.80).run()
    assert not loose.exception
    looser_groups = int(_metrics(loose)["Samples in groups"].replace(",", ""))
    assert looser_groups >= int(metrics["Samples in groups"].replace(",", ""))
    assert any("Leakage check unavailable" in i.value and "train/val/test tags" in i.value for i in loose.info)

    # Calibrating switches the page to verified pairs, with the calibration curve.
    calibrated = next(b for b in loose.button if b.label == "Calibrate on this dataset").click().run()
    assert not calibrated.exception, [e.value for e in calibrated.exception]
    field = curation_info(clone)["default_embeddings"]
    stored = curation_info(clone)[VERIFIER_INFO_KEY][field]
    slider = calibrated.slider[0]
    assert slider.label == "Verified probability threshold"
    assert slider.value == pytest.approx(max(round(stored["threshold"], 2), 0.01), abs=0.01)
    assert any(e.label.startswith("Calibration: probability >=") for e in calibrated.expander)
    assert set(_metrics(calibrated)) == {"Groups", "Samples in groups", "Suggested for removal"}


def test_mislabels_page_checks_labels_and_accepts_a_suggestion(app, small_class_tree, fresh_name, monkeypatch):
    import shutil
    from curation.datasets import load_dataset
    from curation.embeddings import compute_embeddings
    from curation.importers import import_dataset

    import_dataset(small_class_tree, fresh_name, format="classes")
    dataset = load_dataset(fresh_name)
    compute_embeddings(dataset, model="efficientnet-lite0-imagenet", num_workers=0)
    # Plant an obvious error: a trouser labelled as a bag.
    planted = dataset.match({"ground_truth.label": "trouser"}).first()
    planted.ground_truth.label = "bag"
    planted.save()
    monkeypatch.setenv("CURATION_DATASET", fresh_name)
    at = app("pages/mislabels.py")
    assert at.title[0].value == f"Suspected mislabels · {fresh_name}"
    assert any("not been checked yet" in info.value for info in at.info)
    [b for b in at.button if b.label == "Check labels now"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    at.slider(key="ml_min_score").set_value(0.0).run()
    at.selectbox(key="ml_given").select("bag").run()
    first = " ".join(m.value for m in at.markdown if m.value.startswith("given"))
    assert first.startswith("given **bag** → suggested **trouser**"), first
    accept = [b for b in at.button if b.label == "Accept 'trouser'"][0]
    accept.click().run()
    assert not at.exception
    planted.reload()
    neighbours = planted["mislabel_disagreeing_ids"]
    assert neighbours and all(dataset[n].ground_truth.label != "bag" for n in neighbours)
    assert planted.ground_truth.label == "trouser"
    assert planted["previous_label"] == "bag" and planted["decision"] == "relabel"
    assert planted["decision_source"] == "mislabels"


def test_balance_page_shows_counts_confusion_and_mix(app, embedded_dataset):
    at = app("pages/balance.py")
    assert at.title[0].value == f"Balance & coverage · {embedded_dataset.name}"
    metrics = _metrics(at)
    assert metrics["Classes"] == "10" and metrics["Imbalance (largest / smallest)"] == "1.0x"
    assert metrics["Classes below 5%"] == "0"
    table = at.dataframe[0].value
    assert table["samples"].tolist() == [6] * 10 and table["cv accuracy"].between(0, 1).all()
    at.slider(key="bal_min_share").set_value(0.2).run()
    assert _metrics(at)["Classes below 20%"] == "10"
    assert sum(m.value.startswith("- Collect more") for m in at.markdown) == 10
