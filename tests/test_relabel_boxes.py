"""curation.relabel with boxes: send images with their boxes to CVAT / Label Studio, bring
the corrected boxes back as undoable object decisions (issue 12, "Review and export")."""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from curation import relabel
from curation.relabel import AnnotationFileError, export_annotation_task, import_annotations

DEMO_SOURCE = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"
FIELD = "ground_truth"
SIZE = 28  # the demo images are 28 x 28 pixels
# Per image: (class, relative [x, y, width, height]); chosen so pixel corners are exact.
BOXES = [("cat", [0.25, 0.25, 0.5, 0.25]), ("dog", [0.5, 0.5, 0.25, 0.5]), ("bird", [0.0, 0.0, 0.25, 0.25])]


@pytest.fixture
def boxes_dataset(fresh_name):
    """Four demo images with three boxes each (cat, dog, bird); on image 3 the bird box is
    decided "remove" in the product, so it is never sent."""
    import fiftyone as fo

    from curation.object_decisions import remove_objects

    samples = [fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=[
        fo.Detection(label=label, bounding_box=list(box)) for label, box in BOXES]))
        for path in sorted(DEMO_SOURCE.rglob("*.png"))[:4]]
    dataset = fo.Dataset(fresh_name)
    dataset.add_samples(samples)
    removed = _box(dataset, 3, "bird")
    remove_objects(dataset, FIELD, [removed], reason="drawn on nothing", source="test")
    return dataset


def _sample_ids(dataset) -> list[str]:
    return dataset.values("id")


def _box(dataset, index: int, label: str) -> str:
    """The id of the first box on the ``index``-th sample whose class was ``label`` at first."""
    for detection in dataset.skip(index).first()[FIELD].detections:
        previous = detection.get_field("previous_label") if detection.has_field("previous_label") else None
        if (previous or detection.label) == label:
            return detection.id
    raise AssertionError(f"no {label} box on sample {index}")


def _boxes(dataset) -> dict[str, object]:
    dataset.reload()
    return {d.id: d for detections in dataset.values(f"{FIELD}.detections") for d in detections or []}


def _decision(detection):
    return detection.get_field("decision") if detection.has_field("decision") else None


def _cvat_task(dataset, tmp_path, **options) -> tuple[Path, ET.ElementTree]:
    out = tmp_path / "cvat-task"
    export_annotation_task(dataset, out, format="cvat", label_field=FIELD, sample_ids=_sample_ids(dataset), **options)
    return out, ET.parse(out / "annotations.xml")


def _cvat_box_of(tree: ET.ElementTree, object_id: str) -> ET.Element:
    for element in tree.getroot().iter("box"):
        if element.find(f"attribute[@name='{relabel.OBJECT_ID_ATTRIBUTE}']").text == object_id:
            return element
    raise AssertionError(f"no box {object_id} in the CVAT file")


def _image_element(tree: ET.ElementTree, sample_id: str) -> ET.Element:
    return next(image for image in tree.getroot().iter("image") if image.get("name").startswith(sample_id))


def _add_assignee(tree: ET.ElementTree, username: str) -> None:
    """CVAT's own export names the job's assignee in <meta>; the import records it."""
    task = tree.getroot().find("meta/task")
    ET.SubElement(ET.SubElement(task, "assignee"), "username").text = username


# ------------------------------------------------------------------------ export


