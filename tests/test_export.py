"""Exports of curated subsets: every format re-imports with FiftyOne, removed samples stay out,
corrected labels go in, the provenance manifest explains each change, and exports are atomic."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from curation.decisions import apply_relabel, record_decision
from curation.export import EXPORT_FORMATS, ViewSpec, build_view, export_dataset

SPLITS = ("train", "val", "test")


@pytest.fixture
def curated(embedded_dataset):
    """A clone with splits, two relabels and two removals."""
    dataset = embedded_dataset.clone()
    ids = dataset.values("id")
    dataset.set_values("curation_split", [SPLITS[0 if i % 10 < 6 else 1 if i % 10 < 8 else 2] for i in range(len(ids))])
    apply_relabel(dataset, ids[:2], "coat", label_field="ground_truth", reason="looks like a coat", source="test")
    record_decision(dataset, ids[2:4], "remove", reason="blurry duplicate", source="duplicates")
    yield dataset
    dataset.delete()


def _expected(dataset, split: str | None = None) -> Counter:
    from fiftyone import ViewField as F

    view = dataset.match(F("decision") != "remove")
    if split:
        view = view.match(F("curation_split") == split)
    return Counter(view.values("ground_truth.label"))


def _import(fmt: str, directory: Path):
    import fiftyone as fo

    types = {"folders": fo.types.ImageClassificationDirectoryTree, "yolo": fo.types.ImageClassificationDirectoryTree,
             "coco": fo.types.COCODetectionDataset, "cvat": fo.types.CVATImageDataset}
    return fo.Dataset.from_dir(dataset_dir=str(directory), dataset_type=types[fmt], label_field="labels")


def _labels(dataset, fmt: str) -> Counter:
    # The COCO and CVAT importers name their fields per label type ("labels_detections", ...).
    field = next(name for name in dataset.get_field_schema() if name.startswith("labels"))
    if fmt == "coco":
        return Counter(d.label for dets in dataset.values(field) for d in (dets.detections if dets else []))
    if fmt == "cvat":
        return Counter(c.label for cls in dataset.values(field) for c in (cls.classifications if cls else []))
    return Counter(dataset.values("labels.label"))


@pytest.mark.parametrize("fmt", ["folders", "yolo", "coco", "cvat"])
def test_each_split_reimports_with_fiftyone(curated, tmp_path, fmt):
    out = tmp_path / fmt
    report = export_dataset(curated, out, format=fmt, label_field="ground_truth",
                            spec=ViewSpec(split_field="curation_split"))
    assert report.samples == len(curated) - 2
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "test", "train", "val"]
    for split in SPLITS:
        reimported = _import(fmt, out / split)
        try:
            assert _labels(reimported, fmt) == _expected(curated, split), split
        finally:
            reimported.delete()


def test_fiftyone_directory_keeps_every_field(curated, tmp_path):
    import fiftyone as fo

    export_dataset(curated, tmp_path / "fo", format="fiftyone", label_field="ground_truth")
    reimported = fo.Dataset.from_dir(dataset_dir=str(tmp_path / "fo"), dataset_type=fo.types.FiftyOneDataset)
    try:
        assert len(reimported) == len(curated) - 2
        assert Counter(reimported.values("ground_truth.label")) == _expected(curated)
        assert Counter(reimported.values("decision")) == Counter({None: len(curated) - 4, "relabel": 2})
        assert set(reimported.values("previous_label")) - {None}
    finally:
        reimported.delete()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_lists_source_paths_labels_and_embeddings(curated, tmp_path, fmt):
    out = tmp_path / fmt
    export_dataset(curated, out, format=fmt, label_field="ground_truth", embeddings_field="embeddings_efficientnet_lite0_imagenet",
                   spec=ViewSpec(split_field="curation_split"))
    table = pd.read_csv(out / "manifest.csv") if fmt == "csv" else pd.read_parquet(out / "manifest.parquet")
    assert len(table) == len(curated) - 2 and set(table["split"]) == set(SPLITS)
    assert Counter(table["label"]) == _expected(curated)
    assert all(Path(p).exists() for p in table["filepath"])  # the sources, not copies
    assert (table["decision"] == "remove").sum() == 0 and (table["decision"] == "relabel").sum() == 2
    if fmt == "csv":
        import numpy as np

        vectors = np.load(out / "embeddings.npy")
        assert vectors.shape == (len(table), 1280)
    else:
        assert len(table["embedding"].iloc[0]) == 1280


def test_provenance_explains_every_change(curated, tmp_path):
    from curation.datasets import update_curation_info

    update_curation_info(curated, analysis={"settings": {"duplicates": {"config": {"threshold": 0.97}}},
                                            "embedding_field": "embeddings_efficientnet_lite0_imagenet"})
    export_dataset(curated, tmp_path / "out", format="folders", label_field="ground_truth",
                   spec=ViewSpec(split_field="curation_split"))
    manifest = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert manifest["dataset"] == curated.name and manifest["format"] == "folders"
    assert manifest["embedding"]["field"] == "embeddings_efficientnet_lite0_imagenet"
    assert manifest["embedding"]["model"] == "efficientnet-lite0-imagenet"
    assert manifest["finders"]["settings"]["duplicates"]["config"]["threshold"] == 0.97
    assert (manifest["removed"], manifest["relabelled"]) == (2, 2)
    by_decision = {c["decision"]: c for c in manifest["changes"]}
    assert by_decision["remove"]["reason"] == "blurry duplicate" and by_decision["remove"]["source"] == "duplicates"
    relabel = by_decision["relabel"]
    assert relabel["label"] == "coat" and relabel["previous_label"] and relabel["at"].endswith("+00:00")
    assert relabel["reason"] == "looks like a coat"
    assert sum(manifest["per_split"].values()) == manifest["samples"] == len(curated) - 2
    assert sum(sum(c.values()) for c in manifest["class_counts"].values()) == len(curated) - 2


def test_an_existing_export_is_never_silently_replaced(curated, tmp_path):
    out = tmp_path / "out"
    export_dataset(curated, out, format="csv", label_field="ground_truth")
    before = (out / "manifest.csv").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        export_dataset(curated, out, format="csv", label_field="ground_truth", spec=ViewSpec(classes=("coat",)))
    assert (out / "manifest.csv").read_bytes() == before
    export_dataset(curated, out, format="csv", label_field="ground_truth", spec=ViewSpec(classes=("coat",)), overwrite=True)
    assert set(pd.read_csv(out / "manifest.csv")["label"]) == {"coat"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the replaced export is gone, nothing half-written


def test_an_export_interrupted_midway_leaves_nothing(curated, tmp_path, monkeypatch):
    import shutil

    import curation.export as export_module

    sources = {p: Path(p).read_bytes() for p in curated.values("filepath")[:10]}
    calls = {"n": 0}
    real_copy = shutil.copy2

    def failing_copy(src, dst, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (simulated)")
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(export_module.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(curated, tmp_path / "out", format="coco", label_field="ground_truth")
    assert list(tmp_path.iterdir()) == []  # no export, no partial directory
    assert all(Path(p).read_bytes() == data for p, data in sources.items())  # sources untouched

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_export_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_dataset(curated, tmp_path / "out", format="csv", label_field="ground_truth")
    assert list(tmp_path.iterdir()) == []


def test_view_filters(curated):
    ids = curated.values("id")
    curated.select(ids[10:15]).tag_samples("review")
    assert len(build_view(curated, "ground_truth", ViewSpec(tags=("review",)))) == 5
    assert len(build_view(curated, "ground_truth", ViewSpec(exclude_tags=("review",)))) == len(ids) - 2 - 5
    assert len(build_view(curated, "ground_truth", ViewSpec(decisions=("relabel",)))) == 2
    assert len(build_view(curated, "ground_truth", ViewSpec(decisions=("remove",), exclude_removed=False))) == 2
    assert len(build_view(curated, "ground_truth", ViewSpec(ids=tuple(ids[:6])))) == 4
    assert set(build_view(curated, "ground_truth", ViewSpec(classes=("coat",))).values("ground_truth.label")) == {"coat"}
    assert len(build_view(curated, "ground_truth", ViewSpec(split_field="curation_split", splits=("test",)))) == 12
    curated.set_values("mislabel_score", [0.95 if i < 20 else None for i in range(len(ids))])
    assert len(build_view(curated, "ground_truth", ViewSpec(max_scores=(("mislabel_score", 0.9),)))) == len(ids) - 20


def test_bad_requests_say_what_is_wrong(curated, tmp_path):
    with pytest.raises(ValueError, match="unknown format 'tfrecord'. Available: " + ", ".join(EXPORT_FORMATS)):
        export_dataset(curated, tmp_path / "a", format="tfrecord", label_field="ground_truth")
    with pytest.raises(ValueError, match="split field 'fold' does not exist.*Available fields:"):
        export_dataset(curated, tmp_path / "b", format="csv", label_field="ground_truth", spec=ViewSpec(split_field="fold"))
    with pytest.raises(ValueError, match="selects no samples"):
        export_dataset(curated, tmp_path / "c", format="csv", label_field="ground_truth", spec=ViewSpec(classes=("zebra",)))
    with pytest.raises(ValueError, match="label field 'nope' does not exist"):
        export_dataset(curated, tmp_path / "d", format="folders", label_field="nope")
    assert list(tmp_path.iterdir()) == []


def test_unlabelled_samples_are_reported_not_foldered(curated, tmp_path):
    ids = curated.values("id")
    curated.set_values("ground_truth", {sample_id: None for sample_id in ids[10:13]}, key_field="id")
    report = export_dataset(curated, tmp_path / "out", format="folders", label_field="ground_truth")
    assert report.left_out == {"unlabelled (a folder tree has no place for them)": 3}
    assert report.samples == len(ids) - 2 - 3
    assert not (tmp_path / "out" / "_unlabeled").exists()


def test_label_formats_refuse_a_dataset_without_labels(curated, tmp_path):
    from curation.export import ExportError

    for fmt in ("folders", "yolo", "coco", "cvat"):
        with pytest.raises(ExportError, match=f"{fmt} needs labels.*export as fiftyone, csv or parquet"):
            export_dataset(curated, tmp_path / fmt, format=fmt, label_field=None)
    report = export_dataset(curated, tmp_path / "csv", format="csv", label_field=None)
    assert report.samples == len(curated) - 2
