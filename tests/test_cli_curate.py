"""The curation workflow from the command line, as a script would reproduce it:
analyze -> queue -> decide (relabel, remove a duplicate group) -> undo -> split -> export ->
re-import with FiftyOne; plus the relabel round trip commands."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from curation.cli import main


@pytest.fixture
def dataset(embedded_dataset):
    clone = embedded_dataset.clone()
    clone.persistent = True
    yield clone
    clone.delete()


def test_review_fix_split_export_and_reimport(dataset, tmp_path, capsys):
    import fiftyone as fo

    name = dataset.name
    planted = dataset.match({"ground_truth.label": "trouser"}).first()
    planted.ground_truth.label = "bag"
    planted.save()
    assert main(["analyze", "--dataset", name]) == 0
    assert main(["queue", "--dataset", name, "--finders", "mislabels", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "samples to review" in out and planted.id in out  # the planted error is near the top

    # Fix the suspected mislabels that have a suggestion: accept it.
    queue_csv = tmp_path / "queue.csv"
    assert main(["queue", "--dataset", name, "--finders", "mislabels", "--out", str(queue_csv)]) == 0
    assert main(["decide", "--dataset", name, "--decision", "relabel", "--accept-suggestion",
                 "--ids-file", str(queue_csv)]) == 0
    planted.reload()
    assert planted.ground_truth.label == "trouser" and planted["previous_label"] == "bag"

    # Remove a duplicate group (all but one member), then undo one removal and redo it.
    members = dataset.values("id")[10:13]
    assert main(["decide", "--dataset", name, "--decision", "remove", "--reason", "duplicate group",
                 "--ids", ",".join(members[1:])]) == 0
    assert main(["undo", "--dataset", name, "--ids", members[1]]) == 0
    assert dataset[members[1]]["decision"] is None
    assert main(["decide", "--dataset", name, "--decision", "remove", "--reason", "duplicate group",
                 "--ids", members[1]]) == 0
    capsys.readouterr()

    # A balanced, leakage-free split, exported as YOLO (classification layout), re-imported.
    assert main(["split", "--dataset", name, "--ratios", "0.6,0.2,0.2", "--seed", "7", "--balance", "cap",
                 "--cap", "3"]) == 0
    assert "wrote split to field 'curation_split'" in capsys.readouterr().out
    export_dir = tmp_path / "yolo"
    assert main(["export", "--dataset", name, "--format", "yolo", "--out", str(export_dir),
                 "--split-field", "curation_split"]) == 0
    assert f"as yolo to {export_dir}" in capsys.readouterr().out
    for split in ("train", "val", "test"):
        reimported = fo.Dataset.from_dir(dataset_dir=str(export_dir / split),
                                         dataset_type=fo.types.ImageClassificationDirectoryTree)
        try:
            from fiftyone import ViewField as F

            expected = dataset.match(F("curation_split") == split).match(F("decision") != "remove")
            assert Counter(reimported.values("ground_truth.label")) == Counter(expected.values("ground_truth.label"))
            if split == "train":
                assert max(Counter(reimported.values("ground_truth.label")).values()) <= 3
        finally:
            reimported.delete()
    manifest = json.loads((export_dir / "provenance.json").read_text())
    removed = {c["id"]: c for c in manifest["changes"] if c["decision"] == "remove"}
    assert set(removed) == set(members[1:]) and removed[members[1]]["reason"] == "duplicate group"
    relabel = next(c for c in manifest["changes"] if c["id"] == planted.id)
    assert (relabel["previous_label"], relabel["label"], relabel["source"]) == ("bag", "trouser", "cli")
    assert manifest["splits"]["config"]["seed"] == 7 and manifest["splits"]["config"]["balance"] == "cap"
    # Same command again: the existing export is not replaced.
    assert main(["export", "--dataset", name, "--format", "yolo", "--out", str(export_dir)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_same_seed_same_split_from_the_cli(dataset, capsys):
    assert main(["split", "--dataset", dataset.name, "--seed", "3", "--field", "a"]) == 0
    assert main(["split", "--dataset", dataset.name, "--seed", "3", "--field", "b"]) == 0
    assert dataset.values("a") == dataset.values("b")
    assert main(["split", "--dataset", dataset.name, "--ratios", "0.5,0.6", "--dry-run"]) == 1
    assert "ratios" in capsys.readouterr().err


def test_relabel_round_trip_commands(dataset, tmp_path, capsys):
    ids = dataset.values("id")[:3]
    assert main(["decide", "--dataset", dataset.name, "--decision", "annotate", "--ids", ",".join(ids)]) == 0
    task = tmp_path / "task"
    assert main(["relabel-export", "--dataset", dataset.name, "--tool", "labelstudio", "--out", str(task)]) == 0
    assert "3 images" in capsys.readouterr().out
    tasks = json.loads((task / "tasks.json").read_text())
    export = []
    for item in tasks:
        export.append({"id": len(export) + 1, "data": item["data"], "annotations": [
            {"was_cancelled": False, "completed_by": 1, "updated_at": "2026-11-22T10:00:00Z",
             "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["sandal"]}}]}]})
    corrected = tmp_path / "export.json"
    corrected.write_text(json.dumps(export))
    assert main(["relabel-import", "--dataset", dataset.name, "--from", str(corrected), "--dry-run"]) == 0
    assert dataset.select(ids).values("decision") == ["annotate"] * 3
    assert main(["relabel-import", "--dataset", dataset.name, "--from", str(corrected)]) == 0
    labels = dataset.select(ids, ordered=True).values("ground_truth.label")
    assert labels == ["sandal"] * 3
    sources = set(dataset.select(ids).values("decision_source"))
    assert sources == {"labelstudio:export.json"}


def test_decide_without_samples_says_how_to_name_them(dataset, capsys):
    assert main(["decide", "--dataset", dataset.name, "--decision", "keep"]) == 1
    assert "name the samples with --ids" in capsys.readouterr().err
    assert main(["export", "--dataset", dataset.name, "--format", "folders", "--out", "/tmp/x",
                 "--max-score", "mislabel_score"]) == 1
    assert "expected FIELD=VALUE" in capsys.readouterr().err


def test_demo_runs_the_finders_once(small_class_tree, monkeypatch, capsys):
    """`curation demo` (the README's first command) leaves findings and a filled review
    queue; a second run finds them up to date and does not recompute."""
    import fiftyone as fo

    from curation import importers
    from curation.cli import main
    from curation.datasets import load_dataset
    from curation.review import review_queue

    name = "t-demo-analyzed"
    monkeypatch.setattr(importers, "DEMO_DATASET", name)
    monkeypatch.setattr(importers, "DEMO_SOURCE", small_class_tree)
    try:
        assert main(["demo", "--model", "efficientnet-lite0-imagenet", "--workers", "0"]) == 0
        out = capsys.readouterr().out
        assert "mislabels:" in out and "duplicates:" in out and "outliers:" in out, out
        dataset = load_dataset(name)
        assert dataset.info["curation"]["analysis"]["runs"]
        assert len(review_queue(dataset, "ground_truth")) > 0
        assert main(["demo", "--model", "efficientnet-lite0-imagenet", "--workers", "0"]) == 0
        assert "findings are up to date" in capsys.readouterr().out
    finally:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
