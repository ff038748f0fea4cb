"""Exports and splits under hostile input (issue 8): names from data never leave the export
folder, `split` never overwrites other data, a killed export leaves nothing behind for
good, an export never writes to the dataset it reads, and bad images or options give one
line of error, never a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from curation.cli import main
from curation.export import EXPORT_FORMATS, ViewSpec, export_dataset
from bad_images import write_rgb_png, write_text_as_image, write_zero_bytes

ROOT = Path(__file__).resolve().parents[1]


def _make_dataset(name: str, folder: Path, labels: list, splits: list | None = None, *, boxes: bool = False):
    """A persistent dataset of tiny PNGs, one per label (None: unlabelled), with an optional split field."""
    import fiftyone as fo

    folder.mkdir(parents=True, exist_ok=True)
    dataset = fo.Dataset(name)
    dataset.persistent = True  # a subprocess reads it
    samples = []
    for index, label in enumerate(labels):
        path = write_rgb_png(folder / f"img{index:03d}.png", width=16 + index % 3, height=12, seed=index)
        sample = fo.Sample(filepath=str(path))
        if label is not None:
            sample["ground_truth"] = fo.Classification(label=label)
            if boxes:
                sample["boxes"] = fo.Detections(detections=[fo.Detection(label=label, bounding_box=[0.1, 0.1, 0.5, 0.5])])
        if splits is not None:
            sample["split"] = splits[index % len(splits)]
        samples.append(sample)
    dataset.add_samples(samples)
    return dataset


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _sample_documents_hash(dataset) -> str:
    documents = list(dataset._sample_collection.find({}, sort=[("_id", 1)]))
    text = json.dumps(documents, default=str, sort_keys=True) + json.dumps(dataset.info, default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------------------
# 1. Names from data stay inside the export folder
# --------------------------------------------------------------------------------------

@pytest.fixture
def hostile(fresh_name, tmp_path):
    """Classes and splits that are path traversals, absolute paths, dots, separators, a
    Windows device name and the manifest's own name; every class in every split."""
    classes = ["cat", "Cat", "../escape", "../../../../escape4", "..", ".", str(tmp_path / "ABSOLUTE"), "a/b", "a_b",
               "provenance.json", "CON", "x\\y"]
    # Absolute names lie deep inside tmp_path, so that even "ABSSPLIT/../../../../escape4"
    # stays in the folder the test watches.
    splits = ["train", "../../X", "..", str(tmp_path / "d1" / "d2" / "d3" / "d4" / "ABSSPLIT"), "provenance.json"]
    labels = [klass for klass in classes for _ in range(len(splits))]
    dataset = _make_dataset(fresh_name, tmp_path / "images", labels, [s for _ in classes for s in splits], boxes=True)
    yield dataset, tmp_path
    dataset.delete()


def _reimport(fmt: str, directory: Path, field: str):
    import fiftyone as fo

    types = {"folders": fo.types.ImageClassificationDirectoryTree, "yolo": fo.types.ImageClassificationDirectoryTree,
             "coco": fo.types.COCODetectionDataset, "cvat": fo.types.CVATImageDataset}
    reimported = fo.Dataset.from_dir(dataset_dir=str(directory), dataset_type=types[fmt], label_field="labels")
    try:
        name = next(n for n in reimported.get_field_schema() if n.startswith("labels"))
        if fmt in ("folders", "yolo"):
            return Counter(reimported.values(f"{name}.label"))
        if fmt == "coco":
            return Counter(d.label for dets in reimported.values(name) for d in (dets.detections if dets else []))
        key = "detections" if field == "boxes" else "classifications"
        return Counter(c.label for labels in reimported.values(name) for c in (getattr(labels, key, None) or []))
    finally:
        reimported.delete()


@pytest.mark.parametrize("fmt, field", [(fmt, "ground_truth") for fmt in EXPORT_FORMATS]
                         + [(fmt, "boxes") for fmt in ("yolo", "coco", "cvat")])
