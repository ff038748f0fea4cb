"""The Export page's relabel round trip with boxes (issue 12): a detections field is offered
beside the classification field, its task carries the boxes, and an upload of corrected boxes
is previewed as box changes and applied as object decisions."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
DEMO_SOURCE = ROOT / "data" / "fashion-mnist-demo"
BOXES = [("cat", [0.25, 0.25, 0.5, 0.25]), ("dog", [0.5, 0.5, 0.25, 0.5])]


@pytest.fixture
def boxes_dataset():
    """Six demo images with a classification and two boxes each; three are sent to annotation."""
    import fiftyone as fo

    from curation.decisions import record_decision

    dataset = fo.Dataset(f"app-relabel-boxes-{uuid.uuid4().hex[:8]}")
    dataset.persistent = True
    paths = sorted(DEMO_SOURCE.rglob("*.png"))[:6]
    dataset.add_samples([fo.Sample(filepath=str(path), ground_truth=fo.Classification(label=path.parent.name),
                                   objects=fo.Detections(detections=[fo.Detection(label=label, bounding_box=list(box))
                                                                     for label, box in BOXES]))
                         for path in paths])
    record_decision(dataset, dataset.values("id")[:3], "annotate", reason="boxes to fix", source="test")
    try:
        yield dataset
    finally:
        dataset.delete()


@pytest.fixture
def export_page(monkeypatch, boxes_dataset):
    monkeypatch.setenv("CURATION_DATASET", boxes_dataset.name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("pages/export.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _upload(name: str, content: bytes):
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    return UploadedFile(UploadedFileRec(file_id="boxes-1", name=name, type="application/xml", data=content), None)


def test_the_page_offers_the_boxes_and_writes_a_task_with_them(export_page, boxes_dataset, tmp_path):
    at = export_page
    field = at.selectbox(key="rl_field")
    assert field.options == ["ground_truth", "objects"] and field.value == "ground_truth"
    field.select("objects").run()
    at.text_input(key="rl_out_cvat").set_value(str(tmp_path / "task")).run()
    at.button(key="rl_export").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == []
    assert any("3 images, 6 boxes and 2 classes" in s.value for s in at.success), [s.value for s in at.success]
    boxes = list(ET.parse(tmp_path / "task" / "annotations.xml").getroot().iter("box"))
    assert len(boxes) == 6 and {box.get("label") for box in boxes} == {"cat", "dog"}


def test_a_corrected_box_file_is_previewed_as_box_changes_and_applied(boxes_dataset, tmp_path):
    from curation.relabel import OBJECT_ID_ATTRIBUTE, export_annotation_task
    from pages import relabel_upload

    export_annotation_task(boxes_dataset, tmp_path / "task", format="cvat", label_field="objects")
    tree = ET.parse(tmp_path / "task" / "annotations.xml")
    first = next(tree.getroot().iter("image"))
    cat = next(box for box in first.iter("box") if box.get("label") == "cat")
    cat.set("label", "dog")
    object_id = cat.find(f"attribute[@name='{OBJECT_ID_ATTRIBUTE}']").text
    content = ET.tostring(tree.getroot())

    preview = relabel_upload.preview_upload({}, boxes_dataset, _upload("annotations.xml", content),
                                            label_field="objects", data_version=0)
    assert preview.error is None and preview.result.has_changes
    assert any(f"box {object_id}: cat -> dog" in line for line in preview.result.box_change_lines())
    boxes_dataset.reload()
    assert {d.id: d.label for ds in boxes_dataset.values("objects.detections") for d in ds}[object_id] == "cat"

    applied = relabel_upload.apply_upload(boxes_dataset, _upload("annotations.xml", content), label_field="objects")
    assert applied.boxes_relabelled and not applied.dry_run
    boxes_dataset.reload()
    assert {d.id: d.label for ds in boxes_dataset.values("objects.detections") for d in ds}[object_id] == "dog"
