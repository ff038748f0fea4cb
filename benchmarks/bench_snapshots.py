"""Snapshot size and time at 100k and 1M samples, against cloning the dataset (the free way to
keep a version in FiftyOne; its own snapshots are in the paid edition only).

    .venv/bin/python benchmarks/bench_snapshots.py --sizes 100000,1000000 \
        --json benchmarks/results/bench_snapshots.json --markdown benchmarks/results/bench_snapshots.md

Per size N, in a mongod of its own: a dataset of N samples is written directly into the
database (one template sample from FiftyOne, the rest as raw documents: ``add_samples`` would
take ~14 min at 1M), with 10 classes, a split field on every sample, a tag on 10%, decisions
on 1% (half of them relabels with history). Every filepath is a distinct hard link to one small
PNG per folder, 1,000 folders, so ``stat`` walks real directory entries (warm cache: a local disk).

Timed, in this process: :func:`read_state` (one pass over the samples + the stats),
:func:`create_snapshot` (read + hash + parquet + GridFS), ``list_snapshots``, a diff of the
snapshot against the current state after relabelling 1% in bulk (which itself takes an
automatic snapshot first), :func:`restore_snapshot` of those 1%, ``trend``; and as whole
commands (new processes, what a user waits for): ``curation snapshot create`` and ``curation
snapshot diff``. Peer: ``dataset.clone()`` (time; its size from ``collStats``), and FiftyOne's
``values()`` of the same fields (how fast FiftyOne itself reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CLASSES = [f"class{i}" for i in range(10)]


def make_files(folder: Path, count: int, names: str = "sequential") -> list[str]:
    """``count`` distinct paths, hard links to one PNG, in 1,000 sub-folders; file names
    numbered in order, or random (``names="random"``: 32 hex digits, as content-addressed
    stores name files; they compress far less)."""
    import uuid

    source = next((ROOT / "data" / "fashion-mnist-demo").rglob("*.png"))
    paths = []
    for index in range(count):
        sub = folder / f"{index % 1000:03d}"
        if index < 1000:
            sub.mkdir(exist_ok=True)
            shutil.copy(source, sub / "original.png")  # one per folder: ext4 allows 65,000 links per file
        path = sub / (f"img_{index:07d}.png" if names == "sequential" else f"{uuid.uuid4().hex}.png")
        os.link(sub / "original.png", path)
        paths.append(str(path))
    return paths


def build_dataset(name: str, paths: list[str]):
    import fiftyone as fo
    import numpy as np
    from bson import ObjectId

    from curation.decisions import _ensure_fields

    dataset = fo.Dataset(name)
    dataset.add_sample(fo.Sample(filepath=paths[0], ground_truth=fo.Classification(label=CLASSES[0]),
                                 curation_split="train"))
    _ensure_fields(dataset, "ground_truth")
    template = dataset._sample_collection.find_one({})
    dataset._sample_collection.delete_many({})
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(CLASSES), len(paths))
    splits = rng.choice(["train", "val", "test"], len(paths), p=[0.8, 0.1, 0.1])
    tagged = rng.random(len(paths)) < 0.1
    decided = rng.random(len(paths)) < 0.01
    batch = []
    for index, path in enumerate(paths):
        doc = dict(template)
        doc["_id"] = ObjectId()
        doc["filepath"] = path
        doc["_rand"] = float(rng.random())
        doc["tags"] = ["checked"] if tagged[index] else []
        doc["ground_truth"] = {"_id": ObjectId(), "_cls": "Classification", "tags": [], "label": CLASSES[labels[index]]}
        doc["curation_split"] = str(splits[index])
        if decided[index]:
            relabel = index % 2 == 0
            doc["decision"] = "relabel" if relabel else "remove"
            doc["decision_reason"] = "bench"
            doc["decision_source"] = "bench"
            doc["decision_at"] = "2026-12-01T00:00:00+00:00"
            doc["previous_label"] = CLASSES[(labels[index] + 1) % 10] if relabel else None
            doc["decision_history"] = [{"decision": doc["decision"], "reason": "bench", "source": "bench",
                                        "at": doc["decision_at"], "label_field": "ground_truth" if relabel else None,
                                        "label": CLASSES[labels[index]] if relabel else None, "prior": {}}]
        batch.append(doc)
        if len(batch) == 20_000:
            dataset._sample_collection.insert_many(batch, ordered=False)
            batch = []
    if batch:
        dataset._sample_collection.insert_many(batch, ordered=False)
    dataset.reload()
    return dataset


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def command(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "curation"), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench_snapshots: `curation {' '.join(args)}` failed: {result.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def run_size(count: int, work: Path, names: str = "sequential") -> dict:
    import fiftyone as fo

    from curation import snapshots
    from curation.decisions import apply_relabel
    from memory import peak_rss_mib, rss_mib

    files = work / f"files-{count}"
    files.mkdir()
    paths, make_s = timed(make_files, files, count, names)
    dataset, build_s = timed(build_dataset, f"bench-snapshots-{count}", paths)
    row: dict = {"samples": count, "file_names": names, "build_dataset_s": round(build_s, 1), "make_files_s": round(make_s, 1)}
    before = rss_mib()
    state, row["read_state_s"] = timed(snapshots.read_state, dataset)
    row["read_state_rss_mib"] = round(rss_mib() - before, 1)
    _, row["hash_s"] = timed(snapshots.content_hash, state.table)
    (_, fps), row["stat_s"] = timed(lambda: (None, snapshots.fingerprints(state.table["filepath"].tolist())))
    fields = ["id", "filepath", "tags", "ground_truth.label", "decision", "decision_reason", "decision_source",
              "decision_at", "previous_label", "curation_split"]
    _, row["fiftyone_values_s"] = timed(dataset.values, fields)
    del state
    ref, row["create_s"] = timed(snapshots.create_snapshot, dataset, "v1", note="bench")
    row["snapshot_mib"] = round(ref.size_bytes / 2**20, 2)
    _, row["list_s"] = timed(snapshots.list_snapshots, dataset)
    ids = dataset.take(count // 100, seed=1).values("id")
    _, row["bulk_relabel_1pct_s"] = timed(apply_relabel, dataset, ids, "class0", label_field="ground_truth",
                                         source="bench")
    diff, row["diff_s"] = timed(snapshots.diff_snapshots, dataset, "v1")
    row["diff_relabelled"] = len(diff.relabelled)
    result, row["restore_s"] = timed(snapshots.restore_snapshot, dataset, "v1")
    row["restored"] = result.restored
    _, row["trend_s"] = timed(snapshots.trend, dataset)
    env = dict(os.environ)
    row["cli_create_s"] = round(command(["snapshot", "create", "--dataset", dataset.name, "--name", "v-cli"], env), 1)
    row["cli_diff_s"] = round(command(["snapshot", "diff", "--dataset", dataset.name, "v1", "v-cli", "--limit", "5"],
                                      env), 1)
    clone, row["clone_s"] = timed(dataset.clone, f"bench-clone-{count}")
    fo.core.odm.get_db_conn().client.admin.command("fsync")  # storageSize is only current after a checkpoint
    stats = fo.core.odm.get_db_conn().command("collStats", clone._sample_collection_name)
    row["clone_mib"] = round(stats["size"] / 2**20, 1)
    row["clone_storage_mib"] = round(stats["storageSize"] / 2**20, 1)
    row["peak_rss_mib"] = round(peak_rss_mib(), 0)
    for key, value in list(row.items()):
        if key.endswith("_s") and isinstance(value, float):
            row[key] = round(value, 2)
    row["clone_over_snapshot_time"] = round(row["clone_s"] / row["create_s"], 1)
    row["clone_over_snapshot_size"] = round(row["clone_storage_mib"] / max(row["snapshot_mib"], 1e-9), 1)
    clone.delete()
    dataset.delete()
    shutil.rmtree(files)
    return row


def markdown(rows: list[dict], machine: str) -> str:
    lines = [f"Machine: {machine}", "",
             "| samples (names) | snapshot | size | read state (stats) | list | diff | restore 1% | trend | CLI create | "
             "CLI diff | clone (peer) | clone size | FiftyOne values() |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['samples']:,} ({r.get('file_names', 'sequential')}) | {r['create_s']} s | {r['snapshot_mib']} MiB | {r['read_state_s']} s "
                     f"({r['stat_s']} s) | {r['list_s']} s | {r['diff_s']} s | {r['restore_s']} s | {r['trend_s']} s | "
                     f"{r['cli_create_s']} s | {r['cli_diff_s']} s | {r['clone_s']} s | {r['clone_storage_mib']} MiB | "
                     f"{r['fiftyone_values_s']} s |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated sample counts")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--names", choices=("sequential", "random"), default="sequential",
                        help="file names numbered in order, or 32 random hex digits (compress far less)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-snapshots-"))
    work.mkdir(parents=True, exist_ok=True)
    from curation.database import DatabaseUnavailable, start_private_mongod

    try:
        mongod = start_private_mongod(work)
    except DatabaseUnavailable as error:
        sys.exit(f"bench_snapshots: {error}")
    rows = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            row = run_size(size, work, args.names)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        mongod.terminate()
        mongod.wait(timeout=60)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, machine))
    print(markdown(rows, machine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
