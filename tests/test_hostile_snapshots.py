"""Snapshots under attack and accident: kill -9 mid-write, damaged files, hostile names and notes,
datasets that changed under a snapshot, and the whole done-means flow of issue 11."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest


def _clean_clone(embedded_dataset, name: str):
    from curation.decisions import DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD

    ours = [*DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD]
    return embedded_dataset.exclude_fields([n for n in ours if embedded_dataset.has_sample_field(n)]).clone(name)


@pytest.fixture
def clone(embedded_dataset, fresh_name):
    return _clean_clone(embedded_dataset, fresh_name)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _orphan_chunks() -> int:
    from curation.snapshots import BUCKET, _db

    db = _db()
    files = set(db[f"{BUCKET}.files"].distinct("_id"))
    return sum(1 for file_id in db[f"{BUCKET}.chunks"].distinct("files_id") if file_id not in files)


def test_a_snapshot_killed_mid_write_is_never_listed(clone, monkeypatch):
    from curation import snapshots

    snapshots.create_snapshot(clone, "v1")
    before = _orphan_chunks()
    env = {**os.environ, snapshots.WRITE_PAUSE_VARIABLE: "0.3"}
    process = subprocess.Popen([sys.executable, "-m", "curation.cli", "snapshot", "create", "--dataset", clone.name,
                                "--name", "v2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _orphan_chunks() <= before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"the snapshot finished before it could be killed: {process.stderr.read()}"
        time.sleep(0.4)  # a chunk or two more
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert _orphan_chunks() > before, "the kill should have landed mid-write (chunks without an entry)"
    assert [ref.name for ref in snapshots.list_snapshots(clone)] == ["v1"]
    snapshots.load_snapshot(clone, "v1")  # the old one is whole
    listed = _cli("snapshot", "list", "--dataset", clone.name)
    assert listed.returncode == 0 and "v1" in listed.stdout and "v2" not in listed.stdout
    # the name is free again, and a later snapshot removes the dead chunks once they are old
    monkeypatch.setattr(snapshots, "ORPHAN_AGE_S", -1)
    assert snapshots.create_snapshot(clone, "v2").name == "v2"
    assert _orphan_chunks() == 0
    assert [ref.name for ref in snapshots.list_snapshots(clone)] == ["v1", "v2"]


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "chunk lost"])
def test_a_damaged_snapshot_is_refused_with_its_name(clone, damage):
    from curation.snapshots import BUCKET, SnapshotError, _db, create_snapshot, diff_snapshots, get_snapshot

    create_snapshot(clone, "v1")
    ref = get_snapshot(clone, "v1")
    chunks = _db()[f"{BUCKET}.chunks"]
    chunk = chunks.find_one({"files_id": ref.file_id})
    data = bytearray(chunk["data"])
    if damage == "flipped bytes":
        for index in range(8, len(data) - 8, 97):
            data[index] ^= 0xFF
        chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bytes(data)}})
    elif damage == "truncated":
        chunks.update_one({"_id": chunk["_id"]}, {"$set": {"data": bytes(data[: len(data) // 2])}})
    else:
        chunks.delete_one({"_id": chunk["_id"]})
    with pytest.raises(SnapshotError, match="'v1' of dataset .* (cannot be read|is damaged)"):
        diff_snapshots(clone, "v1")
    result = _cli("snapshot", "diff", "--dataset", clone.name, "v1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "v1" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["../../../tmp/evil", "a/b", "..", "-rf", "v1;rm", "名前", "x" * 65, "$where"])
def test_hostile_names_are_refused_before_anything_is_written(clone, name):
    from curation.snapshots import list_snapshots

    result = _cli("snapshot", "create", "--dataset", clone.name, "--name", name)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "snapshot name: expected" in result.stderr or "expected one argument" in result.stderr
    assert list_snapshots(clone) == []


def test_notes_are_kept_as_text_and_unknown_snapshots_are_named(clone):
    from curation.snapshots import create_snapshot, list_snapshots

    note = "line one\nline two <script>alert(1)</script> {\"$gt\": 1} \x00"
    create_snapshot(clone, "n1", note=note)
    assert list_snapshots(clone)[0].note == note
    for args in (("diff", "--dataset", clone.name, "missing"), ("restore", "--dataset", clone.name, "missing"),
                 ("diff", "--dataset", clone.name, "n1", "missing")):
        result = _cli("snapshot", *args)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "snapshot 'missing' does not exist" in result.stderr and "n1" in result.stderr
    result = _cli("snapshot", "undo", "--dataset", clone.name)
    assert result.returncode == 1 and "has no restore to undo" in result.stderr
    result = _cli("snapshot", "list", "--dataset", "no-such-dataset")
    assert result.returncode == 1 and "no FiftyOne dataset named 'no-such-dataset'" in result.stderr


def test_snapshots_belong_to_their_dataset_and_survive_a_rename(clone, fresh_name):
    from curation.snapshots import create_snapshot, list_snapshots

    create_snapshot(clone, "mine")
    other = clone.clone(fresh_name + "-other")
    try:
        assert list_snapshots(other) == []
        clone.name = fresh_name + "-renamed"
        assert [ref.name for ref in list_snapshots(clone)] == ["mine"]
    finally:
        other.delete()
        clone.name = fresh_name


def test_diff_sees_files_changed_added_and_removed_samples(clone, tmp_path):
    import fiftyone as fo

    from curation.snapshots import create_snapshot, diff_snapshots

    moved = tmp_path / "copy.png"
    first = clone.first()
    shutil.copy(first.filepath, moved)
    clone.add_sample(fo.Sample(filepath=str(moved), ground_truth=fo.Classification(label="bag")))
    create_snapshot(clone, "v1")
    os.utime(moved, ns=(time.time_ns(), time.time_ns() + 10**9))
    gone = clone.last().id
    clone.delete_samples([gone])
    new = clone.add_sample(fo.Sample(filepath=str(moved), ground_truth=fo.Classification(label="coat")))
    diff = diff_snapshots(clone, "v1")
    assert [row["id"] for row in diff.to_dict()["added"]] == [new]
    assert [row["id"] for row in diff.to_dict()["removed"]] == [gone]
    assert diff.counts()["files_changed"] == 0  # the changed file belongs to the removed and the added sample
    create_snapshot(clone, "v2")
    os.utime(moved, ns=(time.time_ns(), time.time_ns() + 5 * 10**9))
    assert [row["id"] for row in diff_snapshots(clone, "v2").to_dict()["files_changed"]] == [new]


def test_restore_recreates_a_label_field_deleted_since(clone):
    from curation.snapshots import create_snapshot, restore_snapshot

    labels = clone.values("ground_truth.label")
    create_snapshot(clone, "v1")
    clone.delete_sample_field("ground_truth")
    result = restore_snapshot(clone, "v1")
    assert result.labels == len(clone)
    assert clone.values("ground_truth.label") == labels


# ---------------------------------------------------------------------------------------------
# The done-means flow of issue 11, through the command line


def test_snapshot_flow_relabel_dedupe_diff_trend_restore_undo_export(embedded_dataset, small_class_tree, fresh_name,
                                                                     tmp_path):
    """v1; accept the suggested labels of flagged samples and remove a duplicate group; v2: the
    diff lists exactly those changes; the trend shows fewer suspected mislabels; restoring v1
    brings the old labels back and can be undone; an export of v1 re-imports with v1's labels."""
    import fiftyone as fo

    from curation.analysis import analyze, current_values
    from curation.datasets import load_dataset
    from curation.embeddings import compute_embeddings
    from curation.snapshots import list_snapshots

    dataset = _clean_clone(embedded_dataset, fresh_name)
    # a near-duplicate pair: two byte-identical copies of one image
    source = sorted((small_class_tree / "sneaker").glob("*.png"))[0]
    copies = [tmp_path / f"copy-{i}.png" for i in range(2)]
    for copy in copies:
        shutil.copy(source, copy)
    dataset.add_samples([fo.Sample(filepath=str(c), ground_truth=fo.Classification(label="sneaker")) for c in copies])
    compute_embeddings(dataset, model="efficientnet-lite0-imagenet", num_workers=0)
    # ten labels flipped to another class, as they might arrive from a careless annotator
    ids, labels = dataset.values(["id", "ground_truth.label"])
    classes = sorted(set(labels))
    flips = {sample_id: classes[(classes.index(label) + 3) % len(classes)]
             for sample_id, label in list(zip(ids, labels))[::6][:10]}
    dataset.set_values("ground_truth.label", flips, key_field="id")
    analyze(dataset, ["mislabels", "duplicates"])

    assert _cli("snapshot", "create", "--dataset", fresh_name, "--name", "v1", "--note", "as imported").returncode == 0
    view = dataset.match(fo.ViewField("mislabel_flag") == True).sort_by("mislabel_score", reverse=True)  # noqa: E712
    suggested = current_values(view, ["suggested_label"])["suggested_label"]
    accepted = [i for i, s, l in zip(view.values("id"), suggested, view.values("ground_truth.label")) if s and s != l][:10]
    assert len(accepted) >= 5, "the mislabel finder should flag most of the ten flipped labels"
    copy_ids = dataset.match(fo.ViewField("filepath").is_in([str(c) for c in copies])).values("id")
    groups = set(dataset.select(copy_ids).values("near_duplicate_group"))
    assert len(groups) == 1 and None not in groups, "the two copies should form one near-duplicate group"
    group = dataset.match(fo.ViewField("near_duplicate_group") == groups.pop())
    removed = [i for i, keeper in zip(*group.values(["id", "duplicate_keeper"])) if not keeper]
    old_labels = dict(zip(*dataset.values(["id", "ground_truth.label"])))

    result = _cli("decide", "--dataset", fresh_name, "--decision", "relabel", "--accept-suggestion", "--ids", ",".join(accepted))
    assert result.returncode == 0, result.stderr
    result = _cli("decide", "--dataset", fresh_name, "--decision", "remove", "--ids", ",".join(removed),
                  "--reason", "near-duplicate group")
    assert result.returncode == 0, result.stderr
    assert _cli("snapshot", "create", "--dataset", fresh_name, "--name", "v2").returncode == 0

    diff = _cli("snapshot", "diff", "--dataset", fresh_name, "v1", "v2", "--json")
    assert diff.returncode == 0, diff.stderr
    changes = json.loads(diff.stdout)
    assert {row["id"] for row in changes["relabelled"]} == set(accepted)
    assert all(row["from"] == old_labels[row["id"]] for row in changes["relabelled"])
    assert {row["id"]: row["to"] for row in changes["decisions_changed"]} == {
        **{i: "relabel" for i in accepted}, **{i: "remove" for i in removed}}
    assert not changes["added"] and not changes["removed"] and not changes["split_moves"]
    assert not changes["tag_changes"]

    trend = json.loads(_cli("snapshot", "trend", "--dataset", fresh_name, "--json").stdout)
    assert [row["name"] for row in trend] == ["v1", "v2", "current"]
    assert trend[1]["suspected_mislabels"] <= trend[0]["suspected_mislabels"] - len(accepted)
    assert trend[1]["duplicate_groups"] < trend[0]["duplicate_groups"]
    assert trend[1]["decisions_made"] == len(accepted) + len(removed)

    v2_labels = dict(zip(*dataset.values(["id", "ground_truth.label"])))
    assert _cli("snapshot", "restore", "--dataset", fresh_name, "v1").returncode == 0
    dataset = load_dataset(fresh_name)
    assert dict(zip(*dataset.values(["id", "ground_truth.label"]))) == old_labels
    assert set(dataset.values("decision")) == {None}
    undo = _cli("snapshot", "undo", "--dataset", fresh_name)
    assert undo.returncode == 0 and "restored snapshot v2" in undo.stdout
    assert dict(zip(*dataset.values(["id", "ground_truth.label"]))) == v2_labels

    out = tmp_path / "export-v1"
    result = _cli("export", "--dataset", fresh_name, "--format", "folders", "--out", str(out), "--snapshot", "v1",
                  "--include-removed")
    assert result.returncode == 0, result.stderr
    assert "from snapshot v1" in result.stdout
    manifest = json.loads((out / "provenance.json").read_text())
    assert manifest["snapshot"]["name"] == "v1" and manifest["dataset"] == fresh_name
    from curation.importers import import_dataset

    import_dataset(out, fresh_name + "-v1", format="classes")
    back = load_dataset(fresh_name + "-v1")
    try:
        by_file = {}
        for sample_id, path in zip(*dataset.values(["id", "filepath"])):
            by_file.setdefault(os.path.basename(path), set()).add(old_labels[sample_id])
        for path, label in zip(*back.values(["filepath", "ground_truth.label"])):
            name = os.path.basename(path)
            assert label in by_file.get(name, {label}), (name, label)
        assert len(back) == len(dataset)
    finally:
        back.delete()
    kinds = {ref.kind for ref in list_snapshots(dataset)}
    assert "auto" in kinds  # the bulk decisions and the restore each took one first