def test_hostile_class_and_split_names_stay_inside_the_export(hostile, fmt, field):
    dataset, root = hostile
    # Deep enough that the worst traversal (split "../../X", then class "../../../../escape4")
    # still lands inside root, where the snapshot sees it.
    out = root / "p1" / "p2" / "p3" / "p4" / "p5" / "out"
    before = _tree(root)
    report = export_dataset(dataset, out, format=fmt, label_field=field, spec=ViewSpec(split_field="split"))
    created = _tree(root) - before
    outside = sorted(str(p) for p in created if p != out and out not in p.parents and p not in out.parents)
    assert outside == [], f"{fmt} wrote outside {out}"
    assert report.samples == len(dataset)
    for path in created:
        assert not path.is_symlink()

    if fmt in ("csv", "parquet", "fiftyone"):  # no folders named after data
        return
    names = json.loads((out / "provenance.json").read_text())["folder_names"]
    splits = names["splits"]
    assert set(splits) == set(dataset.distinct("split"))
    assert len(set(s.lower() for s in splits.values())) == len(splits)  # distinct, even case-insensitively
    assert splits["train"] == "train"  # readable names pass unchanged
    for split, folder in splits.items():
        assert "/" not in folder and "\\" not in folder and not folder.startswith(".") and folder != "provenance.json"
    if fmt == "yolo" and field == "boxes":
        for split, folder in splits.items():
            assert (out / "images" / folder).is_dir() and (out / "labels" / folder).is_dir()
        return
    for split, folder in splits.items():
        view = dataset.match({"split": split})
        if field == "boxes":
            expected = Counter(label for labels in view.values("boxes.detections.label") for label in labels)
        else:
            expected = Counter(view.values("ground_truth.label"))
        if fmt in ("folders", "yolo"):
            classes = names["classes"]
            assert classes["a_b"] == "a_b" and classes["a/b"] == "a_b-2"  # safe names keep their own folder
            assert {classes["cat"], classes["Cat"]} & {"cat", "Cat"}
            back = {folder_name: name for name, folder_name in classes.items()}
            counts = _reimport(fmt, out / folder, field)
            assert Counter({back[k]: v for k, v in counts.items()}) == expected
            # <split>/<class>/<image>: every image exactly three levels down
            assert all(len(p.relative_to(out).parts) == 3 for p in (out / folder).rglob("*") if p.is_file())
        else:
            # The labels files hold the real names.
            assert _reimport(fmt, out / folder, field) == expected, split


