"""benchmarks/detection_set.py and the metrics of benchmarks/bench_detection.py.

The generator reads the real MNIST / Fashion-MNIST files in ../shared/datasets; those tests
skip when the files are absent. The metric tests need nothing but numpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_detection as bench  # noqa: E402
import detection_set as ds  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
HAVE_DATA = all(path.exists() for path in (SHARED / "mnist-test" / "t10k-images-idx3-ubyte.gz",
                                            SHARED / "fashion-mnist" / "train-images-idx3-ubyte.gz"))
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="../shared/datasets (MNIST test, Fashion-MNIST train) is absent")

TINY = ds.DetectionSetConfig(n_canvases=20)


@pytest.fixture(scope="module")
def sources():
    return ds.load_sources("mnist", SHARED)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return ds.build_detection_set(TINY, data_dir=SHARED, root=tmp_path_factory.mktemp("detection"))


# ----------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------

@needs_data
def test_a_canvas_depends_only_on_seed_and_index(sources):
    first = ds.render_canvas(7, *sources, TINY)
    again = ds.render_canvas(7, *sources, TINY)
    other = ds.render_canvas(8, *sources, TINY)
    other_seed = ds.render_canvas(7, *sources, ds.DetectionSetConfig(n_canvases=20, seed=1))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.boxes, again.boxes)
    assert not np.array_equal(first.image, other.image) or first.image.shape != other.image.shape
    assert first.image.shape != other_seed.image.shape or not np.array_equal(first.image, other_seed.image)


@needs_data
def test_the_whole_set_is_deterministic(tiny_set, tmp_path):
    rebuilt = ds.build_detection_set(TINY, data_dir=SHARED, root=tmp_path)
    assert rebuilt.root.name == tiny_set.root.name  # same key
    for name in ("labels.json", "clean.json", "truth.json"):
        mine, theirs = json.loads((tiny_set.root / name).read_text()), json.loads((rebuilt.root / name).read_text())
        mine.pop("seconds", None), theirs.pop("seconds", None)
        assert mine == theirs, name
    first = sorted((tiny_set.root / "data").iterdir())
    assert [path.read_bytes() for path in first] == [(rebuilt.root / "data" / path.name).read_bytes() for path in first]


@needs_data
def test_a_built_set_is_reused_from_its_cache(tiny_set):
    (tiny_set.root / "marker").write_text("kept")
    again = ds.build_detection_set(TINY, data_dir=SHARED, root=tiny_set.root.parent)
    assert again.root == tiny_set.root and (again.root / "marker").exists()


@needs_data
def test_boxes_are_exact(sources):
    for index in range(20):
        canvas = ds.render_canvas(index, *sources, TINY)
        assert 1 <= len(canvas.boxes) <= TINY.max_items
        changed = np.any(canvas.image != canvas.background, axis=2)
        inside = np.zeros_like(changed)
        for (x, y, w, h), alpha in zip(canvas.boxes, canvas.alphas):
            assert alpha.shape == (h, w)
            # tight: every edge row and column of the box holds the item
            assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()
            assert x >= 0 and y >= 0 and x + w <= canvas.width and y + h <= canvas.height
            assert TINY.min_item_side - 4 <= max(w, h) <= TINY.max_item_side
            inside[y:y + h, x:x + w] = True
        # every pixel an item changed lies in some item's box
        assert not (changed & ~inside).any()
        # and the items are visible: the box of the last-drawn item changed
        x, y, w, h = canvas.boxes[-1]
        assert changed[y:y + h, x:x + w].any()


@needs_data
def test_injected_error_counts_match_the_rates(tiny_set):
    truth = tiny_set.truth
    n = len(truth["objects"])
    counts = truth["counts"]
    assert counts["clean_boxes"] == n
    assert counts["wrong_class"] == round(0.05 * n)
    assert counts["missing"] == round(0.03 * n)
    assert counts["shifted"] == round(0.03 * n)
    assert counts["duplicate"] == round(0.02 * n)
    assert counts["spurious"] == round(0.03 * n)
    annotations = truth["annotations"]
    assert len(annotations) == n - counts["missing"] + counts["duplicate"] + counts["spurious"]
    by_id = {record["id"]: record for record in annotations}
    objects = truth["objects"]
    for record in annotations:
        if record["error"] == "wrong_class":
            assert record["label"] != record["true_label"] == objects[record["object"]]["label"]
            assert record["bbox"] == objects[record["object"]]["bbox"]
        elif record["error"] == "shifted":
            assert ds.SHIFT_IOU[0] <= ds.box_iou(record["bbox"], objects[record["object"]]["bbox"]) <= ds.SHIFT_IOU[1]
            assert record["label"] == record["true_label"]
        elif record["error"] == "duplicate":
            original = by_id[record["duplicate_of"]]
            assert original["error"] == "none" and original["duplicated_by"] == record["id"]
            assert original["object"] == record["object"] and original["label"] == record["label"]
        elif record["error"] == "spurious":
            assert record["object"] is None
            same_image = [obj["bbox"] for obj in objects if obj["image_id"] == record["image_id"]]
            assert all(ds.box_iou(record["bbox"], box) <= ds.SPURIOUS_MAX_IOU for box in same_image)
        else:
            assert record["label"] == record["true_label"] and record["bbox"] == objects[record["object"]]["bbox"]
    for obj in objects:
        if obj["status"] == "missing":
            assert obj["annotation_id"] is None
        else:
            assert by_id[obj["annotation_id"]]["object"] == obj["id"]


@needs_data
def test_error_counts_hold_on_a_larger_set(sources):
    config = ds.DetectionSetConfig(n_canvases=200, seed=3)
    layouts = []
    for index in range(config.n_canvases):
        canvas = ds.render_canvas(index, *sources, config)
        layouts.append({"image_id": index + 1, "width": canvas.width, "height": canvas.height, "boxes": canvas.boxes,
                        "labels": canvas.labels, "source_indices": canvas.source_indices})
    _, _, counts = ds.inject_errors(layouts, config, 10)
    n = counts["clean_boxes"]
    assert n > 500
    for key, rate in (("wrong_class", 0.05), ("missing", 0.03), ("shifted", 0.03), ("duplicate", 0.02), ("spurious", 0.03)):
        assert counts[key] == round(rate * n), key


@needs_data
def test_coco_import_reads_the_boxes_back(tiny_set, fresh_name):
    import fiftyone as fo

    from curation.importers import import_dataset

    report = import_dataset(tiny_set.root, fresh_name, format="coco", label_field="ground_truth")
    assert report.samples == TINY.n_canvases
    dataset = fo.load_dataset(fresh_name)
    field = report.label_field
    sizes = {image["file_name"]: (image["width"], image["height"], image["id"]) for image in tiny_set.images}
    expected: dict[int, list] = {}
    for record in tiny_set.annotations:
        expected.setdefault(record["image_id"], []).append((tiny_set.classes[record["label"]], record["bbox"]))
    read = 0
    for path, detections in zip(*dataset.values(["filepath", f"{field}.detections"])):
        width, height, image_id = sizes[Path(path).name]
        got = sorted((d.label, [round(v, 6) for v in np.array(d.bounding_box) * [width, height, width, height]])
                     for d in detections or [])
        want = sorted((label, [float(v) for v in box]) for label, box in expected.get(image_id, []))
        assert got == want
        read += len(got)
    assert read == len(tiny_set.annotations)


def test_an_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source: expected one of"):
        ds.DetectionSetConfig(source="cifar")


def test_missing_data_is_reported(tmp_path):
    with pytest.raises(ds.DataMissing, match="missing"):
        ds.build_detection_set(TINY, data_dir=tmp_path, root=tmp_path)


# ----------------------------------------------------------------------------------------
# The simulated predictions (fast: tiny CNN budget, checks the plumbing and the simulation)
# ----------------------------------------------------------------------------------------

@needs_data
@pytest.mark.slow
def test_predictions_cover_the_objects_and_are_out_of_fold(tiny_set):
    config = ds.PredictionConfig(recall=0.9, false_positives_per_image=0.5, folds=2)
    predictions = ds.build_predictions(tiny_set, config)
    assert ds.build_predictions(tiny_set, config) == predictions  # cached
    found = [d for image in predictions["images"] for d in image["detections"]]
    objects = [d for d in found if d["object"] is not None]
    assert 0.75 <= len(objects) / len(tiny_set.objects) <= 1.0
    assert all(d["iou_to_object"] > 0.4 for d in objects)
    assert np.median([d["iou_to_object"] for d in objects]) > 0.8
    for d in found:
        assert 0 <= d["confidence"] <= 1 and d["label"] == int(np.argmax(d["probabilities"]))
        assert abs(sum(d["probabilities"]) + d["background"] - 1) < 1e-4
    assert len(predictions["info"]["folds"]) == 2


# ----------------------------------------------------------------------------------------
# Metrics on hand-made examples
# ----------------------------------------------------------------------------------------

def test_average_precision_by_hand():
    # ranking: P, N, P, N; 2 positives -> AP = 1/2 * (1/1) + 1/2 * (2/3)
    assert bench.average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0], bool), 2) == pytest.approx(
        0.5 + 0.5 * 2 / 3)
    # a third positive no candidate reaches caps recall at 2/3
    assert bench.average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 3) == pytest.approx(
        (1 + 2 / 3) / 3)
    # unscored candidates are left out
    assert bench.average_precision(np.array([np.nan, 0.5]), np.array([0, 1], bool), 1) == pytest.approx(1.0)
    assert bench.average_precision(np.array([0.5]), np.array([True]), 0) is None


def test_average_precision_matches_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    truth = rng.random(200) < 0.3
    assert bench.average_precision(scores, truth, int(truth.sum())) == pytest.approx(average_precision_score(truth, scores))


def test_flag_metrics_by_hand():
    flags = np.array([1, 1, 0, 1, 0], bool)
    hits = np.array([1, 0, 1, 1, 0], bool)
    metrics = bench.flag_metrics(flags, hits, 3)
    assert metrics == {"flagged": 3, "true_positives": 2, "precision": 2 / 3, "recall": 2 / 3}


def _truth():
    """Two images; annotation 2 duplicates 1, 3 is a wrong class, 4 spurious, 5 shifted; one box dropped."""
    annotations = [
        {"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "label": 0, "error": "none", "duplicate_of": None},
        {"id": 2, "image_id": 1, "bbox": [0, 0, 10, 11], "label": 0, "error": "duplicate", "duplicate_of": 1},
        {"id": 3, "image_id": 1, "bbox": [20, 20, 10, 10], "label": 1, "error": "wrong_class", "duplicate_of": None},
        {"id": 4, "image_id": 2, "bbox": [40, 40, 10, 10], "label": 2, "error": "spurious", "duplicate_of": None},
        {"id": 5, "image_id": 2, "bbox": [5, 5, 10, 10], "label": 0, "error": "shifted", "duplicate_of": None},
        {"id": 6, "image_id": 2, "bbox": [60, 0, 10, 10], "label": 1, "error": "none", "duplicate_of": None},
    ]
    objects = [{"id": 0, "image_id": 2, "bbox": [30, 0, 10, 10], "status": "missing"},
               {"id": 1, "image_id": 1, "bbox": [50, 50, 10, 10], "status": "missing"}]
    images = [{"id": 1}, {"id": 2}]
    return {"annotations": annotations, "objects": objects, "images": images}


def test_evaluate_by_hand():
    truth = _truth()
    method = bench.MethodScores(
        name="hand",
        annotation_scores={
            "wrong_class": np.array([0.1, 0.2, 0.9, 0.3, np.nan, 0.95]),  # the wrong class ranks 2nd
            "spurious": np.array([0, 0, 0, 1, 0, 0.0]),
            "localization": np.array([0.1, 0.1, 0.1, 0.1, 0.8, 0.1]),
            "duplicate": np.array([0.9, 0.0, 0.1, 0.0, 0.0, 0.0]),  # the original, not the copy: still the pair
        },
        annotation_flags={
            "wrong_class": np.array([0, 0, 1, 0, 0, 1], bool),
            "spurious": np.array([0, 0, 0, 1, 0, 0], bool),
            "localization": np.array([0, 0, 0, 0, 0, 0], bool),
            "duplicate": np.array([1, 0, 0, 0, 0, 0], bool),
        },
        missing=[{"image_id": 2, "bbox": [31, 0, 10, 10], "score": 0.9, "flagged": True},  # hit
                 {"image_id": 2, "bbox": [31, 1, 10, 10], "score": 0.8, "flagged": True},  # same box again: miss
                 {"image_id": 1, "bbox": [0, 50, 10, 10], "score": 0.7, "flagged": False}],  # nothing there
        sources={kind: "hand" for kind in bench.REPORT_TYPES},
    )
    rows = {row["error"]: row for row in bench.evaluate(method, truth)}
    assert rows["wrong_class"]["ap"] == pytest.approx(0.5)
    assert (rows["wrong_class"]["precision"], rows["wrong_class"]["recall"]) == (0.5, 1.0)
    assert rows["wrong_class"]["candidates"] == 5
    assert rows["spurious"]["ap"] == pytest.approx(1.0)
    assert (rows["spurious"]["precision"], rows["spurious"]["recall"]) == (1.0, 1.0)
    assert rows["localization"]["ap"] == pytest.approx(1.0)
    assert rows["localization"]["flagged"] == 0 and rows["localization"]["precision"] is None
    assert rows["localization"]["recall"] == 0.0
    assert rows["duplicate"]["positives"] == 1  # one pair
    assert rows["duplicate"]["ap"] == pytest.approx(1.0)
    assert (rows["duplicate"]["precision"], rows["duplicate"]["recall"]) == (1.0, 1.0)
    assert rows["missing"]["positives"] == 2
    assert rows["missing"]["ap"] == pytest.approx(0.5)  # 1 of 2 found, at precision 1
    assert (rows["missing"]["precision"], rows["missing"]["recall"]) == (0.5, 0.5)


def test_a_method_without_a_score_reports_none():
    truth = _truth()
    rows = {row["error"]: row for row in bench.evaluate(bench.MethodScores(name="empty"), truth)}
    assert all(row["ap"] is None and row["precision"] is None for row in rows.values())
    assert rows["missing"]["positives"] == 2 and rows["wrong_class"]["positives"] == 1


def test_duplicate_units_group_each_pair():
    units = bench.duplicate_units(_truth()["annotations"])
    assert units[0] == units[1] and len(set(units.tolist())) == 5
    assert bench.pooled(np.array([np.nan, 0.4, 0.2, np.nan, 1, 1]), units, "max")[0] == pytest.approx(0.4)


def test_score_ours_reads_the_contract_table():
    import pandas as pd

    truth = _truth()
    truth["images"] = [{"id": 1, "width": 100, "height": 50}, {"id": 2, "width": 100, "height": 50}]
    detection_ids = [f"d{i}" for i in range(6)]
    table = pd.DataFrame({
        "object_id": detection_ids + [None],
        "sample_id": ["s1", "s1", "s1", "s2", "s2", "s2", "s2"],
        "filepath": ["a.png"] * 3 + ["b.png"] * 4,
        "label": ["0", "0", "1", "2", "0", "1", "1"],
        "bounding_box": [[0, 0, 0.1, 0.2]] * 6 + [[0.3, 0.0, 0.1, 0.2]],  # the last: the dropped box of image 2
        "mislabel_score": [0.1, 0.1, 0.9, 0.2, 0.1, 0.1, np.nan],
        "suggested_label": [None] * 7,
        "duplicate_of": [None, "d0", None, None, None, None, None],
        "duplicate_score": [0.0, 0.95, 0, 0, 0, 0, np.nan],
        "spurious_score": [0, 0, 0, 0.99, 0, 0, np.nan],
        "localization_score": [0, 0, 0, 0, 0.97, 0, np.nan],
        "missing_score": [np.nan] * 6 + [0.96],
        "issue": [None, "duplicate", "mislabel", "spurious", "localization", None, "missing"],
    })
    ours = bench.score_ours(table, truth, annotation_of_detection={d: i for i, d in enumerate(detection_ids)},
                            image_of_sample={"s1": 1, "s2": 2})
    assert not isinstance(ours, str)
    rows = {row["error"]: row for row in bench.evaluate(ours, truth)}
    for kind in ("wrong_class", "spurious", "localization", "duplicate"):
        assert (rows[kind]["ap"], rows[kind]["precision"], rows[kind]["recall"]) == (1.0, 1.0, 1.0), kind
    assert ours.missing[0]["bbox"] == pytest.approx([30, 0, 10, 10])
    assert (rows["missing"]["precision"], rows["missing"]["recall"]) == (1.0, 0.5)  # 1 of the 2 dropped boxes


def test_score_ours_explains_a_table_it_cannot_read():
    import pandas as pd

    message = bench.score_ours(pd.DataFrame({"object_id": ["x"]}), _truth(), annotation_of_detection={},
                               image_of_sample={})
    assert isinstance(message, str) and message.startswith("skipped:") and "sample_id" in message