def test_cvat_export_writes_boxes_in_pixels_with_their_ids_and_leaves_removed_boxes_out(boxes_dataset, tmp_path):
    dataset = boxes_dataset
    out, tree = _cvat_task(dataset, tmp_path)
    ids = _sample_ids(dataset)
    removed = _box(dataset, 3, "bird")
    boxes = _boxes(dataset)
    sent = list(tree.getroot().iter("box"))
    assert len(sent) == 4 * 3 - 1 and removed not in {b.find("attribute").text for b in sent}
    cat = _cvat_box_of(tree, _box(dataset, 0, "cat"))
    assert cat.get("label") == "cat"
    assert [cat.get(key) for key in ("xtl", "ytl", "xbr", "ybr")] == ["7.00", "7.00", "21.00", "14.00"]
    image = _image_element(tree, ids[0])
    assert (image.get("width"), image.get("height")) == (str(SIZE), str(SIZE))
    # every label declares the id attribute, so that CVAT keeps it through its own import
    for label in tree.getroot().iter("label"):
        assert label.find("attributes/attribute/name").text == relabel.OBJECT_ID_ATTRIBUTE
        assert label.find("type").text == "rectangle"
    mapping = json.loads((out / "mapping.json").read_text())
    assert mapping["kind"] == "detections" and mapping["classes"] == ["bird", "cat", "dog"]
    entry = mapping["images"][image.get("name")]
    assert entry["sample_id"] == ids[0] and (entry["width"], entry["height"]) == (SIZE, SIZE)
    assert [(b["object_id"], b["label"], b["bounding_box"]) for b in entry["boxes"]] == [
        (d.id, d.label, d.bounding_box) for d in dataset.first()[FIELD].detections]
    assert all(box["object_id"] != removed for e in mapping["images"].values() for box in e["boxes"])
    with zipfile.ZipFile(out / "task.zip") as archive:
        assert archive.read("annotations.xml") == (out / "annotations.xml").read_bytes()
    assert len(boxes) == 12


def test_labelstudio_export_writes_rectangle_labels_in_percent_with_the_box_ids(boxes_dataset, tmp_path):
    dataset = boxes_dataset
    out = tmp_path / "ls-task"
    task = export_annotation_task(dataset, out, format="labelstudio", label_field=FIELD, sample_ids=_sample_ids(dataset))
    assert task.n_boxes == 11 and task.classes == ["bird", "cat", "dog"]
    config = ET.parse(out / "label_config.xml").getroot()
    rectangles = config.find("RectangleLabels")
    assert config.find("Choices") is None and rectangles.get("toName") == "image"
    assert [label.get("value") for label in rectangles.iter("Label")] == ["bird", "cat", "dog"]
    tasks = json.loads((out / "tasks.json").read_text())
    first = tasks[0]["predictions"][0]["result"]
    detections = dataset.first()[FIELD].detections
    assert [region["id"] for region in first] == [d.id for d in detections]
    cat = first[0]
    assert cat["type"] == "rectanglelabels" and (cat["original_width"], cat["original_height"]) == (SIZE, SIZE)
    assert cat["value"] == {"x": 25.0, "y": 25.0, "width": 50.0, "height": 25.0, "rotation": 0,
                            "rectanglelabels": ["cat"]}
    assert len(tasks[3]["predictions"][0]["result"]) == 2  # the removed bird stays home


def test_export_refuses_a_field_that_is_neither_classes_nor_boxes(boxes_dataset, tmp_path):
    with pytest.raises(ValueError, match="field 'filepath' .*expected fo.Classification, got StringField "
                                         r"\(fo.Detections works too, for boxes\)"):
        export_annotation_task(boxes_dataset, tmp_path / "t", format="cvat", label_field="filepath",
                               sample_ids=_sample_ids(boxes_dataset))
    assert not (tmp_path / "t").exists()


def test_box_class_names_never_decide_where_files_go(boxes_dataset, tmp_path):
    dataset = boxes_dataset
    sample = dataset.first()
    sample[FIELD].detections[0].label = "../../escape/<&>\"'"
    sample.save()
    out = tmp_path / "task"
    task = export_annotation_task(dataset, out, format="cvat", label_field=FIELD, sample_ids=_sample_ids(dataset))
    assert all(path.resolve().is_relative_to(out.resolve()) for path in task.files)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in _sample_ids(dataset))
    assert not (tmp_path / "escape").exists()
    tree = ET.parse(out / "annotations.xml")
    assert _cvat_box_of(tree, sample[FIELD].detections[0].id).get("label") == "../../escape/<&>\"'"
    sample[FIELD].detections[0].label = "cat\x00"
    sample.save()
    with pytest.raises(ValueError, match="control character U\\+0000"):
        export_annotation_task(dataset, tmp_path / "nul", format="labelstudio", label_field=FIELD,
                               sample_ids=_sample_ids(dataset))
    assert not (tmp_path / "nul").exists()


