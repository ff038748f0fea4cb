"""`analyze` finds near duplicates in two stages by default: a verifier calibrated on the
dataset's own images on the first run, stored per embedding field, reused, and a cosine
fallback that says why when calibration is impossible."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from curation.analysis import (VERIFIER_INFO_KEY, analyze, attach_stored_verifier, build_context, calibrate_dataset,
                               findings_table, stored_verifier)
from curation.datasets import curation_info, load_dataset, update_curation_info
from curation.finders.verification import SIGNATURE_DTYPE, cached_signatures

EDITS = {  # source image index -> a duplicate-making edit
    3: lambda im: ImageOps.mirror(im),
    12: lambda im: im.resize(im.size, Image.Resampling.BILINEAR, box=(1, 1, im.width - 1, im.height - 1)),
    25: lambda im: ImageOps.autocontrast(im, cutoff=2),
    40: lambda im: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, 0)),
}


@pytest.fixture(scope="module")
def planted_dataset(small_class_tree, tmp_path_factory):
    """The 60 demo images in class folders plus four edited copies, imported, embedded with the
    offline model and analysed once with the defaults."""
    from curation.embeddings import compute_embeddings
    from curation.importers import import_dataset

    root = tmp_path_factory.mktemp("planted-tree")
    shutil.copytree(small_class_tree, root, dirs_exist_ok=True)
    originals = sorted(small_class_tree.rglob("*.png"))
    copies = {}
    for source, edit in EDITS.items():
        target = root / originals[source].parent.name / f"copy-{originals[source].name}"
        edit(Image.open(originals[source]).convert("RGB")).save(target)
        copies[str(root / originals[source].relative_to(small_class_tree))] = str(target)
    name = "t-verified-analysis"
    import_dataset(root, name, format="classes", overwrite=True)
    dataset = load_dataset(name)
    compute_embeddings(dataset, model="efficientnet-lite0-imagenet", num_workers=0)
    report = analyze(dataset)
    yield dataset, report, copies
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def test_first_analyze_calibrates_and_stores_a_verifier(planted_dataset):
    dataset, report, _ = planted_dataset
    field = curation_info(dataset)["default_embeddings"]
    stored = curation_info(dataset)[VERIFIER_INFO_KEY][field]
    assert 0 < stored["threshold"] <= 1 and stored["sample_size"] == 20  # min(200, max(20, 64 // 10))
    assert stored["embedding_run"]["model"] == "efficientnet-lite0-imagenet"
    duplicates = report.results["duplicates"]
    assert duplicates.info["method"] == "verified", duplicates.summary
    assert "verified pairs" in duplicates.summary
    assert stored_verifier(dataset, field, len(dataset)) == stored


def test_planted_copies_are_grouped_with_their_originals(planted_dataset):
    dataset, _, copies = planted_dataset
    table = findings_table(dataset).set_index("filepath")
    together = [copy for original, copy in copies.items()
                if pd.notna(table.loc[copy, "near_duplicate_group"])
                and table.loc[copy, "near_duplicate_group"] == table.loc[original, "near_duplicate_group"]]
    assert len(together) >= 3, table.loc[list(copies) + list(copies.values()),
                                         ["near_duplicate_group", "duplicate_score", "duplicate_partner_filepath"]]
    for copy in together:
        assert 0 < table.loc[copy, "duplicate_score"] <= 1
    # Few negatives in 64 images make the threshold loose (a look-alike garment pair or two may
    # join in), but the three most probable pairs are planted copies.
    scores = table["duplicate_score"].dropna().sort_values(ascending=False)
    assert set(scores.index[:6]) <= set(copies) | set(copies.values()), scores.head(10)
    assert table["near_duplicate_group"].notna().sum() <= 4 * len(copies), scores.head(20)


def test_second_analyze_reuses_the_stored_verifier(planted_dataset):
    dataset, _, _ = planted_dataset
    field = curation_info(dataset)["default_embeddings"]
    before = curation_info(dataset)[VERIFIER_INFO_KEY][field]["updated_at"]
    report = analyze(dataset, ["duplicates"])
    assert curation_info(dataset)[VERIFIER_INFO_KEY][field]["updated_at"] == before
    assert report.results["duplicates"].info["method"] == "verified"


def test_verifier_is_stale_after_another_model_or_a_much_larger_dataset(planted_dataset):
    dataset, _, _ = planted_dataset
    field = curation_info(dataset)["default_embeddings"]
    assert stored_verifier(dataset, field, len(dataset) * 2) is None
    assert stored_verifier(dataset, field, len(dataset) + 5) is not None
    clone = dataset.clone("t-verified-analysis-other-model")
    try:
        runs = dict(curation_info(clone)["embeddings"])
        runs[field] = {**runs[field], "model_spec": {**runs[field]["model_spec"], "checkpoint": "/elsewhere.pt"}}
        update_curation_info(clone, embeddings=runs)
        assert stored_verifier(clone, field, len(clone)) is None
    finally:
        clone.delete()


def test_without_a_model_record_analyze_falls_back_to_cosine_and_says_why(planted_dataset):
    dataset, _, _ = planted_dataset
    clone = dataset.clone("t-verified-analysis-no-record")
    try:
        update_curation_info(clone, embeddings={}, **{VERIFIER_INFO_KEY: {}})
        report = analyze(clone, ["duplicates"])
        result = report.results["duplicates"]
        assert result.info["method"] == "cosine"
        assert "no record of the model" in result.info["fallback_reason"]
        assert "cosine threshold" in result.summary
        assert not report.errors
    finally:
        clone.delete()


def test_pages_attach_the_stored_verifier_without_calibrating(planted_dataset):
    dataset, _, _ = planted_dataset
    context = build_context(dataset)
    assert attach_stored_verifier(dataset, context)
    assert context.signatures.dtype == SIGNATURE_DTYPE and len(context.signatures) == len(context)
    clone = dataset.clone("t-verified-analysis-no-verifier")
    try:
        update_curation_info(clone, **{VERIFIER_INFO_KEY: {}})
        bare = build_context(clone)
        assert not attach_stored_verifier(clone, bare)
        assert "not calibrated" in bare.duplicate_verifier_note
        assert VERIFIER_INFO_KEY not in curation_info(clone) or not curation_info(clone)[VERIFIER_INFO_KEY]
    finally:
        clone.delete()


def test_calibrate_dataset_recalibrates_with_the_given_sample(planted_dataset):
    dataset, _, _ = planted_dataset
    record = calibrate_dataset(dataset, sample_size=10, target_precision=0.8)
    assert record["sample_size"] == 10 and record["target_precision"] == 0.8
    field = curation_info(dataset)["default_embeddings"]
    assert curation_info(dataset)[VERIFIER_INFO_KEY][field]["updated_at"] == record["updated_at"]


# --- the signature cache ------------------------------------------------------------------

def test_signature_cache_reuses_rows_and_recomputes_changed_files(small_class_tree, tmp_path, monkeypatch):
    import curation.finders.verification as verification

    monkeypatch.setenv("CURATION_CACHE_DIR", str(tmp_path / "cache"))
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for path, source in zip(paths, sorted(small_class_tree.rglob("*.png"))):
        shutil.copy(source, path)
    first = cached_signatures("sig-test", paths)
    computed = []
    original = verification.compute_signatures
    monkeypatch.setattr(verification, "compute_signatures",
                        lambda files, **kw: computed.append(list(files)) or original(files, **kw))
    again = cached_signatures("sig-test", paths)
    assert computed == [] and np.array_equal(again["thumbnails"], first["thumbnails"])
    Image.new("RGB", (28, 28), (255, 0, 0)).save(paths[1])
    os.utime(paths[1], ns=(1, 1))  # a different modification time, whatever the clock's resolution
    changed = cached_signatures("sig-test", paths)
    assert computed == [[str(paths[1])]]
    assert changed["pixel_digest"][1] != first["pixel_digest"][1]
    assert changed["pixel_digest"][0] == first["pixel_digest"][0]


def test_signature_cache_survives_a_corrupt_file_and_missing_images(small_class_tree, tmp_path, monkeypatch):
    from curation.finders.verification import _signature_cache_path

    monkeypatch.setenv("CURATION_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "a.png"
    shutil.copy(next(small_class_tree.rglob("*.png")), path)
    cached_signatures("sig-corrupt", [path])
    _signature_cache_path("sig-corrupt").write_bytes(b"not an npz")
    signatures = cached_signatures("sig-corrupt", [path, tmp_path / "missing.png"])
    assert signatures["valid"].tolist() == [True, False]
