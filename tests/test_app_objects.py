"""AppTests of the Objects page: the object map and the object review queue on a small
detection dataset with planted problems (tests/test_object_images.py builds it)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_object_images import CLASSES, HOSTILE_NAMES, box_id, build_analysed_dataset, build_object_dataset

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGE = "pages/objects.py"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, offline_embedder):
    dataset, planted = build_analysed_dataset("app-objects", tmp_path_factory.mktemp("app-objects"), offline_embedder)
    yield dataset, planted
    dataset.delete()


@pytest.fixture
def copy(analysed):
    """A persistent clone of the analysed dataset for a test that changes it."""
    source, planted = analysed
    clone = source.clone(f"app-objects-{uuid.uuid4().hex[:8]}")
    clone.persistent = True
    try:
        yield clone, planted
    finally:
        clone.delete()


@pytest.fixture
def open_objects(monkeypatch):
    def make(name: str) -> AppTest:
        monkeypatch.setenv("CURATION_DATASET", name)
        monkeypatch.setenv("CURATION_NO_DEMO", "1")
        at = AppTest.from_file(APP, default_timeout=240)
        at.run()
        at.switch_page(PAGE)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


def _text(at: AppTest) -> str:
    return " ".join(element.value for kind in ("markdown", "caption", "info", "warning", "success", "error")
                    for element in getattr(at, kind))


def _click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _box(dataset, object_id: str, field: str = "ground_truth"):
    dataset.reload()
    return {d.id: d for ds in dataset.values(f"{field}.detections") for d in ds or []}.get(object_id)


def test_page_lists_the_planted_duplicate_and_wrong_class_boxes_and_draws_the_map(analysed, open_objects):
    dataset, planted = analysed
    at = open_objects(dataset.name)
    assert at.title[0].value == f"Objects · {dataset.name}"
    assert at.selectbox(key="obj_field").options == ["ground_truth", "predictions"]
    assert at.selectbox(key="obj_predictions").value == "predictions"  # as analysed
    assert len(at.get("plotly_chart")) == 1
    assert "72 boxes, placed by how alike they look" in _text(at)
    queue = at.dataframe(key="obj_table").value
    assert set(queue["issue"]) >= {"duplicate", "mislabel", "missing"}
    duplicate = box_id(dataset, *planted["duplicate"])
    wrong = [box_id(dataset, *place) for place in planted["wrong"]]
    for object_id in [duplicate, *wrong]:  # on the first page of the queue, with their actions
        at.button(key=f"obj_remove_{object_id}")
    for object_id in wrong:
        accept = at.button(key=f"obj_accept_{object_id}")
        assert not accept.disabled and accept.help.startswith("relabel to ")
    missing = dataset.skip(planted["missing"][0]).first()["ground_truth_missing"].detections[0]
    at.button(key=f"obj_add_m{missing.id}")
    assert list(queue["issue_score"]) == sorted(queue["issue_score"], reverse=True)
    assert len(at.get("image")) >= 4  # crops of the queued boxes


def test_filters_narrow_the_queue(analysed, open_objects):
    dataset, _ = analysed
    at = open_objects(dataset.name)
    at.multiselect(key="obj_issues").set_value(["duplicate"]).run()
    assert list(at.dataframe(key="obj_table").value["issue"]) == ["duplicate"]
    assert "1 box to review" in _text(at)
    at.multiselect(key="obj_issues").set_value([]).run()
    at.multiselect(key="obj_classes").set_value(["sneaker"]).run()
    table = at.dataframe(key="obj_table").value
    assert len(table) >= 1 and all("sneaker" in (row.label, row.suggested_label) for row in table.itertuples())


def test_accept_a_suggestion_and_remove_a_box_through_the_page_and_undo(copy, open_objects):
    dataset, planted = copy
    wrong = box_id(dataset, *planted["wrong"][0])
    duplicate = box_id(dataset, *planted["duplicate"])
    before = _box(dataset, wrong).label
    suggested = _box(dataset, wrong)["suggested_label"]
    assert suggested != before
    at = open_objects(dataset.name)

    _click(at, f"obj_accept_{wrong}")
    box = _box(dataset, wrong)
    assert box.label == suggested and box["previous_label"] == before and box["decision"] == "relabel"
    assert "1 box relabelled to the suggested class." in _text(at)
    with pytest.raises(KeyError):
        at.button(key=f"obj_accept_{wrong}")

    _click(at, f"obj_remove_{duplicate}")
    assert _box(dataset, duplicate)["decision"] == "remove"
    assert "1 box removed" in _text(at)
    _click(at, "obj_undo_last")  # undo the last action: the removal
    assert getattr(_box(dataset, duplicate), "decision", None) is None

    at.checkbox(key="obj_show_decided").check().run()
    _click(at, f"obj_undo_{wrong}")  # undo on the box itself
    box = _box(dataset, wrong)
    assert box.label == before and getattr(box, "decision", None) is None


def test_fixes_made_on_the_page_reach_a_coco_export_that_fiftyone_reads_back(copy, open_objects, tmp_path):
    import fiftyone as fo

    from curation.export import export_dataset

    dataset, planted = copy
    wrong = box_id(dataset, *planted["wrong"][0])
    duplicate = box_id(dataset, *planted["duplicate"])
    sample = dataset.skip(planted["missing"][0]).first()
    missing = sample["ground_truth_missing"].detections[0]
    suggested = _box(dataset, wrong)["suggested_label"]
    boxes_before = sum(len(d or []) for d in dataset.values("ground_truth.detections"))
    at = open_objects(dataset.name)
    _click(at, f"obj_accept_{wrong}")
    _click(at, f"obj_remove_{duplicate}")
    _click(at, f"obj_add_m{missing.id}")

    out = tmp_path / "coco"
    export_dataset(dataset, out, format="coco", label_field="ground_truth")
    back = fo.Dataset.from_dir(dataset_dir=str(out), dataset_type=fo.types.COCODetectionDataset, data_path="data",
                               labels_path="labels.json")
    try:
        by_file = {Path(path).name: detections for path, detections in
                   zip(back.values("filepath"), back.values("detections"))}
        assert sum(len(d.detections) for d in by_file.values() if d) == boxes_before - 1 + 1
        fixed_file = Path(dataset.skip(planted["wrong"][0][0]).first().filepath).name
        # one of each class again (it had two of one and none of the suggested one)
        assert sorted(d.label for d in by_file[fixed_file].detections) == sorted(CLASSES)
        assert suggested in CLASSES
        assert len(by_file[Path(dataset.skip(planted["duplicate"][0]).first().filepath).name].detections) == 3
        assert missing.label in [d.label for d in by_file[Path(sample.filepath).name].detections]
    finally:
        back.delete()


def test_relabel_to_any_class_and_bulk_remove(copy, open_objects):
    dataset, planted = copy
    wrong = box_id(dataset, *planted["wrong"][1])
    at = open_objects(dataset.name)
    current = _box(dataset, wrong).label
    choices = at.selectbox(key=f"obj_class_{wrong}").options
    assert current not in choices and len(choices) == 2
    target = [c for c in choices if c != _box(dataset, wrong)["suggested_label"]][0]  # not the suggestion
    at.selectbox(key=f"obj_class_{wrong}").set_value(target).run()
    _click(at, f"obj_relabel_{wrong}")
    assert _box(dataset, wrong).label == target and _box(dataset, wrong)["previous_label"] == current

    at.multiselect(key="obj_issues").set_value(["duplicate"]).run()
    at.selectbox(key="obj_action").set_value("remove").run()
    at.text_input(key="obj_reason").input("drawn twice").run()
    _click(at, "obj_apply")
    duplicate = _box(dataset, box_id(dataset, *planted["duplicate"]))
    assert duplicate["decision"] == "remove" and duplicate["decision_reason"] == "drawn twice"


def test_accept_a_missing_box_and_undo(copy, open_objects):
    dataset, planted = copy
    sample = dataset.skip(planted["missing"][0]).first()
    missing = sample["ground_truth_missing"].detections[0]
    count = len(sample.ground_truth.detections)
    at = open_objects(dataset.name)
    _click(at, f"obj_add_m{missing.id}")
    dataset.reload()
    boxes = dataset[sample.id].ground_truth.detections
    assert len(boxes) == count + 1 and boxes[-1].label == missing.label and boxes[-1]["decision"] == "added"
    assert "1 missing box added to ground\\_truth." in _text(at)
    at.checkbox(key="obj_show_decided").check().run()
    _click(at, f"obj_undo_m{missing.id}")
    dataset.reload()
    assert len(dataset[sample.id].ground_truth.detections) == count


def test_send_the_image_to_annotation_names_the_box(copy, open_objects):
    from curation.decisions import decisions_for

    dataset, planted = copy
    duplicate = box_id(dataset, *planted["duplicate"])
    sample_id = dataset.skip(planted["duplicate"][0]).first().id
    at = open_objects(dataset.name)
    _click(at, f"obj_annotate_{duplicate}")
    dataset.reload()
    assert decisions_for(dataset, [sample_id]) == {sample_id: "annotate"}
    reason = dataset[sample_id]["decision_reason"]
    assert reason.startswith("fix boxes of ground_truth:") and duplicate in reason and "duplicate of" in reason
    assert "1 image sent to annotation" in _text(at)
    _click(at, f"obj_unannotate_{duplicate}")
    dataset.reload()
    assert decisions_for(dataset, [sample_id]) == {sample_id: None}


def test_show_image_draws_the_whole_image_with_the_box_highlighted(analysed, open_objects):
    dataset, planted = analysed
    duplicate = box_id(dataset, *planted["duplicate"])
    at = open_objects(dataset.name)
    images = len(at.get("image"))
    at.toggle(key=f"obj_show_{duplicate}").set_value(True).run()
    assert not at.exception
    assert len(at.get("image")) == images + 1
    captions = [image.proto.imgs[0].caption for image in at.get("image")]
    assert "every box of ground\\_truth; this one highlighted" in captions


def test_map_selection_tags_boxes_and_filters_the_queue(copy, open_objects):
    dataset, planted = copy
    duplicate = box_id(dataset, *planted["duplicate"])
    plain = box_id(dataset, 0, 0)
    at = open_objects(dataset.name)
    at.session_state["obj_selected"] = [duplicate, plain]
    at.run()
    assert "Selection: 2 boxes" in _text(at)
    at.text_input(key="obj_tag_name").input("look-again").run()
    _click(at, "obj_tag_add")
    assert "Tagged 2 boxes with 'look\\-again'" in _text(at)
    dataset.reload()
    assert dataset.count_label_tags() == {"look-again": 2}
    at.checkbox(key="obj_only_selection").check().run()
    assert list(at.dataframe(key="obj_table").value["issue"]) == ["duplicate"]  # the other box has no issue
    _click(at, "obj_tag_remove")
    dataset.reload()
    assert dataset.count_label_tags() == {}
    _click(at, "obj_clear")
    assert at.session_state["obj_selected"] == []


def test_a_dataset_without_boxes_says_so(embedded_dataset, open_objects):
    at = open_objects(embedded_dataset.name)
    assert any("has no Detections field (boxes)" in info.value and "--format coco" in info.value for info in at.info)
    assert not at.button


def test_without_embeddings_or_findings_the_page_says_how_and_runs_them(tmp_path, fresh_name, open_objects):
    dataset, planted = build_object_dataset(fresh_name, tmp_path / "images", images=4)
    dataset.persistent = True
    at = open_objects(dataset.name)
    text = _text(at)
    assert f"curation embed --dataset {fresh_name} --patches ground_truth" in text
    assert f"curation analyze --dataset {fresh_name} --patches ground_truth" in text
    assert "The queue fills once the object issues are found" in text
    assert not at.get("plotly_chart")
    _click(at, "obj_analyze")
    assert "Object findings: 12 boxes: 1 duplicate" in _text(at)
    assert "Wrong classes were not checked" in _text(at)
    at.button(key=f"obj_remove_{box_id(dataset, *planted['duplicate'])}")
    at.selectbox(key="obj_embed_model").set_value("efficientnet-lite0-imagenet").run()
    _click(at, "obj_embed")
    assert "Embedded 12 boxes with **efficientnet-lite0-imagenet**" in _text(at)
    assert len(at.get("plotly_chart")) == 1


def test_hostile_class_names_render(tmp_path, fresh_name, open_objects):
    import fiftyone as fo

    from curation.objects import analyze_objects, write_object_findings

    dataset, _ = build_object_dataset(fresh_name, tmp_path / "images", images=3)
    dataset.persistent = True
    samples = list(dataset)
    for sample, name in zip(samples * 2, HOSTILE_NAMES):
        boxes = sample.ground_truth.detections
        boxes[0].label = name
        sample.save()
    first = samples[0]
    first.ground_truth.detections.append(fo.Detection(label="**bold** [link](http://x) <b>\n\x00",
                                                      bounding_box=[v + 0.003 for v in
                                                                    first.ground_truth.detections[0].bounding_box]))
    first.save()
    write_object_findings(dataset, "ground_truth", analyze_objects(dataset, "ground_truth"))
    at = open_objects(dataset.name)
    duplicate = first.ground_truth.detections[-1].id
    at.toggle(key=f"obj_show_{duplicate}").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    text = _text(at)
    assert "<b>" not in text and "[link](http" not in text and "\x00" not in text
    assert len(at.get("image")) >= 2
    options = at.multiselect(key="obj_classes").options
    assert all(len(option) <= 40 for option in options)


def test_a_field_without_boxes_says_so(tmp_path, fresh_name, open_objects):
    import fiftyone as fo

    dataset, _ = build_object_dataset(fresh_name, tmp_path / "images", images=2)
    dataset.persistent = True
    dataset.set_values("ground_truth", [fo.Detections(detections=[]), None])
    at = open_objects(dataset.name)
    assert "`ground_truth` holds no boxes yet." in _text(at)
    _click(at, "obj_analyze")
    assert any("holds no boxes" in error.value for error in at.error)


def test_the_queue_is_read_again_when_someone_else_decides(copy, open_objects):
    from curation.object_decisions import remove_objects

    dataset, planted = copy
    duplicate = box_id(dataset, *planted["duplicate"])
    at = open_objects(dataset.name)
    at.button(key=f"obj_remove_{duplicate}")
    remove_objects(dataset, "ground_truth", [duplicate], reason="another session")  # not through this page
    at.run()
    with pytest.raises(KeyError):
        at.button(key=f"obj_remove_{duplicate}")


def test_keep_dismisses_a_flag_and_undo_brings_it_back(copy, open_objects):
    dataset, planted = copy
    duplicate = box_id(dataset, *planted["duplicate"])
    missing = dataset.skip(planted["missing"][0]).first()["ground_truth_missing"].detections[0]
    at = open_objects(dataset.name)
    _click(at, f"obj_keep_{duplicate}")
    assert _box(dataset, duplicate)["decision"] == "keep"
    assert "1 box kept" in _text(at)
    with pytest.raises(KeyError):
        at.button(key=f"obj_keep_{duplicate}")  # off the queue
    _click(at, "obj_undo_last")
    assert getattr(_box(dataset, duplicate), "decision", None) is None
    _click(at, f"obj_keep_m{missing.id}")
    assert _box(dataset, missing.id, "ground_truth_missing")["decision"] == "keep"
    at.checkbox(key="obj_show_decided").check().run()
    _click(at, f"obj_undo_m{missing.id}")
    assert getattr(_box(dataset, missing.id, "ground_truth_missing"), "decision", None) is None