# ------------------------------------------------------------------------ CVAT round trip


def _annotate_in_cvat(dataset, tree: ET.ElementTree) -> dict[str, str]:
    """What an annotator does: relabel the cat of image 0, delete the dog of image 0, move
    the bird of image 1 and relabel it, move the dog of image 2, draw a new box on image 2."""
    ids = _sample_ids(dataset)
    changed = {"relabelled": _box(dataset, 0, "cat"), "deleted": _box(dataset, 0, "dog"),
               "moved_relabelled": _box(dataset, 1, "bird"), "moved": _box(dataset, 2, "dog")}
    _cvat_box_of(tree, changed["relabelled"]).set("label", "dog")
    image0 = _image_element(tree, ids[0])
    image0.remove(_cvat_box_of(tree, changed["deleted"]))
    bird = _cvat_box_of(tree, changed["moved_relabelled"])
    bird.attrib.update(label="cat", xtl="14.00", ytl="14.00", xbr="21.00", ybr="21.00")
    dog = _cvat_box_of(tree, changed["moved"])
    dog.attrib.update(xtl="0.00", xbr="7.00")  # was 14..21 wide: moved left
    new = ET.SubElement(_image_element(tree, ids[2]), "box", {"label": "bird", "source": "manual", "occluded": "0",
                                                              "xtl": "21.00", "ytl": "0.00", "xbr": "28.00",
                                                              "ybr": "14.00", "z_order": "0"})
    ET.SubElement(new, "attribute", {"name": relabel.OBJECT_ID_ATTRIBUTE}).text = ""  # CVAT's default: empty
    _add_assignee(tree, "anna")
    return changed


