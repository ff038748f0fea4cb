"""Snapshots of the curation state: create, list, diff, restore, undo, trend, exports from a snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def curated(embedded_dataset, fresh_name):
    """A clone of the 60-sample dataset without decisions (other tests may have made some)."""
    from curation.decisions import DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD

    ours = [*DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD]
    present = [name for name in ours if embedded_dataset.has_sample_field(name)]
    return embedded_dataset.exclude_fields(present).clone(fresh_name)


def _labels(dataset) -> dict[str, str]:
    return dict(zip(*dataset.values(["id", "ground_truth.label"])))


def test_a_snapshot_records_every_sample_and_lists_with_time_and_note(curated):
    from curation.snapshots import create_snapshot, list_snapshots, load_snapshot

    ref = create_snapshot(curated, note="before cleaning")
    assert ref.name == "v1" and ref.kind == "manual" and ref.note == "before cleaning"
    assert ref.samples == len(curated) == 60 and ref.size_bytes > 0 and ref.created_at.endswith("+00:00")
    assert ref.quality["classes"] == 10 and ref.quality["samples"] == 60 and ref.quality["decisions_made"] == 0
    _, table, meta = load_snapshot(curated, "v1")
    assert sorted(table["id"]) == sorted(curated.values("id"))
    assert dict(zip(table["id"], table["label"])) == _labels(curated)
    assert (table["file_size"] > 0).all() and (table["file_mtime_ns"] > 0).all()
    assert meta["label_field"] == "ground_truth" and meta["details"]["class_counts"]["bag"] == 6
    assert create_snapshot(curated).name == "v2"
    assert [r.name for r in list_snapshots(curated)] == ["v1", "v2"]


def test_names_are_checked_and_never_reused(curated):
    from curation.errors import CurationInputError
    from curation.snapshots import SnapshotError, create_snapshot, get_snapshot

    create_snapshot(curated, "base")
    with pytest.raises(CurationInputError, match="'base' already exists"):
        create_snapshot(curated, "base")
    for hostile in ("../../etc/passwd", "a/b", "", " v1", "x" * 65, "$where", None and "x"):
        if hostile is None:
            continue
        with pytest.raises(CurationInputError, match="snapshot name: expected"):
            create_snapshot(curated, hostile)
    with pytest.raises(SnapshotError, match="'nope' does not exist .* snapshots: base"):
        get_snapshot(curated, "nope")


def test_diff_lists_relabels_decisions_splits_and_tags(curated):
    from curation.decisions import apply_relabel, record_decision
    from curation.snapshots import create_snapshot, diff_snapshots

    create_snapshot(curated, "v1")
    ids = curated.values("id")
    labels = _labels(curated)
    apply_relabel(curated, ids[:3], "coat", label_field="ground_truth", source="test")
    record_decision(curated, ids[3:5], "remove", reason="duplicate", source="test")
    curated.select(ids[5:7]).tag_samples("checked")
    diff = diff_snapshots(curated, "v1")
    relabelled = diff.to_dict()["relabelled"]
    expected = {i for i in ids[:3] if labels[i] != "coat"}
    assert {row["id"] for row in relabelled} == expected
    assert all(row["to"] == "coat" and row["from"] == labels[row["id"]] for row in relabelled)
    assert {row["id"]: row["to"] for row in diff.to_dict()["decisions_changed"]} == {
        **{i: "relabel" for i in ids[:3]}, ids[3]: "remove", ids[4]: "remove"}
    assert {row["id"] for row in diff.to_dict()["tag_changes"]} == set(ids[5:7])
    assert diff.counts()["added"] == diff.counts()["removed"] == diff.counts()["split_moves"] == 0
    matrix = diff.transition_matrix()
    assert matrix.to_numpy().sum() == len(expected) and list(matrix.columns) == ["coat"]


def test_bulk_changes_take_a_snapshot_first_and_identical_states_are_not_stored_twice(curated):
    from curation.decisions import record_decision
    from curation.snapshots import list_snapshots, load_snapshot

    ids = curated.values("id")
    record_decision(curated, ids[:1], "keep", source="test")  # one sample: not a bulk change
    assert list_snapshots(curated) == []
    record_decision(curated, ids[1:4], "remove", source="test")
    autos = list_snapshots(curated, kinds=("auto",))
    assert len(autos) == 1 and autos[0].reason == "before remove on 3 samples"
    _, table, _ = load_snapshot(curated, autos[0].name)
    before = dict(zip(table["id"], table["decision"]))
    assert before[ids[0]] == "keep" and before[ids[1]] is None  # the state just before the bulk change
    from curation.snapshots import create_snapshot

    create_snapshot(curated, kind="auto", reason="again", dedupe=True)
    record_decision(curated, ids[1:4], "remove", source="test")  # same state as the last auto snapshot? no: after
    assert len(list_snapshots(curated, kinds=("auto",))) == 2


def test_restore_brings_back_the_old_state_as_one_undoable_change(curated):
    from curation.decisions import apply_relabel, decision_history, record_decision, undo_decision
    from curation.snapshots import create_snapshot, diff_snapshots, restore_snapshot, undo_restore

    ids = curated.values("id")
    record_decision(curated, ids[:1], "dismiss", source="test")
    create_snapshot(curated, "v1")
    labels_v1 = _labels(curated)
    apply_relabel(curated, ids[:4], "sandal", label_field="ground_truth", source="test")
    record_decision(curated, ids[10:12], "remove", source="test")
    curated.select(ids[20:22]).tag_samples("x")
    create_snapshot(curated, "v2")
    labels_v2 = _labels(curated)

    result = restore_snapshot(curated, "v1")
    assert result.restored == 8 and result.labels == sum(labels_v1[i] != "sandal" for i in ids[:4])
    assert _labels(curated) == labels_v1
    assert diff_snapshots(curated, "v1").is_empty()
    assert curated[ids[0]]["decision"] == "dismiss" and curated[ids[10]]["decision"] is None
    assert "x" not in curated[ids[20]].tags
    history = decision_history(curated, ids[1])
    assert [entry["decision"] for entry in history] == ["relabel", "restore"]  # nothing deleted

    # one sample's restore can be undone on its own
    undo_decision(curated, [ids[1]])
    assert curated[ids[1]].ground_truth.label == "sandal" and curated[ids[1]]["decision"] == "relabel"
    undo_decision(curated, [ids[1]])  # and its relabel: back to v1's state
    assert diff_snapshots(curated, "v1").is_empty()

    # the whole restore can be undone (back to v2), and the undo redone
    undone = undo_restore(curated)
    assert undone.snapshot == result.before
    assert _labels(curated) == labels_v2 and diff_snapshots(curated, "v2").is_empty()
    undo_restore(curated)
    assert _labels(curated) == labels_v1 and diff_snapshots(curated, "v1").is_empty()


def test_a_relabel_after_a_restore_keeps_the_label_before_curation(curated):
    from curation.decisions import apply_relabel
    from curation.snapshots import create_snapshot, restore_snapshot

    sample_id = curated.first().id
    original = curated.first().ground_truth.label
    create_snapshot(curated, "v1")
    apply_relabel(curated, [sample_id], "x1", label_field="ground_truth")
    restore_snapshot(curated, "v1")
    apply_relabel(curated, [sample_id], "x2", label_field="ground_truth")
    assert curated[sample_id]["previous_label"] == original


def test_trend_has_one_row_per_snapshot_and_the_current_state_last(curated):
    from curation.decisions import record_decision
    from curation.snapshots import create_snapshot, trend

    create_snapshot(curated, "v1")
    record_decision(curated, curated.values("id")[:5], "remove", source="test")
    create_snapshot(curated, "v2", note="removed five")
    rows = trend(curated)
    assert list(rows["name"]) == ["v1", "v2", "current"]
    assert list(rows["removed"]) == [0, 5, 5] and list(rows["active_samples"]) == [60, 55, 55]
    # the state before the removal was v1's: no automatic copy of it was stored
    assert len(trend(curated, include_auto=True)) == 3


def test_export_records_its_snapshot_and_can_be_made_from_an_old_one(curated, tmp_path):
    from curation.decisions import apply_relabel
    from curation.export import export_dataset
    from curation.importers import import_dataset
    from curation.snapshots import create_snapshot, list_snapshots

    create_snapshot(curated, "v1")
    labels_v1 = {path: label for path, label in zip(*curated.values(["filepath", "ground_truth.label"]))}
    ids = curated.values("id")
    apply_relabel(curated, ids[:6], "bag", label_field="ground_truth")
    now = export_dataset(curated, tmp_path / "now", format="csv", label_field="ground_truth")
    manifest = json.loads((now.out_dir / "provenance.json").read_text())
    assert manifest["snapshot"]["name"] in [r.name for r in list_snapshots(curated)]
    assert manifest["snapshot"]["kind"] == "export"

    old = export_dataset(curated, tmp_path / "old", format="folders", label_field="ground_truth", snapshot="v1")
    manifest = json.loads((old.out_dir / "provenance.json").read_text())
    assert manifest["snapshot"]["name"] == "v1" and manifest["dataset"] == curated.name
    back = import_dataset(old.out_dir, curated.name + "-back", format="classes")
    from curation.datasets import load_dataset

    reimported = load_dataset(curated.name + "-back")
    by_name = {path.rsplit("/", 1)[-1]: label for path, label in labels_v1.items()}
    got = {path.rsplit("/", 1)[-1]: label for path, label in zip(*reimported.values(["filepath", "ground_truth.label"]))}
    assert got == by_name
    reimported.delete()
    assert back is not None


def test_the_export_page_exports_an_earlier_snapshot(curated, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from curation.decisions import apply_relabel
    from curation.snapshots import create_snapshot

    create_snapshot(curated, "v1", note="as imported")
    labels_v1 = dict(zip(*curated.values(["filepath", "ground_truth.label"])))
    apply_relabel(curated, curated.values("id")[:5], "bag", label_field="ground_truth")
    monkeypatch.setenv("CURATION_DATASET", curated.name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/export.py").run()
    assert not at.exception
    at.selectbox(key="ex_format").set_value("csv").run()
    at.selectbox(key="ex_version").set_value("v1").run()
    out = tmp_path / "v1-export"
    at.text_input(key="ex_out_csv").set_value(str(out)).run()
    at.button(key="ex_go").click().run()
    assert not at.exception
    assert any("from snapshot v1" in s.value for s in at.success), [s.value for s in at.success]
    import pandas as pd

    manifest = pd.read_csv(out / "manifest.csv")
    assert dict(zip(manifest["filepath"], manifest["label"])) == labels_v1
    assert set(manifest["id"]) == set(curated.values("id"))  # the dataset's own sample ids


def test_a_split_made_after_a_snapshot_is_a_move_and_a_restore_clears_it(curated):
    from curation.errors import CurationInputError
    from curation.snapshots import create_snapshot, diff_snapshots, restore_events, restore_snapshot, undo_restore

    create_snapshot(curated, "v1")
    curated.add_sample_field("curation_split", __import__("fiftyone").StringField)
    curated.set_values("curation_split", ["train"] * len(curated))
    assert diff_snapshots(curated, "v1").counts()["split_moves"] == len(curated)
    restore_snapshot(curated, "v1")
    assert set(curated.values("curation_split")) == {None} and diff_snapshots(curated, "v1").is_empty()
    assert [event["snapshot"] for event in restore_events(curated)] == ["v1"]
    undo_restore(curated)
    assert set(curated.values("curation_split")) == {"train"}
    with pytest.raises(CurationInputError, match="reserved"):
        create_snapshot(curated, "current")
