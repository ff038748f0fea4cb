"""curation.importers: every format lands as a persistent FiftyOne dataset with its labels."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

import bad_images
from curation.datasets import curation_info, load_dataset
from curation.importers import (
    FORMATS,
    DatasetImportError,
    detect_format,
    ensure_demo_dataset,
    import_dataset,
)

BOXES = {  # file name -> [(label, [x, y, w, h] relative)]
    "img0.png": [("cat", [0.1, 0.2, 0.3, 0.4])],
    "img1.png": [("dog", [0.5, 0.5, 0.25, 0.25]), ("cat", [0.0, 0.0, 0.5, 0.5])],
    "img2.png": [("dog", [0.25, 0.125, 0.5, 0.75])],
    "img3.png": [("cat", [0.6, 0.1, 0.2, 0.3])],
}
WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="module")
def fo():
    import fiftyone

    return fiftyone


@pytest.fixture(scope="module")
def detection_source(fo, tmp_path_factory):
    """A small in-memory FiftyOne dataset with boxes (``gt``) and a classification (``kind``)."""
    folder = tmp_path_factory.mktemp("detection-images")
    samples = []
    for index, (name, boxes) in enumerate(BOXES.items()):
        path = bad_images.write_rgb_png(folder / name, width=WIDTH, height=HEIGHT, seed=index)
        detections = fo.Detections(detections=[fo.Detection(label=label, bounding_box=box) for label, box in boxes])
        samples.append(fo.Sample(filepath=str(path), gt=detections, kind=fo.Classification(label=f"k{index % 2}")))
    dataset = fo.Dataset(f"importers-source-{uuid.uuid4().hex[:8]}")
    dataset.add_samples(samples)
    yield dataset
    dataset.delete()


def _export(fo, dataset, folder: Path, dataset_type, **kwargs) -> Path:
    dataset.export(export_dir=str(folder), dataset_type=dataset_type, **kwargs)
    return folder


def _boxes_by_file(dataset, field: str) -> dict[str, list[tuple[str, list[float]]]]:
    result = {}
    for path, detections in zip(*dataset.values(["filepath", field])):
        boxes = [(d.label, list(d.bounding_box)) for d in (detections.detections if detections else [])]
        result[Path(path).name] = sorted(boxes)
    return result


def _assert_boxes_survive(dataset, field: str, tolerance: float = 1e-6) -> None:
    found = _boxes_by_file(dataset, field)
    assert set(found) == set(BOXES)
    for name, expected in BOXES.items():
        got = found[name]
        assert [label for label, _ in got] == sorted(label for label, _ in expected), name
        for (_, box), (_, want) in zip(got, sorted(expected)):
            assert box == pytest.approx(want, abs=tolerance), name


def _labels(dataset, field: str) -> dict[str, str | None]:
    return {Path(path).name: (label.label if label else None) for path, label in zip(*dataset.values(["filepath", field]))}


# ---- classes ------------------------------------------------------------------------------


def test_class_folders_become_classifications_in_the_chosen_field(fo, small_class_tree, fresh_name):
    report = import_dataset(small_class_tree, fresh_name, label_field="species")
    assert report.format == "classes" and report.samples == 60 and report.label_field == "species"
    dataset = load_dataset(fresh_name)
    assert dataset.persistent
    assert not dataset.has_sample_field("ground_truth")
    assert isinstance(dataset.first()["species"], fo.Classification)
    classes = sorted(p.name for p in small_class_tree.iterdir())
    assert dataset.count_values("species.label") == {name: 6 for name in classes}
    for path, label in zip(*dataset.values(["filepath", "species.label"])):
        assert Path(path).parent.name == label
    info = curation_info(dataset)
    assert info["label_field"] == "species"
    assert info["source"]["format"] == "classes" and info["source"]["path"] == str(small_class_tree)


def test_class_tree_skips_non_image_files_and_hidden_folders(tmp_path, fresh_name):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        bad_images.write_rgb_png(tmp_path / label / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("not a sample")
    (tmp_path / "README.md").write_text("two classes")
    (tmp_path / ".thumbnails").mkdir()
    bad_images.write_rgb_png(tmp_path / ".thumbnails" / "t.png")
    assert detect_format(tmp_path) == "classes"
    report = import_dataset(tmp_path, fresh_name)
    dataset = load_dataset(fresh_name)
    assert len(dataset) == 2 == report.samples
    assert dataset.distinct("ground_truth.label") == ["a", "b"]
    assert any("skipped 1 file" in warning and "notes.txt" in warning for warning in report.warnings)


def test_class_tree_takes_nested_images_and_the_unlabelled_folder(fo, tmp_path, fresh_name):
    (tmp_path / "cat" / "2024").mkdir(parents=True)
    (tmp_path / "_unlabeled").mkdir()
    bad_images.write_rgb_png(tmp_path / "cat" / "2024" / "deep.png")
    bad_images.write_rgb_png(tmp_path / "_unlabeled" / "who.png")
    import_dataset(tmp_path, fresh_name, format="classes")
    dataset = load_dataset(fresh_name)
    assert _labels(dataset, "ground_truth") == {"deep.png": "cat", "who.png": None}
    assert dataset.default_classes == ["cat"]


# ---- images -------------------------------------------------------------------------------


def test_unlabelled_image_folder_is_searched_recursively(tmp_path, fresh_name):
    bad_images.write_rgb_png(tmp_path / "top.png")
    (tmp_path / "a" / "b").mkdir(parents=True)
    bad_images.write_rgb_jpeg(tmp_path / "a" / "middle.jpg")
    bad_images.write_rgb_png(tmp_path / "a" / "b" / "deep.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    report = import_dataset(tmp_path, fresh_name)
    assert report.format == "images" and report.label_field is None and report.label_fields == []
    dataset = load_dataset(fresh_name)
    assert sorted(Path(p).name for p in dataset.values("filepath")) == ["deep.png", "middle.jpg", "top.png"]
    assert "label_field" not in curation_info(dataset)


# ---- FiftyOne's own formats, written by FiftyOne's exporters ------------------------------


def test_coco_boxes_survive_the_round_trip(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "coco", fo.types.COCODetectionDataset, label_field="gt")
    assert detect_format(source) == "coco"
    report = import_dataset(source, fresh_name, label_field="boxes")
    dataset = load_dataset(fresh_name)
    # FiftyOne's COCO importer keeps one field per label type: the report says which.
    assert report.label_field in report.label_fields and dataset.has_sample_field(report.label_field)
    assert report.label_field.startswith("boxes")
    assert isinstance(dataset.first()[report.label_field], fo.Detections)
    _assert_boxes_survive(dataset, report.label_field)


def test_coco_layout_with_an_instances_file_is_detected_and_imported(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "coco", fo.types.COCODetectionDataset, label_field="gt")
    (source / "labels.json").rename(source / "instances_val2017.json")
    assert detect_format(source) == "coco"
    report = import_dataset(source, fresh_name)
    _assert_boxes_survive(load_dataset(fresh_name), report.label_field)


def test_yolov5_imports_every_split_with_boxes_and_split_tags(fo, detection_source, tmp_path, fresh_name):
    source = tmp_path / "yolo"
    first, rest = detection_source.limit(1), detection_source.skip(1)
    _export(fo, first, source, fo.types.YOLOv5Dataset, label_field="gt", split="train", classes=["cat", "dog"])
    _export(fo, rest, source, fo.types.YOLOv5Dataset, label_field="gt", split="val", classes=["cat", "dog"])
    assert detect_format(source) == "yolo"
    report = import_dataset(source, fresh_name, label_field="boxes")
    assert report.samples == 4 and report.label_field == "boxes"
    dataset = load_dataset(fresh_name)
    assert dataset.count_sample_tags() == {"train": 1, "val": 3}
    _assert_boxes_survive(dataset, "boxes")


def test_yolov5_keeps_images_that_have_no_boxes(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "yolo", fo.types.YOLOv5Dataset, label_field="gt")
    background = next((source / "images").rglob("img3.png"))
    next((source / "labels").rglob("img3.txt")).unlink()
    report = import_dataset(source, fresh_name)
    assert report.samples == 4
    dataset = load_dataset(fresh_name)
    assert str(background.resolve()) in dataset.values("filepath")


def test_yolov5_yaml_without_splits_is_a_clear_error(tmp_path, fresh_name):
    (tmp_path / "dataset.yaml").write_text("names: [cat, dog]\nnc: 2\n")
    with pytest.raises(DatasetImportError, match=r"dataset\.yaml.*'train', 'val' or 'test'.*names"):
        import_dataset(tmp_path, fresh_name)


def test_yolov4_boxes_survive(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "yolov4", fo.types.YOLOv4Dataset, label_field="gt")
    assert detect_format(source) == "yolov4"
    import_dataset(source, fresh_name)
    _assert_boxes_survive(load_dataset(fresh_name), "ground_truth")


def test_cvat_boxes_survive_to_the_pixel(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "cvat", fo.types.CVATImageDataset, label_field="gt")
    assert detect_format(source) == "cvat"
    report = import_dataset(source, fresh_name)
    assert report.label_field.startswith("ground_truth")
    # CVAT stores whole pixels: a box may move by up to one pixel.
    _assert_boxes_survive(load_dataset(fresh_name), report.label_field, tolerance=1.0 / min(WIDTH, HEIGHT))


def test_cvat_native_layout_annotations_xml_and_images_folder(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "cvat", fo.types.CVATImageDataset, label_field="gt")
    (source / "labels.xml").rename(source / "annotations.xml")
    (source / "data").rename(source / "images")
    assert detect_format(source) == "cvat"
    report = import_dataset(source, fresh_name)
    dataset = load_dataset(fresh_name)
    assert all(Path(path).is_file() for path in dataset.values("filepath"))
    _assert_boxes_survive(dataset, report.label_field, tolerance=1.0 / min(WIDTH, HEIGHT))


def test_fiftyone_dataset_directory_keeps_its_fields(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "fo", fo.types.FiftyOneDataset)
    assert detect_format(source) == "fiftyone"
    report = import_dataset(source, fresh_name)
    assert report.label_field is None and report.label_fields == ["gt", "kind"]
    dataset = load_dataset(fresh_name)
    _assert_boxes_survive(dataset, "gt")
    assert _labels(dataset, "kind") == {"img0.png": "k0", "img1.png": "k1", "img2.png": "k0", "img3.png": "k1"}


# ---- csv ----------------------------------------------------------------------------------


@pytest.fixture
def csv_images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        bad_images.write_rgb_png(folder / f"{index}.png", seed=index)
    return folder


def test_csv_relative_paths_resolve_against_the_csv_folder(fo, tmp_path, csv_images, fresh_name, monkeypatch):
    table = tmp_path / "list.csv"
    table.write_text(f"filepath,label\nimages/0.png,cat\nimages/1.png,dog\n{csv_images / '2.png'},cat\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the CSV, never to the working directory
    assert detect_format(table) == "csv"
    report = import_dataset(table, fresh_name, label_field="animal")
    assert report.format == "csv" and report.samples == 3 and report.warnings == []
    dataset = load_dataset(fresh_name)
    assert all(Path(path).is_file() for path in dataset.values("filepath"))
    assert isinstance(dataset.first()["animal"], fo.Classification)
    assert _labels(dataset, "animal") == {"0.png": "cat", "1.png": "dog", "2.png": "cat"}


def test_csv_empty_label_is_unlabelled_and_numeric_labels_stay_text(tmp_path, csv_images, fresh_name):
    table = tmp_path / "list.csv"
    table.write_text("filepath,label\nimages/0.png,3\nimages/1.png,\nimages/2.png,10\n")
    import_dataset(table, fresh_name)
    dataset = load_dataset(fresh_name)
    # A gap makes pandas read the column as floats; labels must not become "3.0".
    assert _labels(dataset, "ground_truth") == {"0.png": "3", "1.png": None, "2.png": "10"}
    assert dataset.count("ground_truth") == 2


def test_csv_custom_column_names(tmp_path, csv_images, fresh_name):
    table = tmp_path / "list.csv"
    table.write_text("id,_path,class\n1,images/0.png,cat\n2,images/1.png,dog\n")
    report = import_dataset(table, fresh_name, csv_filepath_column="_path", csv_label_column="class")
    assert report.samples == 2
    assert _labels(load_dataset(fresh_name), "ground_truth") == {"0.png": "cat", "1.png": "dog"}


def test_csv_without_a_label_column_when_asked_for_none(tmp_path, csv_images, fresh_name):
    table = tmp_path / "list.csv"
    table.write_text("filepath\nimages/0.png\nimages/1.png\n")
    report = import_dataset(table, fresh_name, csv_label_column="")
    assert report.samples == 2
    assert not load_dataset(fresh_name).has_sample_field("ground_truth")


@pytest.mark.parametrize("column, option", [("filepath", "csv_filepath_column"), ("label", "csv_label_column")])
def test_csv_missing_column_names_the_file_the_column_and_the_columns_present(tmp_path, fresh_name, column, option):
    table = tmp_path / "list.csv"
    table.write_text("path,category\nimages/0.png,cat\n")
    present = {"csv_filepath_column": "path", "csv_label_column": "category"}  # the other column exists
    with pytest.raises(DatasetImportError) as caught:
        import_dataset(table, fresh_name, **{**present, option: column})
    message = str(caught.value)
    assert str(table) in message and repr(column) in message
    assert "the columns are path, category" in message


def test_csv_missing_files_are_kept_and_named_in_a_warning(tmp_path, csv_images, fresh_name):
    table = tmp_path / "list.csv"
    table.write_text("filepath,label\nimages/0.png,cat\nimages/gone.png,dog\n,cat\n")
    report = import_dataset(table, fresh_name)
    assert report.samples == 2
    dataset = load_dataset(fresh_name)
    assert str((csv_images / "gone.png").resolve()) in dataset.values("filepath")
    assert any("1 file(s)" in warning and "gone.png" in warning for warning in report.warnings)
    assert any(":4: empty 'filepath'" in warning for warning in report.warnings)


def test_unreadable_csv_is_an_import_error(tmp_path, fresh_name):
    table = tmp_path / "empty.csv"
    table.write_text("")
    with pytest.raises(DatasetImportError, match="cannot read as CSV"):
        import_dataset(table, fresh_name)


# ---- detect_format ------------------------------------------------------------------------


def test_detect_format_classes_and_images(small_class_tree, tmp_path):
    assert detect_format(small_class_tree) == "classes"
    bad_images.write_rgb_png(tmp_path / "loose.png")
    (tmp_path / "sub").mkdir()
    bad_images.write_rgb_png(tmp_path / "sub" / "x.png")
    assert detect_format(tmp_path) == "images", "images next to folders are not a class tree"
    nested = tmp_path / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    bad_images.write_rgb_png(nested / "a" / "b" / "x.png")
    assert detect_format(nested) == "images", "class folders hold images directly"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "no such file or directory"),
        (lambda root: (root / "notes.txt", (root / "notes.txt").write_text("x"))[0], "expected a directory or a .csv file"),
        (lambda root: (root / "empty", (root / "empty").mkdir())[0], "found no images"),
    ],
    ids=["missing", "not-a-csv", "empty"],
)
def test_detect_format_errors(tmp_path, make, message):
    with pytest.raises(DatasetImportError, match=message):
        detect_format(make(tmp_path))


# ---- names, overwrite, unknown format -----------------------------------------------------


def test_existing_name_without_overwrite_is_a_clear_error(small_class_tree, fresh_name):
    import_dataset(small_class_tree, fresh_name)
    with pytest.raises(DatasetImportError, match=rf"{fresh_name!r} already exists.*--overwrite"):
        import_dataset(small_class_tree, fresh_name)


def test_overwrite_replaces_the_dataset(small_class_tree, tmp_path, fresh_name):
    import_dataset(small_class_tree, fresh_name)
    bad_images.write_rgb_png(tmp_path / "only.png")
    report = import_dataset(tmp_path, fresh_name, overwrite=True)
    assert report.samples == 1
    dataset = load_dataset(fresh_name)
    assert len(dataset) == 1 and curation_info(dataset)["source"]["format"] == "images"


def test_failed_overwrite_keeps_the_old_dataset_and_leaves_no_staging_copy(fo, small_class_tree, tmp_path, fresh_name):
    import_dataset(small_class_tree, fresh_name)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.json").write_text("{ not json")
    with pytest.raises(DatasetImportError, match="could not import as 'coco'"):
        import_dataset(broken, fresh_name, overwrite=True)
    assert len(load_dataset(fresh_name)) == 60
    assert not [name for name in fo.list_datasets() if name.startswith(f"{fresh_name}.importing")]


def test_unknown_format_lists_the_valid_ones(small_class_tree, fresh_name):
    with pytest.raises(DatasetImportError) as caught:
        import_dataset(small_class_tree, fresh_name, format="pascal")
    assert "'pascal'" in str(caught.value)
    for name in FORMATS:
        assert name in str(caught.value)


def test_missing_source_with_an_explicit_format(tmp_path, fresh_name):
    with pytest.raises(DatasetImportError, match="no such file or directory"):
        import_dataset(tmp_path / "nope", fresh_name, format="classes")


def test_empty_csv_imports_with_a_warning(tmp_path, fresh_name):
    table = tmp_path / "list.csv"
    table.write_text("filepath,label\n")
    report = import_dataset(table, fresh_name)
    assert report.samples == 0 and any("no samples" in warning for warning in report.warnings)


# ---- demo ---------------------------------------------------------------------------------


def test_demo_dataset_is_imported_once(fresh_name):
    dataset = ensure_demo_dataset(fresh_name)
    assert len(dataset) == 1012  # 100 per class plus 12 planted near duplicates (data/fashion-mnist-demo/README.md)
    counts = dataset.count_values("ground_truth.label")
    assert len(counts) == 10 and set(counts.values()) == {101, 102}
    from fiftyone import ViewField as F

    assert len(dataset.match(F("filepath").contains_str("near-duplicate-of-"))) == 12
    dataset.info = {**dataset.info, "marker": 1}
    dataset.save()
    assert ensure_demo_dataset(fresh_name).info.get("marker") == 1, "a second call must not re-import"


def test_source_files_are_not_modified(fo, detection_source, tmp_path, fresh_name):
    source = _export(fo, detection_source, tmp_path / "coco", fo.types.COCODetectionDataset, label_field="gt")
    before = json.loads((source / "labels.json").read_text())
    import_dataset(source, fresh_name)
    assert json.loads((source / "labels.json").read_text()) == before
    shutil.rmtree(source)