def test_cvat_round_trip_relabels_moves_removes_adds_and_undo_restores(boxes_dataset, tmp_path):
    import fiftyone as fo

    from curation.decisions import record_decision
    from curation.export import export_dataset
    from curation.object_decisions import undo_objects
    from curation.snapshots import list_snapshots

    dataset = boxes_dataset
    out, tree = _cvat_task(dataset, tmp_path)
    before = {object_id: (d.label, list(d.bounding_box)) for object_id, d in _boxes(dataset).items()}
    changed = _annotate_in_cvat(dataset, tree)
    tree.write(out / "annotations.xml", encoding="utf-8", xml_declaration=True)

    preview = import_annotations(dataset, out / "annotations.xml", label_field=FIELD, dry_run=True)
    assert preview.dry_run and preview.kind == "detections" and preview.problems == []
    assert {(old, new) for _, _, old, new in preview.boxes_relabelled} == {("cat", "dog"), ("bird", "cat")}
    assert {object_id for _, object_id, _, _ in preview.boxes_moved} == {changed["moved"], changed["moved_relabelled"]}
    assert [(object_id, label) for _, object_id, label in preview.boxes_removed] == [(changed["deleted"], "dog")]
    assert [(label, box) for _, label, box in preview.boxes_added] == [("bird", (0.75, 0.0, 0.25, 0.5))]
    assert len(preview.boxes_confirmed) == 11 - 4
    assert preview.summary().startswith("would relabel 2 box(es), move 2, remove 1, add 1; confirmed 7")
    assert {k: (d.label, list(d.bounding_box)) for k, d in _boxes(dataset).items()} == before, "a dry run writes nothing"
    record_decision(dataset, _sample_ids(dataset)[:3], "annotate", reason="boxes to fix", source="test")
    n_auto = len(list_snapshots(dataset, kinds=("auto",)))

    result = import_annotations(dataset, out / "annotations.xml", label_field=FIELD)
    assert result.problems == [] and len(result.added_ids) == 1
    assert result.reviewed == _sample_ids(dataset)[:3] and "marked 3 image(s) sent to annotation reviewed" in result.summary()
    assert dataset.values("decision") == ["keep", "keep", "keep", None], "the reviewed images leave the queue"
    assert len(list_snapshots(dataset, kinds=("auto",))) == n_auto + 1, "an automatic snapshot before the import"
    boxes = _boxes(dataset)
    relabelled = boxes[changed["relabelled"]]
    assert (relabelled.label, relabelled["previous_label"], _decision(relabelled)) == ("dog", "cat", "relabel")
    assert relabelled["decision_source"] == "cvat:annotations.xml" and "by anna" in relabelled["decision_reason"]
    assert _decision(boxes[changed["deleted"]]) == "remove"
    moved = boxes[changed["moved"]]
    assert _decision(moved) == "moved" and moved.label == "dog"
    assert moved.bounding_box == pytest.approx([0.0, 0.5, 0.25, 0.5])
    assert moved["previous_bounding_box"] == pytest.approx([0.5, 0.5, 0.25, 0.5])
    both = boxes[changed["moved_relabelled"]]
    assert (both.label, both["previous_label"], _decision(both)) == ("cat", "bird", "moved")
    assert both.bounding_box == pytest.approx([0.5, 0.5, 0.25, 0.25])
    added = boxes[result.added_ids[0]]
    assert (added.label, _decision(added)) == ("bird", "added") and added.bounding_box == pytest.approx([0.75, 0, 0.25, 0.5])
    kept = boxes[_box(dataset, 3, "cat")]
    assert _decision(kept) == "keep" and kept["decision_source"] == "cvat:annotations.xml"
    assert _decision(boxes[_box(dataset, 3, "bird")]) == "remove", "a box removed before the export stays removed"
    assert _boxes(dataset)[_box(dataset, 3, "bird")]["decision_source"] == "test"

    # the same file again: recognised, nothing written twice
    again = import_annotations(dataset, out / "annotations.xml", label_field=FIELD)
    assert not (again.boxes_relabelled or again.boxes_moved or again.boxes_removed or again.boxes_added)
    assert result.added_ids[0] in again.already_applied and len(_boxes(dataset)) == 13

    # a COCO export carries the corrected boxes
    coco = tmp_path / "coco"
    export_dataset(dataset, coco, format="coco", label_field=FIELD)
    back = fo.Dataset.from_dir(dataset_dir=str(coco), dataset_type=fo.types.COCODetectionDataset,
                               data_path="data", labels_path="labels.json")
    try:
        exported = {Path(path).stem: detections for path, detections in zip(back.values("filepath"),
                                                                           back.values("detections"))}
        by_name = dict(zip((Path(p).stem for p in dataset.values("filepath")), dataset.values("id")))
        image0 = exported[next(name for name, i in by_name.items() if i == _sample_ids(dataset)[0])]
        assert sorted(d.label for d in image0.detections) == ["bird", "dog"]  # cat -> dog, the dog deleted
        image2 = exported[next(name for name, i in by_name.items() if i == _sample_ids(dataset)[2])]
        assert sorted((d.label, tuple(round(v, 3) for v in d.bounding_box)) for d in image2.detections) == [
            ("bird", (0.0, 0.0, 0.25, 0.25)), ("bird", (0.75, 0.0, 0.25, 0.5)), ("cat", (0.25, 0.25, 0.5, 0.25)),
            ("dog", (0.0, 0.5, 0.25, 0.5))]
        assert sum(len(d.detections) for d in back.values("detections") if d) == 11 - 1 + 1
    finally:
        back.delete()

    # undo brings every box back where and as it was; the drawn box goes
    touched = [*changed.values(), result.added_ids[0]]
    assert undo_objects(dataset, FIELD, touched) == 5
    boxes = _boxes(dataset)
    assert result.added_ids[0] not in boxes
    for object_id in changed.values():
        assert (boxes[object_id].label, boxes[object_id].bounding_box) == (before[object_id][0],
                                                                          pytest.approx(before[object_id][1]))
        assert _decision(boxes[object_id]) is None