def test_split_ratios_with_path_names_are_refused(hostile, capsys):
    dataset, _ = hostile
    assert main(["split", "--dataset", dataset.name, "--ratios", "../../X=0.3,train=0.7", "--label-field",
                 "ground_truth", "--field", "s2"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "'../../X'" in line and "folder" in line
    assert not dataset.has_sample_field("s2")


# --------------------------------------------------------------------------------------
# 2. `split --field` never overwrites other data
# --------------------------------------------------------------------------------------

@pytest.fixture
def plain(fresh_name, tmp_path):
    import fiftyone as fo

    from curation.decisions import record_decision

    dataset = _make_dataset(fresh_name, tmp_path / "images", ["cat", "dog"] * 6, ["a", "b"])
    record_decision(dataset, dataset.values("id")[:1], "keep", reason="fine", source="test")
    dataset.set_values("note_score", [0.5] * len(dataset))
    dataset.add_sample_field("empty_text", fo.StringField)
    yield dataset
    dataset.delete()


@pytest.mark.parametrize("field", ["filepath", "decision", "ground_truth", "split", "id", "tags", "metadata"])
def test_split_refuses_a_field_holding_other_data(plain, field, capsys):
    before = _sample_documents_hash(plain)
    code = main(["split", "--dataset", plain.name, "--field", field, "--ratios", "0.5,0.5", "--label-field",
                 "ground_truth"])
    assert code == 1
    line = _one_error_line(capsys.readouterr().err)
    assert repr(field) in line
    assert "not written by split" in line or "built-in" in line or "already exists" in line
    assert _sample_documents_hash(plain) == before


def test_split_rewrites_its_own_field_and_fills_an_empty_one(plain, capsys):
    from curation.datasets import curation_info

    for ratios in ("0.5,0.5", "0.8,0.2"):
        assert main(["split", "--dataset", plain.name, "--field", "my_split", "--ratios", ratios]) == 0
    assert set(plain.distinct("my_split")) == {"train", "test"}
    assert main(["split", "--dataset", plain.name, "--field", "empty_text", "--ratios", "0.5,0.5"]) == 0
    assert set(curation_info(plain)["splits"]) == {"my_split", "empty_text"}
    capsys.readouterr()


# --------------------------------------------------------------------------------------
# 3. A killed export leaves a leftover that the next run removes
# --------------------------------------------------------------------------------------

# The CLI with a slowed copy, so the test can kill it while it writes.
_SLOW_CLI = """
import shutil, sys, time
_copy = shutil.copy2
def slow_copy(*args, **kwargs):
    time.sleep(0.3)
    return _copy(*args, **kwargs)
shutil.copy2 = slow_copy
from curation.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_export_is_cleaned_up_by_the_next_run(plain, tmp_path, capsys):
    out = tmp_path / "exports" / "out"
    argv = ["export", "--dataset", plain.name, "--format", "folders", "--out", str(out), "--label-field", "ground_truth"]
    env = {**os.environ}
    assert env.get("FIFTYONE_DATABASE_URI") and env.get("FIFTYONE_DATABASE_NAME")
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *argv], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = None
    try:
        deadline = time.monotonic() + 120  # the child imports FiftyOne first: seconds on a busy machine
        while time.monotonic() < deadline and process.poll() is None:
            candidates = list(out.parent.glob(".out.partial-*")) if out.parent.exists() else []
            if candidates and any(p.is_file() for p in candidates[0].rglob("*")):
                partial = candidates[0]  # half written: kill it now
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    assert partial is not None, (stdout, stderr)
    assert process.returncode == -signal.SIGKILL
    assert partial.exists() and not out.exists()

    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "removed 1 leftover(s) of an interrupted export" in captured.err and partial.name in captured.err
    assert not partial.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]
    assert json.loads((out / "provenance.json").read_text())["samples"] == len(plain)
    assert sum(1 for p in out.rglob("*.png")) == len(plain)


# --------------------------------------------------------------------------------------
# 4. An export never writes to the dataset it reads
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, field", [(fmt, "ground_truth") for fmt in EXPORT_FORMATS]
                         + [(fmt, "boxes") for fmt in ("yolo", "coco", "cvat")])
def test_an_export_does_not_change_the_dataset(fresh_name, tmp_path, fmt, field):
    dataset = _make_dataset(fresh_name, tmp_path / "images", ["cat", "dog", "bird"] * 3, ["train", "val"], boxes=True)
    try:
        assert set(dataset.values("metadata")) == {None}
        before = _sample_documents_hash(dataset)
        export_dataset(dataset, tmp_path / "out", format=fmt, label_field=field, spec=ViewSpec(split_field="split"))
        assert _sample_documents_hash(dataset) == before
        assert set(dataset.values("metadata")) == {None}
    finally:
        dataset.delete()


# --------------------------------------------------------------------------------------
# 5. Unreadable and missing images are left out, counted and named
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["coco", "cvat", "folders", "yolo", "fiftyone"])
def test_unreadable_images_are_left_out_and_named(fresh_name, tmp_path, fmt, capsys):
    dataset = _make_dataset(fresh_name, tmp_path / "images", ["cat", "dog"] * 3)
    try:
        paths = dataset.values("filepath")
        write_zero_bytes(Path(paths[0]))
        write_text_as_image(Path(paths[1]))
        Path(paths[2]).unlink()
        out = tmp_path / "out"
        code = main(["export", "--dataset", dataset.name, "--format", fmt, "--out", str(out), "--label-field",
                     "ground_truth"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        line = _one_error_line(captured.err)
        assert line.startswith("left out 3: ")
        assert all(Path(p).name in line for p in paths[:3])
        manifest = json.loads((out / "provenance.json").read_text())
        assert manifest["samples"] == 3 and sum(manifest["left_out"].values()) == 3
        assert {item["filepath"] for item in manifest["left_out_samples"]} == set(paths[:3])
        assert "exported 3 samples" in captured.out
    finally:
        dataset.delete()


def test_an_export_with_only_unreadable_images_is_refused(fresh_name, tmp_path, capsys):
    dataset = _make_dataset(fresh_name, tmp_path / "images", ["cat"])
    try:
        write_zero_bytes(Path(dataset.first().filepath))
        out = tmp_path / "out"
        assert main(["export", "--dataset", dataset.name, "--format", "coco", "--out", str(out)]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert "img000.png" in line
        assert not out.exists() and list(tmp_path.glob(".out*")) == []
    finally:
        dataset.delete()


# --------------------------------------------------------------------------------------
# 6. Bad options: one line, no traceback
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--max-score", "filepath=0.5"], "score field 'filepath' holds"),
    (["--max-score", "ground_truth=0.5"], "score field 'ground_truth' holds"),
    (["--split-field", "ground_truth"], "split field 'ground_truth' holds"),
    (["--split-field", "tags"], "split field 'tags' holds"),
    (["--split-field", "split", "--splits", "nosuch,a"], "no split 'nosuch' in field 'split'"),
    (["--ids", "not-an-id"], "not-an-id"),
    (["--format", "csv", "--embeddings", "--embeddings-field", "ground_truth"], "embeddings field 'ground_truth'"),
    (["--format", "csv", "--embeddings", "--embeddings-field", "filepath"], "embeddings field 'filepath'"),
    (["--format", "csv", "--embeddings"], "has no embeddings yet"),
    (["--decisions", "removed"], "unknown decision 'removed'"),
])
def test_bad_export_options_give_one_line(plain, tmp_path, extra, message, capsys):
    argv = ["export", "--dataset", plain.name, "--out", str(tmp_path / "out")]
    if "--format" not in extra:
        argv += ["--format", "folders"]
    assert main(argv + extra) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert message in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--ratios", "nan"], "ratios"),
    (["--ratios", "train=inf"], "ratios"),
    (["--group-field", "ground_truth"], "group_field 'ground_truth'"),
    (["--group-field", "tags"], "group_field 'tags'"),
    (["--field", "a.b"], "field 'a.b'"),
    (["--field", "  "], "field"),
    (["--balance", "cap", "--cap", "2", "--balance-splits", "holdout"], "balance_splits"),
])
def test_bad_split_options_give_one_line(plain, extra, message, capsys):
    before = _sample_documents_hash(plain)
    assert main(["split", "--dataset", plain.name, *extra]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert message in line
    assert _sample_documents_hash(plain) == before


# The command line may refuse some of these itself (argparse types, --label-field); the
# library must refuse them too, for the pages and for scripts.

def test_split_settings_are_refused_by_the_library(plain):
    from curation.splits import SplitConfig, make_splits

    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer, got -1"):
        SplitConfig(seed=-1)
    with pytest.raises(ValueError, match=r"target: expected a positive whole number"):
        SplitConfig(balance="undersample", target=10 ** 20)
    for name in ("filepath", "split"):
        with pytest.raises(ValueError, match=rf"label_field {name!r}: expected a Classification field"):
            make_splits(plain, name)


def test_a_score_cut_off_must_be_a_finite_number(plain):
    from curation.export import build_view

    with pytest.raises(ValueError, match=r"cut-off for score field 'note_score' must be a finite number, got nan"):
        build_view(plain, "ground_truth", ViewSpec(max_scores=(("note_score", float("nan")),)))
