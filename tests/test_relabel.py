"""curation.relabel: the round trip to CVAT and Label Studio and back into FiftyOne."""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from curation import relabel
from curation.decisions import record_decision
from curation.relabel import AnnotationFileError, export_annotation_task, import_annotations

LABEL_FIELD = "ground_truth"


@pytest.fixture
def dataset(embedded_dataset):
    """A clone of the 60-sample dataset with 5 samples (of 5 classes) marked "annotate"."""
    clone = embedded_dataset.clone(f"relabel-{uuid.uuid4().hex[:8]}")
    try:
        ids = clone.values("id")[::12][:5]
        record_decision(clone, ids, "annotate", reason="looks wrong", source="test")
        yield clone
    finally:
        clone.delete()


def _annotate_ids(dataset) -> list[str]:
    from fiftyone import ViewField as F

    return dataset.match(F("decision") == "annotate").values("id")


def _labels(dataset, ids) -> dict[str, str]:
    return dict(zip(ids, dataset.select(ids, ordered=True).values(f"{LABEL_FIELD}.label")))


def _other_class(dataset, label: str) -> str:
    return next(name for name in sorted(dataset.distinct(f"{LABEL_FIELD}.label")) if name != label)


def _cvat_export_xml(images: list[tuple[str, str | None]], *, username: str = "anna", extra: str = "") -> str:
    """An annotations.xml the way CVAT's "Export task dataset > CVAT for images 1.1" writes it."""
    rows = []
    for index, (name, label) in enumerate(images):
        tag = f'\n    <tag label="{label}" source="manual">\n    </tag>' if label is not None else ""
        rows.append(f'  <image id="{index}" name="{name}" width="28" height="28">{tag}\n  </image>')
    return f"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id><name>relabel</name><size>{len(images)}</size><mode>annotation</mode><overlap>0</overlap>
      <bugtracker></bugtracker><created>2024-05-01 10:00:00.000000+00:00</created>
      <updated>2024-05-02 10:00:00.000000+00:00</updated><subset>default</subset>
      <start_frame>0</start_frame><stop_frame>{len(images) - 1}</stop_frame><frame_filter></frame_filter>
      <segments><segment><id>9</id><start>0</start><stop>{len(images) - 1}</stop><url>http://localhost:8080/api/jobs/9</url></segment></segments>
      <owner><username>admin</username><email>admin@example.com</email></owner>
      <assignee><username>{username}</username><email></email></assignee>
      <labels><label><name>bag</name><color>#33ddff</color><type>any</type><attributes></attributes></label></labels>
    </task>
    <dumped>2024-05-02 10:05:00.000000+00:00</dumped>
  </meta>
{chr(10).join(rows)}
{extra}
</annotations>
"""


# ------------------------------------------------------------------------ CVAT


def test_cvat_export_lists_every_class_and_tags_the_current_label(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    sources = dict(zip(dataset.values("id"), dataset.values("filepath")))
    source_bytes = {sample_id: Path(sources[sample_id]).read_bytes() for sample_id in ids}

    export = export_annotation_task(dataset, tmp_path / "cvat", format="cvat", label_field=LABEL_FIELD)

    assert export.n_samples == 5 and export.format == "cvat"
    all_classes = sorted(dataset.distinct(f"{LABEL_FIELD}.label"))
    assert export.classes == all_classes and len(all_classes) == 10
    root = ET.parse(tmp_path / "cvat" / "annotations.xml").getroot()
    assert root.findtext("version") == "1.1"
    assert [label.findtext("name") for label in root.findall("meta/task/labels/label")] == all_classes
    images = root.findall("image")
    assert {image.get("name") for image in images} == {f"{sample_id}.png" for sample_id in ids}
    for image in images:
        sample_id = image.get("name").removesuffix(".png")
        (tag,) = image.findall("tag")
        assert (tag.get("label"), tag.get("source")) == (before[sample_id], "manual")
        assert (image.get("width"), image.get("height")) == ("28", "28")
        # copied byte for byte, the source untouched
        assert (tmp_path / "cvat" / "images" / image.get("name")).read_bytes() == source_bytes[sample_id]
        assert Path(sources[sample_id]).read_bytes() == source_bytes[sample_id]
    with zipfile.ZipFile(tmp_path / "cvat" / "task.zip") as archive:
        assert sorted(archive.namelist()) == ["annotations.xml"] + sorted(f"images/{sample_id}.png" for sample_id in ids)
    mapping = json.loads((tmp_path / "cvat" / "mapping.json").read_text())
    assert {entry["sample_id"] for entry in mapping["images"].values()} == set(ids)
    assert set(export.files) >= {tmp_path / "cvat" / name for name in ("annotations.xml", "task.zip", "mapping.json")}
    assert all(path.is_file() for path in export.files)


def test_fiftyone_reads_the_cvat_export_back_with_the_same_labels(dataset, tmp_path):
    import fiftyone as fo

    ids = _annotate_ids(dataset)
    export_annotation_task(dataset, tmp_path / "cvat", format="cvat", label_field=LABEL_FIELD)
    read_back = fo.Dataset.from_dir(dataset_dir=str(tmp_path / "cvat"), dataset_type=fo.types.CVATImageDataset,
                                    data_path="images", labels_path="annotations.xml", label_field={"classifications": "gt"})
    try:
        labels = {Path(path).stem: tags.classifications[0].label
                  for path, tags in zip(read_back.values("filepath"), read_back.values("gt"))}
        assert labels == _labels(dataset, ids)
    finally:
        read_back.delete()


def test_class_names_with_xml_characters_survive_the_cvat_round_trip(dataset, tmp_path):
    """FiftyOne 1.22's own CVAT exporter writes labels unescaped (its jinja template), so
    a class like this one made its labels.xml unparseable; ours goes through xml.etree."""
    import fiftyone as fo

    ids = _annotate_ids(dataset)
    odd = 'shirt & "top" <v2>'
    dataset.set_values(LABEL_FIELD, {ids[0]: fo.Classification(label=odd)}, key_field="id")
    export_annotation_task(dataset, tmp_path / "cvat", format="cvat", label_field=LABEL_FIELD)
    root = ET.parse(tmp_path / "cvat" / "annotations.xml").getroot()
    assert odd in [label.findtext("name") for label in root.findall("meta/task/labels/label")]
    assert root.find(f"image[@name='{ids[0]}.png']/tag").get("label") == odd
    result = import_annotations(dataset, tmp_path / "cvat" / "annotations.xml", label_field=LABEL_FIELD, dry_run=True)
    assert sorted(result.confirmed) == sorted(ids) and result.changed == [] and result.problems == []


def test_cvat_round_trip_changes_two_labels_and_confirms_the_rest(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    export_annotation_task(dataset, tmp_path / "task", format="cvat", label_field=LABEL_FIELD)
    corrected = {ids[0]: _other_class(dataset, before[ids[0]]), ids[1]: _other_class(dataset, before[ids[1]])}
    after = {**before, **corrected}
    # What CVAT hands back: a zip with annotations.xml and images/, tags edited by the annotator.
    cvat_zip = tmp_path / "task_7_dataset_2024.zip"
    with zipfile.ZipFile(cvat_zip, "w") as archive:
        archive.writestr("annotations.xml", _cvat_export_xml([(f"{sample_id}.png", after[sample_id]) for sample_id in ids]))
        for sample_id in ids:
            archive.write(tmp_path / "task" / "images" / f"{sample_id}.png", f"images/{sample_id}.png")

    result = import_annotations(dataset, cvat_zip, label_field=LABEL_FIELD)

    assert result.format == "cvat" and result.problems == [] and result.new_classes == []
    assert sorted(result.changed) == sorted((sample_id, before[sample_id], new) for sample_id, new in corrected.items())
    assert sorted(result.confirmed) == sorted(ids[2:])
    dataset.reload()
    for sample_id in ids:
        sample = dataset[sample_id]
        assert sample[LABEL_FIELD].label == after[sample_id]
        assert sample["decision_source"] == "cvat:task_7_dataset_2024.zip"
        if sample_id in corrected:
            assert sample["decision"] == "relabel" and sample["previous_label"] == before[sample_id]
            assert sample["decision_reason"] == "corrected in CVAT by anna"
        else:
            assert sample["decision"] == "keep" and sample["decision_reason"] == "confirmed in CVAT by anna"


def test_cvat_items_that_cannot_be_used_are_reported_and_the_rest_applied(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    unknown_id = "0123456789abcdef01234567"
    xml = _cvat_export_xml([
        (f"{ids[0]}.png", "sandal-with-heel"),          # a class the dataset has not seen
        (f"{ids[1]}.png", None),                        # no tag at all
        ("holiday.jpg", before[ids[2]]),                # neither a sample id nor a known file name
        (f"{unknown_id}.png", "bag"),                   # a sample id not in this dataset
        (f"{ids[3]}.png", before[ids[3]]),
    ], extra=f'  <image id="9" name="{ids[4]}.png" width="28" height="28">\n'
             f'    <tag label="bag" source="manual"/><tag label="coat" source="manual"/>\n  </image>\n'
             f'  <image id="10" name="{ids[2]}.png" width="28" height="28">\n'
             f'    <box label="bag" xtl="1" ytl="1" xbr="5" ybr="5" occluded="0"/>\n  </image>')
    path = tmp_path / "annotations.xml"
    path.write_text(xml)

    result = import_annotations(dataset, path, label_field=LABEL_FIELD)

    assert result.changed == [(ids[0], before[ids[0]], "sandal-with-heel")]
    assert result.new_classes == ["sandal-with-heel"] and result.confirmed == [ids[3]]
    problems = "\n".join(result.problems)
    assert len(result.problems) == 5 and all(line.startswith(f"{path}: <image id=") for line in result.problems)
    assert f"name='{ids[1]}.png'>: no label given" in problems
    assert "name='holiday.jpg'>: unknown image 'holiday.jpg'" in problems
    assert f"unknown sample id '{unknown_id}'" in problems
    assert "expected one class tag, found 2: bag, coat" in problems
    assert "no label given (found <box>; only image-level <tag> is read)" in problems
    dataset.reload()
    assert dataset[ids[0]][LABEL_FIELD].label == "sandal-with-heel"
    assert dataset[ids[1]]["decision"] == "annotate"  # untouched


def test_cvat_file_names_match_through_mapping_json(dataset, tmp_path):
    """A task whose images were renamed on the way still maps back through mapping.json."""
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    (tmp_path / "mapping.json").write_text(json.dumps({"images": {"frame_0.png": {"sample_id": ids[0]}}}))
    (tmp_path / "annotations.xml").write_text(_cvat_export_xml([("images/frame_0.png", before[ids[0]])]))
    result = import_annotations(dataset, tmp_path, label_field=LABEL_FIELD, dry_run=True)
    assert result.confirmed == [ids[0]] and result.problems == []


def test_malformed_cvat_xml_names_the_file(dataset, tmp_path):
    path = tmp_path / "annotations.xml"
    path.write_text("<annotations><image id='0' name='a.png'><tag label='bag'></annotations>")
    with pytest.raises(AnnotationFileError, match=rf"{path}: malformed XML \(mismatched tag: line 1"):
        import_annotations(dataset, path, label_field=LABEL_FIELD)


def test_cvat_video_export_is_refused_with_a_hint(dataset, tmp_path):
    path = tmp_path / "annotations.xml"
    path.write_text("<annotations><version>1.1</version><track id='0' label='bag'/></annotations>")
    with pytest.raises(AnnotationFileError, match="'CVAT for video' export .* 'CVAT for images 1.1'"):
        import_annotations(dataset, path, label_field=LABEL_FIELD, format="cvat")


# ---------------------------------------------------------------- Label Studio


def test_labelstudio_export_has_tasks_predictions_and_every_class(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    export = export_annotation_task(dataset, tmp_path / "ls", format="labelstudio", label_field=LABEL_FIELD,
                                    sample_ids=ids[:3])
    assert export.n_samples == 3
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [task["data"]["sample_id"] for task in tasks] == ids[:3]
    for task in tasks:
        sample_id = task["data"]["sample_id"]
        assert task["data"]["image"] == f"/data/local-files/?d=images/{sample_id}.png"
        assert (tmp_path / "ls" / "images" / f"{sample_id}.png").is_file()
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "curation"
        assert prediction["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": [before[sample_id]]}}]
    view = ET.parse(tmp_path / "ls" / "label_config.xml").getroot()
    assert view.tag == "View" and view.find("Image").attrib == {"name": "image", "value": "$image"}
    choices = view.find("Choices")
    assert (choices.get("name"), choices.get("toName")) == ("label", "image")
    assert [choice.get("value") for choice in choices] == sorted(dataset.distinct(f"{LABEL_FIELD}.label"))
    readme = (tmp_path / "ls" / "README.txt").read_text()
    assert "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true" in readme
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={(tmp_path / 'ls').resolve()}" in readme


def test_labelstudio_image_url_prefix_is_a_parameter(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    export_annotation_task(dataset, tmp_path / "ls", format="labelstudio", label_field=LABEL_FIELD,
                           sample_ids=ids[:1], image_url_prefix="http://localhost:8081/")
    (task,) = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert task["data"]["image"] == f"http://localhost:8081/{ids[0]}.png"


def _ls_annotation(label: str, *, updated_at: str, cancelled: bool = False, user=1) -> dict:
    return {"id": hash(updated_at) % 1000, "completed_by": user, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": updated_at, "updated_at": updated_at, "lead_time": 3.2,
            "result": [{"id": "r1", "type": "choices", "from_name": "label", "to_name": "image", "origin": "manual",
                        "value": {"choices": [label]}}] if not cancelled else []}


def test_labelstudio_round_trip_uses_the_latest_annotation_that_was_not_cancelled(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    export_annotation_task(dataset, tmp_path / "ls", format="labelstudio", label_field=LABEL_FIELD)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    new0, new1 = _other_class(dataset, before[ids[0]]), _other_class(dataset, before[ids[1]])
    annotations = {
        ids[0]: [_ls_annotation(before[ids[0]], updated_at="2024-05-01T10:00:00Z"),
                 _ls_annotation(new0, updated_at="2024-05-01T11:00:00.123456Z",
                                user={"id": 3, "email": "bo@example.com"})],   # the later one wins
        ids[1]: [_ls_annotation(new1, updated_at="2024-05-01T10:00:00Z")],
        ids[2]: [_ls_annotation(before[ids[2]], updated_at="2024-05-01T10:00:00Z"),
                 _ls_annotation("bag", updated_at="2024-05-02T10:00:00Z", cancelled=True)],  # skipped: ignored
        ids[3]: [_ls_annotation(before[ids[3]], updated_at="2024-05-01T10:00:00Z")],
        ids[4]: [_ls_annotation("bag", updated_at="2024-05-01T10:00:00Z", cancelled=True)],  # only skipped
    }
    # Label Studio's JSON export: the imported task plus ids, annotations and bookkeeping.
    exported = [{"id": 100 + index, **task, "annotations": annotations[task["data"]["sample_id"]], "drafts": [],
                 "meta": {}, "created_at": "2024-05-01T09:00:00Z", "updated_at": "2024-05-02T10:00:00Z",
                 "inner_id": index + 1, "total_annotations": 1, "cancelled_annotations": 0, "project": 1}
                for index, task in enumerate(tasks)]
    path = tmp_path / "project-1-at-2024-05-02.json"
    path.write_text(json.dumps(exported))

    result = import_annotations(dataset, path, label_field=LABEL_FIELD)

    assert result.format == "labelstudio"
    assert sorted(result.changed) == sorted([(ids[0], before[ids[0]], new0), (ids[1], before[ids[1]], new1)])
    assert sorted(result.confirmed) == sorted([ids[2], ids[3]])
    assert result.problems == [f"{path}: task 104: no label given (every annotation was cancelled/skipped)"]
    dataset.reload()
    first, second, third = dataset[ids[0]], dataset[ids[1]], dataset[ids[2]]
    assert (first[LABEL_FIELD].label, first["previous_label"], first["decision"]) == (new0, before[ids[0]], "relabel")
    assert first["decision_source"] == "labelstudio:project-1-at-2024-05-02.json"
    assert first["decision_reason"] == "corrected in Label Studio by bo@example.com"
    assert second["decision_reason"] == "corrected in Label Studio by user 1"
    assert (third[LABEL_FIELD].label, third["decision"]) == (before[ids[2]], "keep")
    assert third["decision_reason"] == "confirmed in Label Studio by user 1"
    assert dataset[ids[4]]["decision"] == "annotate"


def test_labelstudio_json_min_matches_by_image_name(dataset, tmp_path):
    """JSON-MIN puts the data keys and the choice at the top level; here the sample id is
    left out so the match goes through the image URL (an upload renamed "<hash>-<name>")."""
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    filepaths = dict(zip(dataset.values("id"), dataset.values("filepath")))
    new0 = _other_class(dataset, before[ids[0]])
    rows = [{"id": 1, "image": f"/data/local-files/?d=images/{ids[0]}.png", "label": new0, "annotator": "cy@example.com"},
            {"id": 2, "image": f"/data/upload/1/3f2a9c1e-{Path(filepaths[ids[1]]).name}", "choice": before[ids[1]]},
            {"id": 3, "image": f"/data/local-files/?d=images/{ids[2]}.png"}]
    path = tmp_path / "min.json"
    path.write_text(json.dumps(rows))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert result.changed == [(ids[0], before[ids[0]], new0)] and result.confirmed == [ids[1]]
    assert result.problems == [f"{path}: task 3: no label given (expected a 'label' or 'choice' key, or 'annotations')"]
    dataset.reload()
    assert dataset[ids[0]]["decision_reason"] == "corrected in Label Studio by cy@example.com"


def test_malformed_labelstudio_json_names_the_file(dataset, tmp_path):
    path = tmp_path / "export.json"
    path.write_text('[{"data": {"sample_id": "x"}, ')
    with pytest.raises(AnnotationFileError, match=rf"{path}: malformed JSON \(.*line 1"):
        import_annotations(dataset, path, label_field=LABEL_FIELD)


def test_labelstudio_items_that_are_not_tasks_are_reported(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([
        "not a task",
        {"id": 8, "data": {"sample_id": ids[0]}, "annotations": [{"result": [
            {"type": "choices", "from_name": "label", "to_name": "image", "value": {"choices": ["bag", "coat"]}}]}]},
        {"id": 9, "data": {"sample_id": "not-an-id"}, "annotations": [{"result": [
            {"type": "choices", "from_name": "label", "to_name": "image", "value": {"choices": ["bag"]}}]}]},
    ]))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert result.problems == [f"{path}: item 0: expected a task object, got a JSON string",
                               f"{path}: task 8: expected one class, got 2: bag, coat",
                               f"{path}: task 9: unknown sample id 'not-an-id' (not in this dataset)"]
    assert result.changed == [] and result.confirmed == []


# ------------------------------------------------------------- both / shared


def test_dry_run_computes_the_changes_and_writes_nothing(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    new0 = _other_class(dataset, before[ids[0]])
    path = tmp_path / "annotations.xml"
    path.write_text(_cvat_export_xml([(f"{ids[0]}.png", new0), (f"{ids[1]}.png", before[ids[1]])]))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD, dry_run=True)
    assert result.dry_run and result.changed == [(ids[0], before[ids[0]], new0)] and result.confirmed == [ids[1]]
    assert result.summary() == "would change 1 label(s); confirmed 1"
    dataset.reload()
    assert _labels(dataset, ids) == before
    assert set(dataset.select(ids).values("decision")) == {"annotate"}
    if dataset.has_sample_field("previous_label"):
        assert set(dataset.select(ids).values("previous_label")) == {None}


def test_existing_out_dir_is_refused_unless_overwrite(dataset, tmp_path):
    out_dir = tmp_path / "task"
    out_dir.mkdir()
    (out_dir / "old.txt").write_text("earlier export")
    with pytest.raises(FileExistsError, match=rf"{out_dir} already exists; pass overwrite=True"):
        export_annotation_task(dataset, out_dir, format="cvat", label_field=LABEL_FIELD)
    assert (out_dir / "old.txt").is_file()
    export_annotation_task(dataset, out_dir, format="cvat", label_field=LABEL_FIELD, overwrite=True)
    assert not (out_dir / "old.txt").exists() and (out_dir / "annotations.xml").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["task"]  # the old copy is gone too


@pytest.mark.parametrize("format", ["cvat", "labelstudio"])
def test_a_failure_midway_leaves_no_out_dir_and_no_temporary_dir(dataset, tmp_path, monkeypatch, format):
    copied = []

    def copy_then_fail(source, target):
        if len(copied) == 2:
            raise OSError(f"disk full while writing {target}")
        copied.append(target)
        Path(target).write_bytes(Path(source).read_bytes())

    monkeypatch.setattr(relabel, "_copy_image", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export_annotation_task(dataset, tmp_path / "task", format=format, label_field=LABEL_FIELD)
    assert len(copied) == 2 and list(tmp_path.iterdir()) == []


def test_export_defaults_to_the_samples_marked_annotate(dataset, tmp_path):
    export = export_annotation_task(dataset, tmp_path / "t", format="labelstudio", label_field=LABEL_FIELD)
    tasks = json.loads((tmp_path / "t" / "tasks.json").read_text())
    assert export.n_samples == 5 and {task["data"]["sample_id"] for task in tasks} == set(_annotate_ids(dataset))


def test_export_without_samples_marked_annotate_says_so(dataset, tmp_path):
    record_decision(dataset, _annotate_ids(dataset), "keep")
    with pytest.raises(ValueError, match="no sample is marked for annotation \\(decision == 'annotate'\\)"):
        export_annotation_task(dataset, tmp_path / "t", format="cvat", label_field=LABEL_FIELD)
    assert not (tmp_path / "t").exists()


def test_unknown_format_lists_the_valid_ones(dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown annotation format 'yolo'. Available: cvat, labelstudio"):
        export_annotation_task(dataset, tmp_path / "t", format="yolo", label_field=LABEL_FIELD)
    with pytest.raises(ValueError, match="unknown annotation format 'coco'. Available: cvat, labelstudio"):
        import_annotations(dataset, tmp_path, label_field=LABEL_FIELD, format="coco")


def test_unknown_sample_ids_are_named(dataset, tmp_path):
    with pytest.raises(ValueError, match="has no samples with id 0123456789abcdef01234567, nope"):
        export_annotation_task(dataset, tmp_path / "t", format="cvat", label_field=LABEL_FIELD,
                               sample_ids=[dataset.first().id, "0123456789abcdef01234567", "nope"])


def test_a_field_that_is_not_a_classification_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="field 'filepath' of dataset .*: expected fo.Classification, got StringField"):
        export_annotation_task(dataset, tmp_path / "t", format="cvat", label_field="filepath")
    with pytest.raises(ValueError, match="has no field 'labels'; expected a field of fo.Classification"):
        import_annotations(dataset, tmp_path, label_field="labels")


def test_a_class_list_must_hold_the_current_labels(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    current = _labels(dataset, ids[:1])[ids[0]]
    with pytest.raises(ValueError, match=f"carry label\\(s\\) {current} that are not in the given class list"):
        export_annotation_task(dataset, tmp_path / "t", format="cvat", label_field=LABEL_FIELD, sample_ids=ids[:1],
                               classes=["something-else"])
    export = export_annotation_task(dataset, tmp_path / "t", format="cvat", label_field=LABEL_FIELD,
                                    sample_ids=ids[:1], classes=[current, "aardvark"])
    assert export.classes == ["aardvark", current]


def test_a_path_that_holds_no_annotations_is_named(dataset, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AnnotationFileError, match=rf"{tmp_path}: expected annotations.xml \(CVAT\) .* found notes.txt"):
        import_annotations(dataset, tmp_path, label_field=LABEL_FIELD)
    with pytest.raises(AnnotationFileError, match=r"notes.txt: cannot tell the format"):
        import_annotations(dataset, tmp_path / "notes.txt", label_field=LABEL_FIELD)
    with pytest.raises(FileNotFoundError, match=r"missing.json: no such file or directory"):
        import_annotations(dataset, tmp_path / "missing.json", label_field=LABEL_FIELD)