def test_cvat_own_zip_without_mapping_matches_by_image_name_and_the_boxes_held(boxes_dataset, tmp_path):
    """CVAT's export zip holds no mapping.json: the sample comes from the image name, and the
    boxes sent are the sample's boxes (all but the removed)."""
    dataset = boxes_dataset
    out, tree = _cvat_task(dataset, tmp_path)
    ids = _sample_ids(dataset)
    deleted = _box(dataset, 1, "cat")
    _image_element(tree, ids[1]).remove(_cvat_box_of(tree, deleted))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("annotations.xml", ET.tostring(tree.getroot(), encoding="utf-8"))
    result = relabel.import_annotations_from_bytes(dataset, buffer.getvalue(), label_field=FIELD,
                                                   name_hint="C:\\Users\\me\\task_7.zip")
    assert [object_id for _, object_id, _ in result.boxes_removed] == [deleted] and result.problems == []
    box = _boxes(dataset)[deleted]
    assert _decision(box) == "remove" and box["decision_source"] == "cvat:task_7.zip"


# ------------------------------------------------------------------------ Label Studio round trip


def _labelstudio_export(tasks: list[dict], edit) -> list[dict]:
    """A Label Studio JSON export of the task: each prediction accepted into an annotation
    (Label Studio keeps the region ids), then ``edit``ed by the annotator."""
    exported = []
    for number, task in enumerate(tasks, start=1):
        result = copy.deepcopy(task["predictions"][0]["result"])
        result = edit(task["data"]["sample_id"], result)
        exported.append({"id": number, "data": task["data"], "predictions": task["predictions"],
                         "annotations": [{"id": 100 + number, "completed_by": {"id": 1, "email": "lee@example.com"},
                                          "was_cancelled": False, "result": result,
                                          "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z"}]})
    return exported


def test_labelstudio_round_trip_applies_the_annotators_boxes(boxes_dataset, tmp_path):
    from curation.object_decisions import undo_objects

    dataset = boxes_dataset
    out = tmp_path / "ls-task"
    export_annotation_task(dataset, out, format="labelstudio", label_field=FIELD, sample_ids=_sample_ids(dataset))
    ids = _sample_ids(dataset)
    relabelled, deleted, moved = _box(dataset, 0, "dog"), _box(dataset, 1, "bird"), _box(dataset, 2, "cat")

    def edit(sample_id, result):
        for region in result:
            if region["id"] == relabelled:
                region["value"]["rectanglelabels"] = ["bird"]
            if region["id"] == moved:
                region["value"].update(x=0.0, y=50.0)
        result = [region for region in result if region["id"] != deleted]
        if sample_id == ids[3]:  # Label Studio gives a drawn region a random id of its own
            result.append({"id": "Xa7_kq2Lm0", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
                           "original_width": SIZE, "original_height": SIZE,
                           "value": {"x": 50.0, "y": 0.0, "width": 50.0, "height": 25.0, "rotation": 0,
                                     "rectanglelabels": ["dog"]}})
        return result

    export_path = out / "project-1-at-2024.json"
    export_path.write_text(json.dumps(_labelstudio_export(json.loads((out / "tasks.json").read_text()), edit)))
    result = import_annotations(dataset, export_path, label_field=FIELD)
    assert result.format == "labelstudio" and result.problems == []
    assert [(object_id, old, new) for _, object_id, old, new in result.boxes_relabelled] == [(relabelled, "dog", "bird")]
    assert [object_id for _, object_id, _ in result.boxes_removed] == [deleted]
    assert [object_id for _, object_id, _, _ in result.boxes_moved] == [moved]
    boxes = _boxes(dataset)
    assert boxes[relabelled].label == "bird" and "lee@example.com" in boxes[relabelled]["decision_reason"]
    assert boxes[relabelled]["decision_source"] == "labelstudio:project-1-at-2024.json"
    assert _decision(boxes[deleted]) == "remove"
    assert boxes[moved].bounding_box == pytest.approx([0.0, 0.5, 0.5, 0.25])
    added = boxes[result.added_ids[0]]
    assert added.label == "dog" and added.bounding_box == pytest.approx([0.5, 0.0, 0.5, 0.25])
    assert undo_objects(dataset, FIELD, [moved]) == 1
    assert _boxes(dataset)[moved].bounding_box == pytest.approx([0.25, 0.25, 0.5, 0.25])


