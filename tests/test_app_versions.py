"""AppTests of the Versions page (snapshot list, diff, restore, undo) and the Quality page (the trend)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
FLAGGED = 6  # samples flagged as suspected mislabels in v1
RELABELLED = 3  # of them relabelled (a decision: no longer open) before v2


def _clean_clone(embedded_dataset, name: str):
    """A clone of the 60-sample dataset without decisions or finder results (other tests may have made some)."""
    from curation.analysis import RUN_FIELD, flag_fields
    from curation.decisions import DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD

    ours = [*DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD, RUN_FIELD, *flag_fields().values()]
    present = [field for field in ours if embedded_dataset.has_sample_field(field)]
    return embedded_dataset.exclude_fields(present).clone(name)


def _labels(dataset) -> dict[str, str]:
    dataset.reload()
    return dict(zip(*dataset.values(["id", "ground_truth.label"])))


@pytest.fixture
def versioned(embedded_dataset):
    """A clone with snapshots v1 (6 suspected mislabels, every sample in split "train") and v2 (3 of
    them relabelled to "bag").

    Yields ``(dataset, labels_v1, labels_v2, relabelled_ids)``. The mislabel flags are written
    without a run stamp, which counts as a finding (see ``curation.analysis.current_values``).
    """
    from curation.decisions import apply_relabel
    from curation.snapshots import create_snapshot

    dataset = _clean_clone(embedded_dataset, f"t-versions-{uuid.uuid4().hex[:8]}")
    try:
        ids, labels = dataset.values(["id", "ground_truth.label"])
        flagged = [sample_id for sample_id, label in zip(ids, labels) if label != "bag"][:FLAGGED]
        dataset.set_values("mislabel_flag", [sample_id in flagged for sample_id in ids])
        dataset.set_values("curation_split", ["train"] * len(ids))
        create_snapshot(dataset, "v1", note="before cleaning")
        labels_v1 = _labels(dataset)
        relabelled = flagged[:RELABELLED]
        apply_relabel(dataset, relabelled, "bag", label_field="ground_truth", source="test")
        create_snapshot(dataset, "v2", note="three relabelled")
        yield dataset, labels_v1, _labels(dataset), relabelled
    finally:
        dataset.delete()


@pytest.fixture
def bare(embedded_dataset):
    """A clone without any snapshot."""
    dataset = _clean_clone(embedded_dataset, f"t-versions-bare-{uuid.uuid4().hex[:8]}")
    try:
        yield dataset
    finally:
        dataset.delete()


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


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _texts(elements) -> str:
    return " ".join(_plain(element.value) for element in elements)


def _plain(text: str) -> str:
    """Text the page escaped for markdown (names and labels are shown as typed) without the escapes."""
    return text.replace("\\", "")


def test_versions_page_lists_snapshots_and_shows_the_diff_with_its_transition_matrix(versioned, monkeypatch):
    dataset, labels_v1, _, relabelled = versioned
    at = _open(dataset.name, "pages/versions.py", monkeypatch)
    assert at.title[0].value == f"Versions · {dataset.name}"
    listing = at.dataframe[0].value
    assert list(listing["name"]) == ["v1", "v2"]
    assert list(listing["kind"]) == ["manual", "manual"] and list(listing["samples"]) == [60, 60]
    assert list(listing["note / reason"]) == ["before cleaning", "three relabelled"]
    assert all(size.endswith("KB") or size.endswith(" B") for size in listing["size"])
    assert at.selectbox(key="ve_b").value == "current"  # B defaults to the current state

    at.selectbox(key="ve_a").select("v1")
    at.selectbox(key="ve_b").select("v2").run()
    _ok(at)
    metrics = _metrics(at)
    assert metrics["Relabelled"] == str(RELABELLED) and metrics["Decisions changed"] == str(RELABELLED)
    assert metrics["Split moves"] == metrics["Tag changes"] == metrics["Added"] == metrics["Removed"] == "0"
    assert metrics["Suspected mislabels"] == str(FLAGGED - RELABELLED)
    assert [m.delta for m in at.metric if m.label == "Suspected mislabels"] == [f"-{RELABELLED}"]
    heatmaps = [figure for figure in _figures(at) if figure["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == 1
    matrix = heatmaps[0]["data"][0]
    assert matrix["x"] == ["bag"] and sorted(matrix["y"]) == sorted({labels_v1[i] for i in relabelled})
    assert sum(value for row in matrix["z"] for value in row if value) == RELABELLED
    markdown = _texts(at.markdown)
    assert f"Relabelled ({RELABELLED})" in markdown and f"Decision changes ({RELABELLED})" in markdown
    assert len(at.get("image")) == 2 * RELABELLED  # one thumbnail per change in each gallery
    captions = _texts(at.caption)
    for sample_id in relabelled:
        assert f"{labels_v1[sample_id]} → bag" in captions
    assert "— → relabel · bag" in captions


def test_versions_page_compares_the_latest_snapshot_with_now_and_shows_a_few_dozen_per_gallery(versioned,
                                                                                                  monkeypatch):
    dataset, *_ = versioned
    ids = dataset.values("id")
    dataset.set_values("curation_split", ["val"] * len(ids))  # every sample moves: more than a gallery shows
    dataset.select(ids[:2]).tag_samples("checked")
    at = _open(dataset.name, "pages/versions.py", monkeypatch)
    assert at.selectbox(key="ve_a").value == "v2" and at.selectbox(key="ve_b").value == "current"
    metrics = _metrics(at)
    assert metrics["Split moves"] == str(len(ids)) and metrics["Tag changes"] == "2" and metrics["Relabelled"] == "0"
    assert f"Split moves ({len(ids)})" in _texts(at.markdown) and "Tag changes (2)" in _texts(at.markdown)
    assert not [figure for figure in _figures(at) if figure["data"][0]["type"] == "heatmap"]  # nothing relabelled
    assert len(at.get("image")) == 24 + 2
    captions = _texts(at.caption)
    assert captions.count("train → val") == 24 and captions.count("+checked") == 2
    assert f"and {len(ids) - 24} more" in captions


def test_restoring_v1_brings_the_old_labels_back_and_can_be_undone(versioned, monkeypatch):
    dataset, labels_v1, labels_v2, _ = versioned
    tagged = dataset.values("id")[50:52]
    dataset.select(tagged).tag_samples("checked")  # a change since v2: the restore keeps it in an automatic snapshot
    at = _open(dataset.name, "pages/versions.py", monkeypatch)
    assert _button(at, "Undo last restore").disabled  # nothing restored yet
    at.selectbox(key="ve_restore").select("v1").run()
    assert _button(at, "Restore").disabled  # not before the confirmation
    at.checkbox(key="ve_confirm").check().run()
    _button(at, "Restore").click().run()
    _ok(at)
    assert any(_plain(s.value).startswith(f"Restored snapshot v1: {RELABELLED + len(tagged)} samples changed "
                                          f"({RELABELLED} labels, {RELABELLED} decisions, 0 split values, 2 tag sets)")
               for s in at.success), [s.value for s in at.success]
    assert _labels(dataset) == labels_v1 and not dataset.match_tags("checked").count()
    assert not at.checkbox(key="ve_confirm").value  # the confirmation is asked again for the next restore
    assert "1 automatic snapshot hidden" in _texts(at.caption)
    at.checkbox(key="ve_show_auto").check().run()
    _ok(at)
    assert list(at.dataframe[0].value["kind"]) == ["manual", "manual", "auto"]

    _button(at, "Undo last restore").click().run()
    _ok(at)
    assert any(_plain(s.value).startswith("Undid the last restore") for s in at.success), [s.value for s in at.success]
    assert _labels(dataset) == labels_v2 and sorted(dataset.match_tags("checked").values("id")) == sorted(tagged)
    assert _button(at, "Undo last restore").disabled is False  # a second undo redoes the restore


def test_versions_page_shows_a_bad_snapshot_name_in_one_line_and_creates_a_good_one(versioned, monkeypatch):
    dataset, *_ = versioned
    at = _open(dataset.name, "pages/versions.py", monkeypatch)
    at.text_input(key="ve_name").set_value("v1")
    _button(at, "Create snapshot").click().run()
    _ok(at)
    assert any("'v1' already exists" in e.value and "\n" not in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="ve_name").set_value("../bad name")
    _button(at, "Create snapshot").click().run()
    _ok(at)
    assert any(e.value.startswith("snapshot name: expected") for e in at.error), [e.value for e in at.error]
    at.text_input(key="ve_name").set_value("")
    at.text_input(key="ve_note").set_value("after review")
    _button(at, "Create snapshot").click().run()
    _ok(at)
    assert any(_plain(s.value).startswith("Created snapshot v3") for s in at.success), [s.value for s in at.success]
    listing = at.dataframe[0].value
    assert list(listing["name"]) == ["v1", "v2", "v3"] and listing["note / reason"].iloc[-1] == "after review"
    assert at.text_input(key="ve_note").value == ""  # the form is empty for the next snapshot


def test_quality_page_shows_one_point_per_snapshot_and_the_current_state_last(versioned, monkeypatch):
    dataset, *_ = versioned
    at = _open(dataset.name, "pages/quality.py", monkeypatch)
    assert at.title[0].value == f"Quality · {dataset.name}"
    table = at.dataframe[0].value
    assert list(table["name"]) == ["v1", "v2", "current"]
    assert list(table["kind"]) == ["manual", "manual", "current state"]
    assert list(table["suspected mislabels"]) == [FLAGGED, FLAGGED - RELABELLED, FLAGGED - RELABELLED]
    assert list(table["decisions"]) == [0, RELABELLED, RELABELLED]
    figures = {figure["layout"]["title"]["text"]: figure for figure in _figures(at)}
    assert {"Suspected mislabels", "Duplicate groups and leaks", "Audited error rate (95% interval)",
            "Annotator agreement", "Decisions made", "Samples", "Classes and imbalance"} <= set(figures)
    stored, current = figures["Suspected mislabels"]["data"][:2]
    assert stored["y"] == [FLAGGED, FLAGGED - RELABELLED]  # fewer suspected mislabels in v2
    assert current["y"] == [FLAGGED - RELABELLED, FLAGGED - RELABELLED] and current["marker"]["symbol"][-1] == "star"
    assert figures["Suspected mislabels"]["layout"]["xaxis"]["ticktext"] == ["v1", "v2", "<b>current</b>"]
    assert "no audit yet" in json.dumps(figures["Audited error rate (95% interval)"]["layout"]["annotations"])
    metrics = _metrics(at)
    assert metrics["Suspected mislabels"] == str(FLAGGED - RELABELLED)
    assert metrics["Decisions made"] == str(RELABELLED)
    assert not at.info  # snapshots exist: no empty-state message


def test_quality_page_marks_the_audit_interval_and_counts_automatic_snapshots_on_request(versioned, monkeypatch):
    from curation.audit import answer, current_audit, start_audit
    from curation.decisions import record_decision

    dataset, *_ = versioned
    started = start_audit(dataset, 10, "uniform", 0)
    answer(dataset, [{"id": sample_id, "verdict": "correct" if i else "wrong", "label": "bag" if not i else None}
                     for i, sample_id in enumerate(started.ids)])
    assert current_audit(dataset) is not None
    ids = dataset.values("id")
    dataset.select(ids[50:52]).tag_samples("checked")  # a state no snapshot holds yet
    record_decision(dataset, ids[40:44], "remove", source="test")  # a bulk change: an automatic snapshot first
    at = _open(dataset.name, "pages/quality.py", monkeypatch)
    figures = {figure["layout"]["title"]["text"]: figure for figure in _figures(at)}
    audit = figures["Audited error rate (95% interval)"]["data"][1]  # the current state's segment
    assert audit["y"][-1] == pytest.approx(0.1) and audit["error_y"]["array"][-1] > 0
    table = at.dataframe[0].value
    assert list(table["name"]) == ["v1", "v2", "current"] and " – " in table["95% interval"].iloc[-1]
    at.checkbox(key="qu_auto").check().run()
    _ok(at)
    kinds = list(at.dataframe[0].value["kind"])
    assert kinds[-1] == "current state" and "auto" in kinds and len(kinds) > 3


def test_without_snapshots_both_pages_say_so(bare, monkeypatch):
    at = _open(bare.name, "pages/versions.py", monkeypatch)
    assert any("No snapshots of" in i.value and "Create one above" in i.value for i in at.info), \
        [i.value for i in at.info]
    assert _button(at, "Create snapshot")
    assert not at.dataframe and not at.get("plotly_chart")

    at = _open(bare.name, "pages/quality.py", monkeypatch)
    assert any(i.value.startswith("No snapshots yet") for i in at.info), [i.value for i in at.info]
    assert list(at.dataframe[0].value["name"]) == ["current"]
    assert len(_figures(at)) >= 7
