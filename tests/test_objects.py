"""Object-level finders on a small detection dataset with planted problems."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest

DEMO_SOURCE = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"


def _box(rng, size=0.25):
    x, y = rng.uniform(0, 1 - size, 2)
    return [float(x), float(y), size, size]


@pytest.fixture
def detection_dataset(fresh_name):
    """24 demo images (28 x 28 px) with three boxes each, predictions that mostly agree, and
    planted problems: a box drawn twice, a degenerate box, an annotation missing (the model
    sees it), a spurious annotation (the model sees nothing there), a shifted box."""
    import fiftyone as fo

    rng = np.random.default_rng(0)
    images = sorted(DEMO_SOURCE.rglob("*.png"))[:24]
    samples, planted = [], {}
    classes = ["cat", "dog", "bird"]
    for index, path in enumerate(images):
        truth = [(classes[j], [0.05 + 0.32 * j, 0.1 + 0.25 * (index % 3), 0.25, 0.25]) for j in range(3)]
        annotations = [fo.Detection(label=label, bounding_box=list(box)) for label, box in truth]
        predictions = [fo.Detection(label=label, bounding_box=[b + rng.uniform(-0.01, 0.01) for b in box],
                                    confidence=float(rng.uniform(0.85, 0.99))) for label, box in truth]
        if index == 1:  # drawn twice
            annotations.append(fo.Detection(label="cat", bounding_box=[v + 0.005 for v in truth[0][1]]))
            planted["duplicate"] = (index, 3)
        if index == 2:  # degenerate
            annotations.append(fo.Detection(label="dog", bounding_box=[0.5, 0.5, 0.0, 0.2]))
            planted["degenerate"] = (index, 3)
        if index == 3:  # missing: the bird was never annotated
            annotations.pop(2)
            planted["missing"] = index
        if index == 4:  # spurious: nothing there
            annotations.append(fo.Detection(label="dog", bounding_box=[0.7, 0.75, 0.2, 0.2]))
            planted["spurious"] = (index, 3)
        if index == 5:  # badly located
            box = truth[1][1]
            annotations[1] = fo.Detection(label="dog", bounding_box=[box[0] + 0.15, box[1] + 0.12, 0.25, 0.25])
            planted["localization"] = (index, 1)
        samples.append(fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=annotations),
                                 predictions=fo.Detections(detections=predictions)))
    dataset = fo.Dataset(fresh_name)
    dataset.add_samples(samples)
    dataset.compute_metadata()
    return dataset, planted


def _object(dataset, index, position):
    return dataset.skip(index).first().ground_truth.detections[position].id


def test_iou_matrix_matches_hand_computed_values():
    from curation.objects import iou_matrix

    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], dtype=float)
    b = np.array([[1, 1, 2, 2], [0, 0, 2, 2], [5, 5, 0, 1]], dtype=float)
    expected = np.array([[1 / 7, 1.0, 0.0], [0.0, 0.25, 0.0]])
    assert np.allclose(iou_matrix(a, b), expected)


def test_duplicate_and_degenerate_boxes_are_found(detection_dataset):
    from curation.objects import analyze_objects

    dataset, planted = detection_dataset
    analysis = analyze_objects(dataset, "ground_truth")
    table = analysis.table.set_index("object_id")
    duplicate = _object(dataset, *planted["duplicate"])
    assert table.loc[duplicate, "issue"] == "duplicate"
    assert table.loc[duplicate, "duplicate_of"] == _object(dataset, planted["duplicate"][0], 0)
    assert table.loc[duplicate, "duplicate_score"] > 0.85
    degenerate = _object(dataset, *planted["degenerate"])
    assert table.loc[degenerate, "issue"] == "degenerate"
    flagged = set(table.index[table["issue"].notna()])
    assert flagged == {duplicate, degenerate}, "nothing else is a duplicate or degenerate"
    assert "wrong classes" not in analysis.summary()


def test_predictions_find_missing_spurious_and_badly_located_boxes(detection_dataset):
    from curation.objects import analyze_objects

    dataset, planted = detection_dataset
    analysis = analyze_objects(dataset, "ground_truth", "predictions")
    table = analysis.table
    boxes = table[table["object_id"].notna()].set_index("object_id")
    spurious = _object(dataset, *planted["spurious"])
    moved = _object(dataset, *planted["localization"])
    assert boxes["spurious_score"].idxmax() == spurious
    assert boxes["localization_score"].idxmax() == moved
    missing = table[table["object_id"].isna()]
    top = missing.sort_values("missing_score", ascending=False).iloc[0]
    assert top["sample_id"] == dataset.skip(planted["missing"]).first().id and top["label"] == "bird"
    # the per-image score is lowest for images with planted problems
    quality = analysis.image_quality
    worst = sorted(quality, key=quality.get)[:4]
    planted_images = {dataset.skip(i).first().id for i in (3, 4, 5)}
    assert planted_images <= set(worst) | planted_images and len(planted_images & set(worst)) >= 2


def test_findings_are_stored_on_the_boxes_and_written_as_csv(detection_dataset, tmp_path):
    import pandas as pd

    dataset, planted = detection_dataset
    run = subprocess.run([sys.executable, "-m", "curation.cli", "analyze", "--dataset", dataset.name, "--patches",
                          "ground_truth", "--predictions", "predictions"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "objects (ground_truth):" in run.stdout and "duplicate" in run.stdout
    dataset.reload()
    duplicate = _object(dataset, *planted["duplicate"])
    patches = dataset.to_patches("ground_truth")
    issues = dict(zip(patches.values("ground_truth.id"), patches.values("ground_truth.issue")))
    assert issues[duplicate] == "duplicate"
    assert dataset.has_sample_field("ground_truth_missing") and dataset.has_sample_field("object_label_quality")
    out = tmp_path / "objects.csv"
    run = subprocess.run([sys.executable, "-m", "curation.cli", "findings", "--dataset", dataset.name, "--patches",
                          "ground_truth", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out)
    for column in ("object_id", "sample_id", "filepath", "label", "bounding_box", "mislabel_score", "suggested_label",
                   "duplicate_of", "issue"):
        assert column in table.columns
    assert table.loc[table["object_id"] == duplicate, "issue"].item() == "duplicate"
    missing = table[table["object_id"].isna()]
    assert len(missing) >= 1 and set(missing["issue"]) == {"missing"}
    assert len(table) == sum(len(d or []) for d in dataset.values("ground_truth.detections")) + len(missing)


@pytest.mark.parametrize("args, message", [
    (["--patches", "nope"], "has no field 'nope'"),
    (["--patches", "filepath"], "holds"),
    (["--predictions", "predictions"], "--predictions: needs --patches"),
    (["--patches", "ground_truth", "--predictions", "ground_truth"], "different from the annotations"),
])
def test_bad_object_options_get_one_line(detection_dataset, args, message):
    dataset, _ = detection_dataset
    run = subprocess.run([sys.executable, "-m", "curation.cli", "analyze", "--dataset", dataset.name, *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert message in run.stderr, run.stderr


def test_config_values_are_checked():
    from curation.errors import CurationInputError
    from curation.objects import ObjectConfig

    with pytest.raises(CurationInputError, match="duplicate_iou: expected a number in \\[0, 1\\]"):
        ObjectConfig(duplicate_iou=1.5)
    with pytest.raises(CurationInputError, match="expected a number"):
        ObjectConfig(match_iou=float("nan"))
    assert json.dumps(ObjectConfig().__dict__)


def test_object_decisions_fix_remove_accept_and_undo_and_exports_carry_them(detection_dataset, tmp_path):
    import fiftyone as fo

    from curation.export import export_dataset
    from curation.object_decisions import accept_missing, relabel_objects, remove_objects, undo_objects
    from curation.objects import analyze_objects, write_object_findings

    dataset, planted = detection_dataset
    write_object_findings(dataset, "ground_truth", analyze_objects(dataset, "ground_truth", "predictions"))
    duplicate = _object(dataset, *planted["duplicate"])
    wrong = _object(dataset, 0, 0)
    assert relabel_objects(dataset, "ground_truth", [wrong], "dog", reason="looks like a dog", source="test") == 1
    assert remove_objects(dataset, "ground_truth", [duplicate], reason="drawn twice", source="test") == 1
    missing_ids = dataset.skip(planted["missing"]).first()["ground_truth_missing"].detections
    added = accept_missing(dataset, "ground_truth", [missing_ids[0].id], source="test")
    boxes = {d.id: d for ds in dataset.values("ground_truth.detections") for d in ds}
    assert boxes[wrong].label == "dog" and boxes[wrong]["previous_label"] == "cat"
    assert boxes[duplicate]["decision"] == "remove" and boxes[added[0]]["decision"] == "added"

    out = tmp_path / "coco"
    export_dataset(dataset, out, format="coco", label_field="ground_truth")
    back = fo.Dataset.from_dir(dataset_dir=str(out), dataset_type=fo.types.COCODetectionDataset,
                               data_path="data", labels_path="labels.json")
    try:
        total = sum(len(d.detections) for d in back.values("detections") if d)
        before = sum(len(d or []) for d in dataset.values("ground_truth.detections"))
        assert total == before - 1  # the removed duplicate is left out, the accepted box is in
        labels = sorted(d.label for d in back.values("detections")[0].detections)
        assert labels == ["bird", "dog", "dog"]  # the fixed class
    finally:
        back.delete()

    assert undo_objects(dataset, "ground_truth", [wrong, duplicate, added[0]]) == 3
    boxes = {d.id: d for ds in dataset.values("ground_truth.detections") for d in ds}
    assert boxes[wrong].label == "cat" and getattr(boxes[wrong], "decision", None) is None
    assert getattr(boxes[duplicate], "decision", None) is None and added[0] not in boxes