def test_labelstudio_json_min_cannot_match_boxes_and_says_so(boxes_dataset, tmp_path):
    dataset = boxes_dataset
    minimal = [{"id": 1, "image": f"/data/local-files/?d=images/{dataset.first().id}.png",
                "label": [{"x": 25, "y": 25, "width": 50, "height": 25, "rotation": 0, "rectanglelabels": ["cat"],
                           "original_width": SIZE, "original_height": SIZE}]}]
    path = tmp_path / "min.json"
    path.write_text(json.dumps(minimal))
    result = import_annotations(dataset, path, label_field=FIELD)
    assert result.problem_kinds == {"no box ids": 1}
    assert result.problems[0].startswith(f"{path}: task 1: this is Label Studio's JSON-MIN export")
    assert not any(_decision(d) for d in _boxes(dataset).values() if _decision(d) != "remove")


# ------------------------------------------------------------------------ bad and hostile input


def test_bad_boxes_are_reported_by_file_and_item_and_the_rest_is_applied(boxes_dataset, tmp_path):
    from curation.decisions import record_decision

    dataset = boxes_dataset
    out, tree = _cvat_task(dataset, tmp_path)
    ids = _sample_ids(dataset)
    outside, negative, garbled = _box(dataset, 0, "cat"), _box(dataset, 0, "dog"), _box(dataset, 1, "cat")
    unknown_class, rotated, good = _box(dataset, 1, "dog"), _box(dataset, 2, "cat"), _box(dataset, 2, "dog")
    _cvat_box_of(tree, outside).attrib.update(xbr="40.00")
    _cvat_box_of(tree, negative).attrib.update(xtl="20.00", xbr="10.00")
    _cvat_box_of(tree, garbled).attrib.update(ytl="NaN")
    _cvat_box_of(tree, unknown_class).set("label", "unicorn")
    _cvat_box_of(tree, rotated).set("rotation", "30")
    _cvat_box_of(tree, good).set("label", "bird")
    ET.SubElement(_image_element(tree, ids[2]), "polygon", {"label": "cat", "points": "1,1;5,1;5,5"})
    del _image_element(tree, ids[3]).attrib["width"]
    stranger = ET.SubElement(tree.getroot(), "image", {"id": "9", "name": "../../etc/passwd", "width": "28",
                                                       "height": "28"})
    ET.SubElement(stranger, "box", {"label": "cat", "xtl": "0", "ytl": "0", "xbr": "5", "ybr": "5"})
    ET.SubElement(tree.getroot(), "image", {"id": "10", "name": "ffffffffffffffffffffffff.png", "width": "28",
                                            "height": "28"})
    path = tmp_path / "annotations.xml"
    tree.write(path, encoding="utf-8", xml_declaration=True)
    record_decision(dataset, ids, "annotate", reason="boxes to fix", source="test")
    result = import_annotations(dataset, path, label_field=FIELD)

    assert result.reviewed == [] and set(dataset.values("decision")) == {"annotate"}, "every image had a bad box"
    assert result.problem_kinds == {"box outside the image": 1, "negative box size": 1, "malformed box": 1,
                                    "unknown class": 1, "rotated box": 1, "no image size": 1, "unknown image": 1,
                                    "unknown sample id": 1, "not a box": 1}
    for problem in result.problems:
        assert problem.startswith(f"{path}: <image id="), problem
    line = next(p for p in result.problems if "outside the image" in p)
    assert f"name='{ids[0]}.png'> box 0 (object_id {outside})" in line and "xbr='40.00'" in line
    assert "class 'unicorn' is not a class of 'ground_truth'" in next(p for p in result.problems if "unicorn" in p)
    assert "'../../etc/passwd'" in next(p for p in result.problems if "passwd" in p)
    assert "found <polygon>; only <box> is read" in next(p for p in result.problems if "polygon" in p)
    # the good correction is applied; the boxes of bad items are left exactly as they were
    assert [(object_id, new) for _, object_id, _, new in result.boxes_relabelled] == [(good, "bird")]
    assert result.boxes_removed == [] and result.boxes_added == []
    boxes = _boxes(dataset)
    for object_id in (outside, negative, garbled, unknown_class, rotated):
        assert _decision(boxes[object_id]) is None and boxes[object_id].label in ("cat", "dog")
    assert not any(_decision(d) for d in dataset.skip(3).first()[FIELD].detections if d.label != "bird")


def test_a_file_whose_boxes_carry_no_ids_is_refused_before_anything_is_removed(boxes_dataset, tmp_path):
    """Boxes that never reached the tool (the task made from images only) come back without
    ids: reading the file would delete every box, so it is refused."""
    dataset = boxes_dataset
    out, tree = _cvat_task(dataset, tmp_path)
    for image in tree.getroot().iter("image"):
        for box in list(image):
            image.remove(box)
    ET.SubElement(_image_element(tree, dataset.first().id), "box", {"label": "cat", "xtl": "1", "ytl": "1",
                                                                    "xbr": "5", "ybr": "5"})
    path = out / "annotations.xml"
    tree.write(path, encoding="utf-8", xml_declaration=True)
    with pytest.raises(AnnotationFileError, match=r"annotations.xml: none of the 4 returned image\(s\) holds a box "
                                                  r"with the id of one of the 11 box\(es\) sent; refused"):
        import_annotations(dataset, path, label_field=FIELD)
    assert not any(_decision(d) for d in _boxes(dataset).values() if _decision(d) != "remove")


@pytest.mark.parametrize("content, message", [
    (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
     b'<annotations><image id="0" name="a.png" width="2" height="2"><box label="&y;" xtl="0" ytl="0" xbr="1" '
     b'ybr="1"/></image></annotations>', "document type declaration"),
    (b'<annotations><image id="0" name="a.png" width="2" height="2"><box label="cat"', "malformed XML"),
    (b"<" + b"<a>" * 10, "malformed XML"),
])
def test_hostile_and_broken_xml_is_refused_for_boxes_too(boxes_dataset, tmp_path, content, message):
    path = tmp_path / "annotations.xml"
    path.write_bytes(content)
    with pytest.raises(AnnotationFileError, match=message):
        import_annotations(boxes_dataset, path, label_field=FIELD)


def test_a_box_file_beyond_the_size_limit_is_refused_unread(boxes_dataset, tmp_path, monkeypatch):
    out, _ = _cvat_task(boxes_dataset, tmp_path)
    monkeypatch.setattr(relabel, "MAX_ANNOTATION_BYTES", 1000)
    with pytest.raises(AnnotationFileError, match="more than the 1,000 bytes"):
        import_annotations(boxes_dataset, out / "annotations.xml", label_field=FIELD)
    with pytest.raises(AnnotationFileError, match="more than the 1,000 bytes"):
        relabel.import_annotations_from_bytes(boxes_dataset, (out / "task.zip").read_bytes(), label_field=FIELD)


def test_labelstudio_bad_regions_are_problems_and_their_boxes_stay(boxes_dataset, tmp_path):
    dataset = boxes_dataset
    out = tmp_path / "ls"
    export_annotation_task(dataset, out, format="labelstudio", label_field=FIELD, sample_ids=_sample_ids(dataset))
    first = dataset.first()[FIELD].detections

    def edit(sample_id, result):
        if sample_id != dataset.first().id:
            return result
        result[0]["value"]["width"] = -10
        result[1]["value"]["x"] = "12"
        result[2]["value"]["rectanglelabels"] = ["cat", "dog"]
        return result

    tasks = _labelstudio_export(json.loads((out / "tasks.json").read_text()), edit)
    tasks.append({"id": 99, "data": {"sample_id": "0" * 24}, "annotations": [{"result": []}]})
    tasks.append("not a task")
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    result = import_annotations(dataset, path, label_field=FIELD)
    assert result.problem_kinds == {"negative box size": 1, "malformed box": 1, "several labels": 1,
                                    "unknown sample id": 1, "not a task": 1}
    assert any(p.startswith(f"{path}: task 1 region 0 (object_id {first[0].id})") for p in result.problems)
    assert result.boxes_removed == [] and not any(_decision(d) for d in dataset.first()[FIELD].detections)
    assert len(result.boxes_confirmed) == 11 - 3


# ------------------------------------------------------------------------ command line


def test_cli_round_trip_with_a_detections_field(boxes_dataset, tmp_path, capsys):
    from curation.cli import main
    from curation.decisions import record_decision

    dataset = boxes_dataset
    record_decision(dataset, [dataset.first().id], "annotate", reason="boxes to fix", source="test")
    out = tmp_path / "task"
    assert main(["relabel-export", "--dataset", dataset.name, "--tool", "cvat", "--out", str(out),
                 "--label-field", FIELD]) == 0
    assert "cvat task with 1 images, 3 boxes and 3 classes" in capsys.readouterr().out
    tree = ET.parse(out / "annotations.xml")
    assert len(list(tree.getroot().iter("image"))) == 1 and len(list(tree.getroot().iter("box"))) == 3
    bird = _box(dataset, 0, "bird")
    _cvat_box_of(tree, bird).set("label", "dog")
    tree.write(out / "annotations.xml", encoding="utf-8", xml_declaration=True)
    assert main(["relabel-import", "--dataset", dataset.name, "--from", str(out / "task.zip"), "--label-field", FIELD,
                 "--dry-run"]) == 0
    assert "would relabel 0 box(es)" in capsys.readouterr().out, "task.zip still holds the file as exported"
    assert main(["relabel-import", "--dataset", dataset.name, "--from", str(out / "annotations.xml"),
                 "--label-field", FIELD]) == 0
    printed = capsys.readouterr().out
    assert "relabelled 1 box(es), moved 0, removed 0, added 0" in printed
    assert f"{dataset.first().id} box {bird}: bird -> dog" in printed
    assert _boxes(dataset)[bird].label == "dog"
    assert dataset.first()["decision"] == "keep", "the image sent to annotation is reviewed"
    assert main(["relabel-export", "--dataset", dataset.name, "--tool", "cvat", "--out", str(tmp_path / "x"),
                 "--label-field", "filepath", "--ids", dataset.first().id]) != 0
    assert "--label-field 'filepath' is not a classification or detections field" in capsys.readouterr().err


# ------------------------------------------------------------------------ object changes


@pytest.mark.parametrize("change, message", [
    (dict(decision="flip", object_id="x"), "unknown decision 'flip'. Available: relabel, remove, added, keep, moved"),
    (dict(decision="added", object_id="x", label="cat", bounding_box=(0, 0, 1, 1)), "none for 'added'"),
    (dict(decision="moved", object_id="x", bounding_box=(0, 0, -1, 1)), "positive size, got"),
    (dict(decision="added", label=" ", bounding_box=(0, 0, 1, 1)), "expected a non-empty class name"),
    (dict(decision="remove", object_id="0" * 24), "has no box with id '000000000000000000000000'"),
])
def test_object_changes_are_checked_before_anything_is_written(boxes_dataset, change, message):
    from curation.errors import CurationInputError
    from curation.object_decisions import ObjectChange, apply_object_changes

    dataset = boxes_dataset
    good = ObjectChange(dataset.first().id, "remove", _box(dataset, 0, "cat"))
    with pytest.raises(CurationInputError, match=message):
        apply_object_changes(dataset, FIELD, [good, ObjectChange(dataset.first().id, **change)], source="test")
    assert _decision(_boxes(dataset)[good.object_id]) is None
