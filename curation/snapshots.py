"""Versions of a dataset's curation state: snapshots, differences, restore and the quality trend.

A **snapshot** records, per sample: id, filepath, a cheap content fingerprint (the file's
size and modification time from one ``stat``: no image bytes are read), the label, the
decision (with its reason, source and time, and ``previous_label``), the value of every
split field, and the tags. For the dataset it records a *quality row*: samples, classes and
their counts, imbalance, the finders' open issues (suspected mislabels, duplicate groups,
leaks, outliers, ...), the latest audit estimate with its interval, annotator agreement and
consensus figures, decisions made, and the embedding model and finder settings behind them.

Storage: one parquet file per snapshot (zstd, dictionary-encoded columns) in GridFS, bucket
``curation_snapshots`` of FiftyOne's own database, beside the dataset: everyone who uses the
database sees the same versions, and a snapshot belongs to the dataset's id, not its name.
GridFS inserts a file's entry only after all its chunks are written, so a snapshot killed
mid-write is never listed (its orphaned chunks are removed by a later snapshot); the entry
carries the quality row, so listing and the trend never read the files.

A snapshot is taken automatically before every bulk change (:func:`bulk_change`: decisions on
more than one sample, a relabel import, splits, tags on many samples, a restore), unless the
state equals a snapshot that already exists. :func:`restore_snapshot` brings back labels,
decisions, splits and tags as one new change: every restored sample gets a ``restore`` entry
in its decision history (so a single sample can be undone), and :func:`undo_restore` restores
the automatic snapshot taken just before, which is itself a restore. Nothing is ever deleted.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

from curation.errors import CurationError, CurationInputError

logger = logging.getLogger(__name__)

BUCKET = "curation_snapshots"
FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KINDS = ("manual", "auto", "export")
BULK_MIN_SAMPLES = 2  # a change of this many samples or more is a bulk change
DECISION_COLUMNS = ("decision", "decision_reason", "decision_source", "decision_at")
STATE_COLUMNS = ("label", "previous_label", *DECISION_COLUMNS)
OPEN_DECISIONS = (None, "annotate")  # a flag is still open while a sample has no decision or waits for annotation
ORPHAN_AGE_S = 3600  # chunks without a file entry older than this belong to a killed snapshot
RESTORES_KEY = "restores"  # dataset.info["curation"]["restores"]: the restore events, newest last
BATCH = 10_000
CHUNK = 20_000  # samples per aggregation round trip when reading the state
CHUNK_BYTES = 255 * 1024  # GridFS chunk size (its default)


class SnapshotError(CurationError, LookupError):
    """A snapshot that does not exist, or cannot be read; the message names it and lists the others."""


@dataclass(frozen=True)
class SnapshotRef:
    """One stored snapshot, as listed (no per-sample data)."""

    name: str
    created_at: str
    kind: str
    note: str
    reason: str
    samples: int
    size_bytes: int
    content_hash: str
    quality: dict
    file_id: Any = field(repr=False, compare=False, default=None)

    def to_dict(self) -> dict:
        return {"name": self.name, "created_at": self.created_at, "kind": self.kind, "note": self.note,
                "reason": self.reason, "samples": self.samples, "size_bytes": self.size_bytes,
                "content_hash": self.content_hash, "quality": self.quality}


@dataclass
class State:
    """The curation state of a dataset at one moment: one row per sample (sorted by id) and the
    dataset-level quality row and details."""

    table: pd.DataFrame
    label_field: str | None
    split_fields: list[str]
    quality: dict
    details: dict
    read_s: float = 0.0

    @property
    def content_hash(self) -> str:
        return content_hash(self.table)


# ---------------------------------------------------------------------------------------------
# Reading the state


def _db():
    from fiftyone.core.odm import get_db_conn

    return get_db_conn()


def _bucket():
    import gridfs

    return gridfs.GridFSBucket(_db(), bucket_name=BUCKET)


def _fresh(dataset) -> None:
    """Re-read the dataset's info, and its schema when another process changed it (never the
    caller's in-memory samples)."""
    from curation.datasets import _schema_changed_elsewhere

    if _schema_changed_elsewhere(dataset):
        dataset._reload(hard=True)
    else:
        dataset._doc.reload("info")


def _dataset_key(dataset) -> str:
    return str(dataset._doc.id)


def split_fields(dataset) -> list[str]:
    """The dataset's split fields: those written by ``curation split`` (recorded in its info),
    and ``curation_split`` when present; only string fields that exist."""
    import fiftyone as fo

    from curation.datasets import curation_info
    from curation.splits import DEFAULT_SPLIT_FIELD

    names = [DEFAULT_SPLIT_FIELD, *sorted(curation_info(dataset).get("splits", {}) or {})]
    schema = dataset.get_field_schema()
    return [name for name in dict.fromkeys(names) if isinstance(schema.get(name), fo.StringField)]


def fingerprints(filepaths: list[str], workers: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(size, mtime_ns) of each file from one ``stat`` each (threads: stat waits on the disk);
    -1 for a file that cannot be read."""
    sizes = np.full(len(filepaths), -1, dtype=np.int64)
    mtimes = np.full(len(filepaths), -1, dtype=np.int64)

    def chunk(start: int) -> None:
        for index in range(start, min(start + BATCH, len(filepaths))):
            try:
                info = os.stat(filepaths[index])
            except (OSError, TypeError, ValueError):
                continue
            sizes[index] = info.st_size
            mtimes[index] = info.st_mtime_ns

    starts = range(0, len(filepaths), BATCH)
    if len(starts) <= 1:
        for start in starts:
            chunk(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(chunk, starts))
    return sizes, mtimes


def _flag_projection() -> tuple[dict[str, str], list[str]]:
    from curation.analysis import flag_fields

    flags = flag_fields()
    extra = ["suggested_label", "near_duplicate_group", "consensus_label"]
    return flags, extra


def read_state(dataset, *, label_field: str | None = None, with_quality: bool = True) -> State:
    """The dataset's current curation state, read in one pass over its samples (raw database
    reads, no per-sample objects), sorted by sample id."""
    from curation.analysis import RUN_FIELD, committed_runs, owner_of_field
    from curation.datasets import default_label_field

    started = time.perf_counter()
    _fresh(dataset)
    label_field = label_field or default_label_field(dataset)
    splits = split_fields(dataset)
    flags, extra = _flag_projection() if with_quality else ({}, [])
    schema = dataset.get_field_schema()
    flag_names = [name for name in flags.values() if name in schema]
    extra = [name for name in extra if name in schema]
    owner_of = owner_of_field()
    found = [*flag_names, *extra]
    owners = sorted({owner_of[name] for name in found if name in owner_of})
    expressions: dict[str, Any] = {"filepath": "$filepath", "tags": {"$ifNull": ["$tags", []]},
                                   "label": f"${label_field}.label" if label_field else None}
    for name in STATE_COLUMNS[1:]:
        expressions[name] = f"${name}"
    for name in splits:
        expressions[f"split:{name}"] = f"${name}"
    for name in found:
        expressions[name] = f"${name}"
    for owner in owners:
        expressions[f"stamp:{owner}"] = f"${RUN_FIELD}.{owner}"
    columns = read_columns(dataset._sample_collection, expressions)
    columns["id"] = [str(object_id) for object_id in columns.pop("_id")]
    sizes, mtimes = fingerprints(columns["filepath"])
    text = lambda name: _text_column(pd.Series(columns[name], dtype=object))  # noqa: E731  (no "str" inference)
    table = pd.DataFrame({"id": pd.Series(columns["id"], dtype=object),
                          "filepath": pd.Series(columns["filepath"], dtype=object), "file_size": sizes,
                          "file_mtime_ns": mtimes, **{name: text(name) for name in STATE_COLUMNS},
                          **{f"split:{s}": text(f"split:{s}") for s in splits},
                          "tags": pd.Series(columns["tags"], dtype=object)})
    quality: dict = {}
    details: dict = {}
    if with_quality:
        runs = committed_runs(dataset)
        findings = {}
        for name in (*flag_names, *extra):
            owner = owner_of.get(name)
            values = columns[name]
            if runs is not None and owner is not None:  # as analysis.current_values: only the committed run's
                expected = runs.get(owner)
                values = [v if stamp is None or stamp == expected else None
                          for v, stamp in zip(values, columns[f"stamp:{owner}"])]
            findings[name] = values
        quality, details = _quality(dataset, table, findings, flags, label_field)
    return State(table=table, label_field=label_field, split_fields=splits, quality=quality, details=details,
                 read_s=time.perf_counter() - started)


def read_columns(collection, expressions: dict[str, Any], chunk: int = CHUNK) -> dict[str, list]:
    """``{name: [value per sample]}`` for each aggregation expression (missing values are None),
    plus ``_id``, in ``_id`` order: the database packs each chunk of samples into one array per
    column, which decodes several times faster than one document per sample. A chunk that
    would exceed MongoDB's 16 MB document limit (long free-text fields) is read in halves."""
    from pymongo.errors import OperationFailure

    names = list(expressions)
    group: dict[str, Any] = {"_id": None, "ids": {"$push": "$_id"}}
    for index, name in enumerate(names):
        expression = expressions[name]
        group[f"c{index}"] = {"$push": {"$ifNull": [expression, None]} if expression is not None
                              else {"$literal": None}}
    columns: dict[str, list] = {"_id": [], **{name: [] for name in names}}
    last = None
    size = chunk
    while True:
        window = [{"$match": {"_id": {"$gt": last}}}] if last is not None else []
        pipeline = [*window, {"$sort": {"_id": 1}}, {"$limit": size}, {"$group": group}]
        try:
            result = list(collection.aggregate(pipeline, allowDiskUse=True))
        except OperationFailure as error:
            if size > 1 and ("too large" in str(error).lower() or error.code in (10334, 17419, 16493)):
                size = max(1, size // 2)
                continue
            raise
        if not result:
            break
        packed = result[0]
        columns["_id"].extend(packed["ids"])
        for index, name in enumerate(names):
            columns[name].extend(packed[f"c{index}"])
        last = packed["ids"][-1]
        if len(packed["ids"]) < size:
            break
        size = chunk
    return columns


def _text_column(column: pd.Series) -> pd.Series:
    """Strings or None (never NaN), as object; anything else stored in such a field becomes its text."""
    values = column.astype(object)
    if not set(map(type, values)) <= {str, type(None)}:
        values = pd.Series([None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
                            for value in values], index=column.index, dtype=object)
    missing = values.isna()
    if missing.any():
        values = values.where(~missing, None)
    return values


def content_hash(table: pd.DataFrame) -> str:
    """A hash of every recorded value of every sample (rows in id order): equal hashes, equal states."""
    hashed = table.copy()
    hashed["tags"] = hashed["tags"].map(lambda tags: "\x1f".join(sorted(map(str, tags or ()))))
    rows = pd.util.hash_pandas_object(hashed, index=False).to_numpy()
    digest = hashlib.sha256(",".join(hashed.columns).encode())
    digest.update(rows.tobytes())
    return digest.hexdigest()


def _quality(dataset, table: pd.DataFrame, findings: dict[str, list], flags: dict[str, str],
             label_field: str | None) -> tuple[dict, dict]:
    """The dataset-level figures of one state (see the module doc)."""
    from curation.datasets import curation_info

    decision = table["decision"]
    active = (decision != "remove").to_numpy()
    open_ = decision.isna().to_numpy() | (decision == "annotate").to_numpy()
    labels = table.loc[active, "label"]
    counts = labels.dropna().value_counts()
    row: dict[str, Any] = {
        "samples": int(len(table)),
        "active_samples": int(active.sum()),
        "removed": int((~active).sum()),
        "classes": int(len(counts)),
        "unlabelled": int(labels.isna().sum()),
        "imbalance_ratio": round(float(counts.max() / counts.min()), 3) if len(counts) else None,
        "smallest_class_share": round(float(counts.min() / counts.sum()), 4) if len(counts) else None,
        "decisions_made": int(decision.notna().sum()),
        "relabelled": int((decision == "relabel").sum()),
        "files_missing": int((table["file_size"] < 0).sum()),
    }
    open_issues = {}
    for finder, flag in flags.items():
        if flag in findings:
            flagged = np.array([value is True for value in findings[flag]], dtype=bool)
            open_issues[finder] = int((flagged & active & open_).sum())
    row["open_issues"] = open_issues
    row["suspected_mislabels"] = open_issues.get("mislabels")
    row["duplicates"] = open_issues.get("duplicates")
    row["leaks"] = open_issues.get("leakage")
    row["outliers"] = open_issues.get("outliers")
    if "duplicate_flag" in findings and "near_duplicate_group" in findings:
        flagged = np.array([value is True for value in findings["duplicate_flag"]], dtype=bool) & active & open_
        groups = {g for g, f in zip(findings["near_duplicate_group"], flagged) if f and g is not None and g >= 0}
        row["duplicate_groups"] = len(groups)
    else:
        row["duplicate_groups"] = None
    if "consensus_label" in findings:
        consensus = pd.Series(findings["consensus_label"], dtype=object)
        voted = consensus.notna().to_numpy() & active
        row["consensus_samples"] = int(voted.sum())
        row["consensus_matches_label"] = (round(float((consensus[voted] == table.loc[voted, "label"]).mean()), 4)
                                          if voted.any() else None)
    row.update(_audit_figures(dataset))
    row.update(_agreement_figures(dataset))
    info = curation_info(dataset)
    analysis = info.get("analysis", {}) or {}
    embedding_field = analysis.get("embedding_field")
    run = (info.get("embeddings", {}) or {}).get(embedding_field, {}) if embedding_field else {}
    row["embedding_model"] = run.get("model")
    row["analysed_at"] = analysis.get("updated_at")
    details = {
        "label_field": label_field,
        "class_counts": {str(name): int(count) for name, count in counts.items()},
        "decision_counts": {str(k): int(v) for k, v in decision.value_counts().items()},
        "embedding": {"field": embedding_field, **{k: v for k, v in run.items() if k in ("model", "dim", "image_size",
                                                                                      "pretrained", "updated_at")}},
        "finders": {"updated_at": analysis.get("updated_at"), "summaries": analysis.get("summaries", {}),
                    "settings": analysis.get("settings", {})},
    }
    return row, details


def _audit_figures(dataset) -> dict:
    from curation.audit import audit_report, current_audit

    if current_audit(dataset) is None:
        return {"audit_error_rate": None, "audit_ci_low": None, "audit_ci_high": None, "audit_answered": 0}
    report = audit_report(dataset)
    return {"audit_error_rate": report["error_rate"], "audit_ci_low": report["ci_low"],
            "audit_ci_high": report["ci_high"], "audit_answered": report["n_answered"]}


def _agreement_figures(dataset) -> dict:
    from curation.annotators import DEFAULT_FIELD, agreement, read_votes

    empty = {"agreement_alpha": None, "agreement_kappa": None, "voted_samples": 0}
    if not dataset.has_sample_field(DEFAULT_FIELD):
        return empty
    votes = read_votes(dataset, DEFAULT_FIELD)
    if not len(votes.sample_ids):
        return empty
    figures = agreement(votes)
    return {"agreement_alpha": figures.get("krippendorff_alpha"), "agreement_kappa": figures.get("fleiss_kappa"),
            "voted_samples": int(len(votes.sample_ids))}


# ---------------------------------------------------------------------------------------------
# Storing and listing


_INDEXED: set[str] = set()  # databases whose snapshot indexes this process has ensured


def _ensure_indexes(db) -> None:
    """The unique indexes of the bucket, created once per database and process (each
    ``create_index`` is a round trip, and every listing or write used to repeat it)."""
    if db.name in _INDEXED:
        return
    db[f"{BUCKET}.files"].create_index([("metadata.dataset_id", 1), ("metadata.name", 1)], unique=True,
                                       name="dataset_name_unique")
    db[f"{BUCKET}.chunks"].create_index([("files_id", 1), ("n", 1)], unique=True)
    _INDEXED.add(db.name)


def _files():
    db = _db()
    _ensure_indexes(db)
    return db[f"{BUCKET}.files"]


def _ref(doc: dict) -> SnapshotRef:
    meta = doc.get("metadata") or {}
    return SnapshotRef(name=meta.get("name"), created_at=meta.get("created_at"), kind=meta.get("kind", "manual"),
                       note=meta.get("note", ""), reason=meta.get("reason", ""), samples=int(meta.get("samples", 0)),
                       size_bytes=int(doc.get("length", 0)), content_hash=meta.get("content_hash", ""),
                       quality=meta.get("quality", {}), file_id=doc["_id"])


def list_snapshots(dataset, *, kinds: tuple[str, ...] | None = None) -> list[SnapshotRef]:
    """The dataset's snapshots, oldest first (only complete ones: see the module doc)."""
    query: dict[str, Any] = {"metadata.dataset_id": _dataset_key(dataset)}
    if kinds:
        query["metadata.kind"] = {"$in": list(kinds)}
    docs = _files().find(query, {"length": 1, "metadata": 1, "uploadDate": 1}).sort([("metadata.created_at", 1),
                                                                                       ("uploadDate", 1)])
    return [_ref(doc) for doc in docs]


def get_snapshot(dataset, name: str) -> SnapshotRef:
    """The snapshot ``name``; raises :class:`SnapshotError` naming the ones that exist."""
    if not isinstance(name, str) or not name:
        raise SnapshotError(f"snapshot: expected a snapshot name, got {name!r}")
    doc = _files().find_one({"metadata.dataset_id": _dataset_key(dataset), "metadata.name": name})
    if doc is None:
        names = [ref.name for ref in list_snapshots(dataset)]
        listed = ", ".join(names[-10:]) if names else "none yet (curation snapshot create)"
        raise SnapshotError(f"snapshot {name!r} does not exist for dataset {dataset.name!r}; "
                            f"snapshots: {listed}")
    return _ref(doc)


def check_name(name: Any) -> str:
    """A snapshot name: 1-64 letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise CurationInputError(f"snapshot name: expected 1-64 letters, digits, '.', '_' or '-' (starting with a "
                                 f"letter or digit), got {str(name)[:80]!r}")
    if name == CURRENT:  # diff_snapshots(dataset, "current") means the current state
        raise CurationInputError(f"snapshot name: {CURRENT!r} is reserved for the dataset's current state; "
                                 "choose another name")
    return name


def _next_version(dataset) -> str:
    numbers = [int(match.group(1)) for ref in list_snapshots(dataset)
               if (match := re.fullmatch(r"v(\d+)", ref.name or ""))]
    return f"v{max(numbers, default=0) + 1}"


def _table_bytes(state: State, meta: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(state.table, preserve_index=False)
    table = table.replace_schema_metadata({b"curation_snapshot": json.dumps(meta, default=str).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=[c for c in state.table.columns
                                                                     if c not in ("id", "filepath", "file_size",
                                                                                  "file_mtime_ns")])
    return sink.getvalue()


WRITE_PAUSE_VARIABLE = "CURATION_TEST_SNAPSHOT_WRITE_PAUSE"


def _upload(file_id, filename: str, payload: bytes, metadata: dict) -> None:
    """Write the GridFS chunks, then the file entry: a snapshot is listed only once whole.

    Written here rather than with ``GridFSBucket.upload_from_stream`` to make that order
    explicit (readers use GridFS as usual). Test hook: with
    ``CURATION_TEST_SNAPSHOT_WRITE_PAUSE=SECONDS`` the payload goes in 1 KB chunks with a pause
    after each, so a test can kill the process mid-write."""
    from bson import Binary

    pause = os.environ.get(WRITE_PAUSE_VARIABLE, "").strip()
    seconds = 0.0
    if pause:
        try:
            seconds = float(pause)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise CurationInputError(f"{WRITE_PAUSE_VARIABLE}: expected seconds (a number >= 0), got {pause!r}; "
                                     "it is a test hook, unset it")
    size = 1024 if pause else CHUNK_BYTES
    db = _db()
    _ensure_indexes(db)
    chunks = db[f"{BUCKET}.chunks"]
    pieces = [{"files_id": file_id, "n": n, "data": Binary(payload[start:start + size])}
              for n, start in enumerate(range(0, max(len(payload), 1), size))]
    step = 1 if pause else 16
    for start in range(0, len(pieces), step):
        chunks.insert_many(pieces[start:start + step], ordered=True)
        if seconds:
            time.sleep(seconds)
    entry = {"_id": file_id, "length": len(payload), "chunkSize": size, "filename": filename,
             "uploadDate": dt.datetime.now(dt.timezone.utc), "metadata": metadata}
    try:
        db[f"{BUCKET}.files"].insert_one(entry)
    except BaseException:
        chunks.delete_many({"files_id": file_id})
        raise


def _remove_orphans() -> int:
    """Delete chunks of snapshots killed mid-write (no file entry, older than an hour)."""
    db = _db()
    chunks = db[f"{BUCKET}.chunks"]
    files = db[f"{BUCKET}.files"]
    cutoff = time.time() - ORPHAN_AGE_S
    orphans = [file_id for file_id in chunks.distinct("files_id")
               if hasattr(file_id, "generation_time") and file_id.generation_time.timestamp() < cutoff
               and files.count_documents({"_id": file_id}, limit=1) == 0]
    if orphans:
        chunks.delete_many({"files_id": {"$in": orphans}})
        logger.info("snapshots: removed the chunks of %d snapshot(s) killed mid-write", len(orphans))
    return len(orphans)


def create_snapshot(dataset, name: str | None = None, *, note: str = "", kind: str = "manual", reason: str = "",
                    state: State | None = None, dedupe: bool = False) -> SnapshotRef:
    """Record the dataset's current state as snapshot ``name`` (default: the next ``vN``).

    With ``dedupe`` (automatic snapshots), an existing snapshot with the same content is
    returned instead of writing a copy.

    Raises:
        CurationInputError: a bad name or kind, or a name that is taken.
    """
    from bson import ObjectId
    from pymongo.errors import DuplicateKeyError

    from curation.datasets import now_iso

    if kind not in KINDS:
        raise CurationInputError(f"snapshot kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if name is not None:
        check_name(name)
    if not isinstance(note, str) or len(note) > 2000:
        raise CurationInputError("snapshot note: expected text of at most 2,000 characters")
    started = time.perf_counter()
    state = state or read_state(dataset)
    digest = state.content_hash
    if dedupe:
        existing = _files().find_one({"metadata.dataset_id": _dataset_key(dataset), "metadata.content_hash": digest},
                                     sort=[("metadata.created_at", -1)])
        if existing is not None:
            return _ref(existing)
    _remove_orphans()
    for attempt in range(5):
        chosen = name or (_next_version(dataset) if kind == "manual"
                          else f"{kind}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}")
        if name is not None:
            taken = _files().count_documents({"metadata.dataset_id": _dataset_key(dataset), "metadata.name": name},
                                             limit=1)
            if taken:
                raise CurationInputError(f"snapshot {name!r} already exists for dataset {dataset.name!r}; "
                                         "choose another name")
        meta = {"format_version": FORMAT_VERSION, "dataset_id": _dataset_key(dataset), "dataset": dataset.name,
                "name": chosen, "note": note, "kind": kind, "reason": reason, "created_at": now_iso(),
                "samples": int(len(state.table)), "label_field": state.label_field, "split_fields": state.split_fields,
                "content_hash": digest, "quality": state.quality}
        payload = _table_bytes(state, {**meta, "details": state.details})
        file_id = ObjectId()
        try:
            _upload(file_id, f"{dataset.name}/{chosen}.parquet", payload,
                    {**meta, "write_s": round(time.perf_counter() - started, 3)})
        except DuplicateKeyError:  # _upload removed the chunks
            if name is not None:
                raise CurationInputError(f"snapshot {name!r} already exists for dataset {dataset.name!r}; "
                                         "choose another name") from None
            continue  # another process took the same automatic name: pick the next
        logger.info("snapshot %s of %s: %d samples, %d bytes, %.2f s", chosen, dataset.name, len(state.table),
                    len(payload), time.perf_counter() - started)
        return get_snapshot(dataset, chosen)
    raise SnapshotError(f"snapshot: could not find a free name for dataset {dataset.name!r} after 5 tries")


def load_snapshot(dataset, name: str, *, verify: bool = True) -> tuple[SnapshotRef, pd.DataFrame, dict]:
    """The snapshot's reference, its per-sample table and its stored metadata (with details);
    with ``verify``, the content is checked against the hash recorded when it was written."""
    import pyarrow.parquet as pq

    ref = get_snapshot(dataset, name)
    from gridfs.errors import GridFSError

    try:
        data = _bucket().open_download_stream(ref.file_id).read()
    except GridFSError as error:
        raise SnapshotError(f"snapshot {name!r} of dataset {dataset.name!r} cannot be read ({error})") from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise SnapshotError(f"snapshot {name!r} of dataset {dataset.name!r} cannot be read ({error})") from None
    meta = json.loads((table.schema.metadata or {}).get(b"curation_snapshot", b"{}"))
    frame = table.to_pandas()
    frame["tags"] = pd.Series([[] if tags is None else list(tags) for tags in frame["tags"]], dtype=object)
    for column in ("id", "filepath"):
        frame[column] = frame[column].astype(object)
    for column in frame.columns:
        if column not in ("id", "filepath", "file_size", "file_mtime_ns", "tags"):
            frame[column] = _text_column(frame[column])
    if verify and content_hash(frame) != ref.content_hash:
        raise SnapshotError(f"snapshot {name!r} of dataset {dataset.name!r} is damaged: its content does not match "
                            "the hash recorded when it was written")
    return ref, frame, meta


# ---------------------------------------------------------------------------------------------
# Automatic snapshots before bulk changes

_IN_BULK: contextvars.ContextVar[bool] = contextvars.ContextVar("curation_bulk_change", default=False)


@contextlib.contextmanager
def bulk_change(dataset, what: str, count: int | None = None) -> Iterator[SnapshotRef | None]:
    """Take an automatic snapshot before the bulk change the block makes (once, however many
    writes the block does; nested bulk changes take none). Yields the snapshot, or None when
    the change touches fewer than :data:`BULK_MIN_SAMPLES` samples."""
    if _IN_BULK.get() or (count is not None and count < BULK_MIN_SAMPLES):
        yield None
        return
    ref = create_snapshot(dataset, kind="auto", reason=f"before {what}", dedupe=True)
    token = _IN_BULK.set(True)
    try:
        yield ref
    finally:
        _IN_BULK.reset(token)


def snapshot_before(dataset, what: str, count: int) -> SnapshotRef | None:
    """An automatic snapshot before a change of ``count`` samples, if it is a bulk change and
    no enclosing :func:`bulk_change` took one already."""
    if _IN_BULK.get() or count < BULK_MIN_SAMPLES:
        return None
    return create_snapshot(dataset, kind="auto", reason=f"before {what}", dedupe=True)


# ---------------------------------------------------------------------------------------------
# Differences


@dataclass
class Diff:
    """What changed from snapshot ``a`` to ``b`` (``b`` None: the current state)."""

    a: str
    b: str
    added: pd.DataFrame
    removed: pd.DataFrame
    relabelled: pd.DataFrame
    decisions_changed: pd.DataFrame
    split_moves: pd.DataFrame
    tag_changes: pd.DataFrame
    files_changed: pd.DataFrame
    quality_a: dict
    quality_b: dict

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "removed": len(self.removed), "relabelled": len(self.relabelled),
                "decisions_changed": len(self.decisions_changed), "split_moves": len(self.split_moves),
                "tag_changes": len(self.tag_changes), "files_changed": len(self.files_changed)}

    def transitions(self) -> pd.DataFrame:
        """Relabelled samples per (from, to) class pair, most first."""
        if self.relabelled.empty:
            return pd.DataFrame(columns=["from", "to", "count"])
        table = self.relabelled.fillna({"from": "(none)", "to": "(none)"})
        counts = table.groupby(["from", "to"]).size().reset_index(name="count")
        return counts.sort_values(["count", "from", "to"], ascending=[False, True, True], ignore_index=True)

    def transition_matrix(self) -> pd.DataFrame:
        """From-class rows x to-class columns, counts of relabelled samples."""
        pairs = self.transitions()
        if pairs.empty:
            return pd.DataFrame()
        return pairs.pivot_table(index="from", columns="to", values="count", fill_value=0, aggfunc="sum")

    def is_empty(self) -> bool:
        return not any(self.counts().values())

    def to_dict(self, limit: int | None = None) -> dict:
        def rows(frame: pd.DataFrame) -> list[dict]:
            part = frame if limit is None else frame.head(limit)
            return json.loads(part.to_json(orient="records"))

        return {"a": self.a, "b": self.b, "counts": self.counts(),
                "added": rows(self.added), "removed": rows(self.removed), "relabelled": rows(self.relabelled),
                "transitions": rows(self.transitions()), "decisions_changed": rows(self.decisions_changed),
                "split_moves": rows(self.split_moves), "tag_changes": rows(self.tag_changes),
                "files_changed": rows(self.files_changed), "quality": {"a": self.quality_a, "b": self.quality_b}}


CURRENT = "current"


def _side(dataset, name: str | None) -> tuple[str, pd.DataFrame, dict]:
    if name is None or name == CURRENT:
        state = read_state(dataset)
        return CURRENT, state.table, state.quality
    ref, table, _ = load_snapshot(dataset, name)
    return ref.name, table, ref.quality


def _differs(left: pd.Series, right: pd.Series) -> np.ndarray:
    left_missing, right_missing = left.isna().to_numpy(), right.isna().to_numpy()
    same = (left.to_numpy() == right.to_numpy()) | (left_missing & right_missing)
    return ~same


def _with_split_columns(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables with the split columns of either, None where a side had no such field (a
    split made after a snapshot is a move from None; without this, a column on one side only
    keeps its name through ``merge`` and is never compared)."""
    columns = sorted({c for c in (*a.columns, *b.columns) if c.startswith("split:")})

    def pad(frame: pd.DataFrame) -> pd.DataFrame:
        missing = {c: pd.Series([None] * len(frame), index=frame.index, dtype=object) for c in columns
                   if c not in frame}
        return frame.assign(**missing) if missing else frame

    return pad(a), pad(b)


def diff_tables(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The per-sample differences between two state tables (see :class:`Diff`)."""
    a, b = _with_split_columns(a, b)
    keys = ["id", "filepath", "label"]
    added = b.loc[~b["id"].isin(a["id"]), keys].reset_index(drop=True)
    removed = a.loc[~a["id"].isin(b["id"]), keys].reset_index(drop=True)
    both = a.merge(b, on="id", suffixes=("_a", "_b"), how="inner")
    relabel = _differs(both["label_a"], both["label_b"])
    relabelled = pd.DataFrame({"id": both["id"][relabel], "from": both["label_a"][relabel],
                               "to": both["label_b"][relabel], "filepath": both["filepath_b"][relabel]})
    decided = _differs(both["decision_a"], both["decision_b"])
    decisions = pd.DataFrame({"id": both["id"][decided], "from": both["decision_a"][decided],
                              "to": both["decision_b"][decided], "label": both["label_b"][decided],
                              "reason": both["decision_reason_b"][decided], "filepath": both["filepath_b"][decided]})
    moves = []
    split_columns = sorted({c[len("split:"):] for c in (*a.columns, *b.columns) if c.startswith("split:")})
    for split in split_columns:
        column = f"split:{split}"
        left = both[f"{column}_a"] if f"{column}_a" in both else pd.Series([None] * len(both), dtype=object)
        right = both[f"{column}_b"] if f"{column}_b" in both else pd.Series([None] * len(both), dtype=object)
        moved = _differs(left.reset_index(drop=True), right.reset_index(drop=True))
        moves.append(pd.DataFrame({"id": both["id"][moved].to_numpy(), "field": split,
                                   "from": left.to_numpy()[moved], "to": right.to_numpy()[moved]}))
    split_moves = (pd.concat(moves, ignore_index=True) if moves
                   else pd.DataFrame(columns=["id", "field", "from", "to"]))
    tags_a = both["tags_a"].map(lambda tags: frozenset(tags or ()))
    tags_b = both["tags_b"].map(lambda tags: frozenset(tags or ()))
    changed = (tags_a != tags_b).to_numpy()
    tag_changes = pd.DataFrame({"id": both["id"][changed],
                                "added": [sorted(after - before) for before, after in zip(tags_a[changed], tags_b[changed])],
                                "removed": [sorted(before - after) for before, after in zip(tags_a[changed], tags_b[changed])]})
    files = ((both["file_size_a"] != both["file_size_b"]) | (both["file_mtime_ns_a"] != both["file_mtime_ns_b"])
             | (both["filepath_a"] != both["filepath_b"])).to_numpy()
    files_changed = pd.DataFrame({"id": both["id"][files], "filepath_a": both["filepath_a"][files],
                                  "filepath_b": both["filepath_b"][files]})
    return {"added": added, "removed": removed, "relabelled": relabelled.reset_index(drop=True),
            "decisions_changed": decisions.reset_index(drop=True), "split_moves": split_moves,
            "tag_changes": tag_changes.reset_index(drop=True), "files_changed": files_changed.reset_index(drop=True)}


def diff_snapshots(dataset, a: str, b: str | None = None) -> Diff:
    """What changed from snapshot ``a`` to snapshot ``b`` (default: the current state)."""
    name_a, table_a, quality_a = _side(dataset, a)
    name_b, table_b, quality_b = _side(dataset, b)
    return Diff(a=name_a, b=name_b, quality_a=quality_a, quality_b=quality_b, **diff_tables(table_a, table_b))


# ---------------------------------------------------------------------------------------------
# Restore


@dataclass(frozen=True)
class RestoreResult:
    snapshot: str
    before: str  # the automatic snapshot of the state before the restore (restore it to undo)
    restored: int  # samples changed
    labels: int
    decisions: int
    splits: int
    tags: int
    missing: int  # samples of the snapshot no longer in the dataset (they cannot come back)
    added_since: int  # samples added after the snapshot (left as they are)

    def summary(self) -> str:
        text = (f"restored snapshot {self.snapshot}: {self.restored} samples changed ({self.labels} labels, "
                f"{self.decisions} decisions, {self.splits} split values, {self.tags} tag sets)")
        if self.missing:
            text += f"; {self.missing} samples of the snapshot are no longer in the dataset"
        if self.added_since:
            text += f"; {self.added_since} samples added since were left as they are"
        return text + f". Undo: curation snapshot undo (restores {self.before})"


def _restore_writes(dataset, snapshot: pd.DataFrame, current: pd.DataFrame, *, label_field: str | None,
                    split_names: list[str], name: str) -> tuple[list, dict[str, int]]:
    from bson import ObjectId
    from pymongo import UpdateOne

    from curation.datasets import now_iso
    from curation.decisions import HISTORY_FIELD, PREVIOUS_LABEL_FIELD, history_entry

    both = snapshot.merge(current, on="id", suffixes=("_s", "_c"), how="inner")
    label_changed = _differs(both["label_s"], both["label_c"]) if label_field else np.zeros(len(both), bool)
    decision_changed = np.zeros(len(both), dtype=bool)
    for column in (*DECISION_COLUMNS, "previous_label"):
        decision_changed |= _differs(both[f"{column}_s"], both[f"{column}_c"])
    split_changed = np.zeros(len(both), dtype=bool)
    for split in split_names:
        column = f"split:{split}"
        left = both.get(f"{column}_s", pd.Series([None] * len(both), dtype=object))
        right = both.get(f"{column}_c", pd.Series([None] * len(both), dtype=object))
        split_changed |= _differs(left, right)
    tags_changed = (both["tags_s"].map(lambda t: frozenset(t or ())) != both["tags_c"].map(lambda t: frozenset(t or ()))).to_numpy()
    changed = label_changed | decision_changed | split_changed | tags_changed
    stamp = now_iso()
    operations = []
    for index in np.flatnonzero(changed):
        row = both.iloc[index]
        relabel = bool(label_changed[index])
        new_label = row["label_s"]
        entry = history_entry("restore", f"restored snapshot {name}", "snapshot", stamp,
                              label_field if relabel else None, new_label if relabel else None)
        values: dict[str, Any] = {column: {"$literal": row[f"{column}_s"]} for column in DECISION_COLUMNS}
        values[PREVIOUS_LABEL_FIELD] = {"$literal": row["previous_label_s"]}
        values["tags"] = {"$literal": list(row["tags_s"] or [])}
        for split in split_names:
            values[split] = {"$literal": row.get(f"split:{split}_s")}
        values[HISTORY_FIELD] = {"$concatArrays": [{"$ifNull": [f"${HISTORY_FIELD}", []]}, [entry]]}
        values["last_modified_at"] = "$$NOW"
        if relabel:
            if new_label is None:
                values[label_field] = None
            else:
                fresh = {"_id": ObjectId(), "_cls": "Classification", "tags": [], "label": new_label}
                values[label_field] = {"$cond": [{"$eq": [{"$type": f"${label_field}"}, "object"]},
                                                 {"$mergeObjects": [f"${label_field}", {"label": new_label}]},
                                                 {"$literal": fresh}]}
        operations.append(UpdateOne({"_id": ObjectId(row["id"])}, [{"$set": values}]))
    counts = {"restored": int(changed.sum()), "labels": int(label_changed.sum()), "decisions": int(decision_changed.sum()),
              "splits": int(split_changed.sum()), "tags": int(tags_changed.sum())}
    return operations, counts


def restore_snapshot(dataset, name: str) -> RestoreResult:
    """Bring back the labels, decisions, splits and tags of snapshot ``name`` as one new change.

    An automatic snapshot of the state before is taken first (``result.before``); every
    changed sample gets a ``restore`` entry in its decision history. Samples added since the
    snapshot are left as they are; samples removed from the dataset since cannot come back
    (both are counted). History is never deleted.
    """
    import fiftyone as fo

    from curation.datasets import now_iso, update_curation_info, curation_info
    from curation.decisions import _ensure_fields, _refresh

    ref, snapshot, meta = load_snapshot(dataset, name)
    current = read_state(dataset)
    before = create_snapshot(dataset, kind="auto", reason=f"before restoring {ref.name}", state=current, dedupe=True)
    label_field = meta.get("label_field")
    _ensure_fields(dataset, label_field or None)  # declares a label field deleted since the snapshot
    if label_field and label_field != current.label_field:
        current = read_state(dataset, label_field=label_field, with_quality=False)
    # Split fields made since the snapshot are cleared (the snapshot's state had none), and the
    # snapshot's split fields are written even where the dataset no longer has them.
    snapshot, current_table = _with_split_columns(snapshot, current.table)
    current = State(table=current_table, label_field=current.label_field, split_fields=current.split_fields,
                    quality=current.quality, details=current.details)
    split_names = [c[len("split:"):] for c in snapshot.columns if c.startswith("split:")]
    for split in split_names:
        if not dataset.has_sample_field(split):
            dataset.add_sample_field(split, fo.StringField)
    operations, counts = _restore_writes(dataset, snapshot, current.table, label_field=label_field,
                                         split_names=split_names, name=ref.name)
    token = _IN_BULK.set(True)
    try:
        for start in range(0, len(operations), BATCH):
            dataset._sample_collection.bulk_write(operations[start:start + BATCH], ordered=False)
    finally:
        _IN_BULK.reset(token)
    changed_ids = [str(op._filter["_id"]) for op in operations]
    if changed_ids:
        _refresh(dataset, changed_ids)
    _fresh(dataset)
    events = list(curation_info(dataset).get(RESTORES_KEY, []))
    events.append({"at": now_iso(), "snapshot": ref.name, "before": before.name, "restored": counts["restored"]})
    update_curation_info(dataset, **{RESTORES_KEY: events[-200:]})
    missing = int((~snapshot["id"].isin(current.table["id"])).sum())
    added = int((~current.table["id"].isin(snapshot["id"])).sum())
    return RestoreResult(snapshot=ref.name, before=before.name, missing=missing, added_since=added, **counts)


def restore_events(dataset) -> list[dict]:
    """The dataset's restores, oldest first: ``{at, snapshot, before, restored}`` each (``before``
    is what :func:`undo_restore` brings back), read from the database now."""
    from curation.datasets import curation_info

    _fresh(dataset)
    return [dict(event) for event in curation_info(dataset).get(RESTORES_KEY, [])]


def undo_restore(dataset) -> RestoreResult:
    """Undo the latest restore: restore the automatic snapshot taken just before it (itself a
    restore, so undoing twice redoes)."""
    from curation.datasets import curation_info

    _fresh(dataset)
    events = curation_info(dataset).get(RESTORES_KEY, [])
    if not events:
        raise SnapshotError(f"snapshot undo: dataset {dataset.name!r} has no restore to undo")
    return restore_snapshot(dataset, events[-1]["before"])


# ---------------------------------------------------------------------------------------------
# The quality trend

TREND_COLUMNS = ("name", "created_at", "kind", "note", "samples", "active_samples", "classes", "imbalance_ratio",
                 "suspected_mislabels", "duplicate_groups", "duplicates", "leaks", "outliers", "audit_error_rate",
                 "audit_ci_low", "audit_ci_high", "agreement_alpha", "agreement_kappa", "consensus_matches_label",
                 "decisions_made", "relabelled", "removed", "embedding_model")


def trend(dataset, *, include_auto: bool = False, include_current: bool = True) -> pd.DataFrame:
    """One row per snapshot (manual and export ones; automatic ones with ``include_auto``),
    oldest first, and the current state as the last row (name ``current``)."""
    kinds = None if include_auto else ("manual", "export")
    rows = [{"name": ref.name, "created_at": ref.created_at, "kind": ref.kind, "note": ref.note, **ref.quality}
            for ref in list_snapshots(dataset, kinds=kinds)]
    if include_current:
        from curation.datasets import now_iso

        state = read_state(dataset)
        rows.append({"name": CURRENT, "created_at": now_iso(), "kind": CURRENT, "note": "", **state.quality})
    table = pd.DataFrame(rows)
    for column in TREND_COLUMNS:
        if column not in table:
            table[column] = None
    return table[list(TREND_COLUMNS)]


# ---------------------------------------------------------------------------------------------
# A snapshot as a dataset (for exports)


@contextlib.contextmanager
def materialized(dataset, name: str) -> Iterator[tuple[Any, SnapshotRef]]:
    """A temporary dataset holding snapshot ``name``: the samples still in ``dataset`` are cloned
    (their embeddings and findings come along) and get the snapshot's labels, decisions, splits
    and tags; samples removed since come back from the snapshot's own records. Deleted when the
    block ends."""
    import fiftyone as fo

    ref, table, meta = load_snapshot(dataset, name)
    label_field = meta.get("label_field")
    present = set(dataset.values("id"))
    kept = table[table["id"].isin(present)]
    gone = table[~table["id"].isin(present)]
    temp_name = f"curation-snapshot-{uuid.uuid4().hex[:12]}"
    temp = dataset.select(list(kept["id"])).clone(name=temp_name, persistent=False) if len(kept) else \
        fo.Dataset(temp_name, persistent=False)
    try:
        if len(kept):
            # clone() gives new ids in the same order as the selection: map old id -> new id by position
            new_ids = temp.values("id")
            old_ids = dataset.select(list(kept["id"]), ordered=True).values("id")
            order = dict(zip(old_ids, new_ids))
            rows = kept.assign(new_id=kept["id"].map(order))
            _write_state(temp, rows, label_field, meta.get("split_fields") or [])
        if len(gone):
            samples = []
            for row in gone.itertuples(index=False):
                sample = fo.Sample(filepath=row.filepath, tags=list(row.tags or []))
                samples.append(sample)
            new_ids = temp.add_samples(samples)
            _write_state(temp, gone.assign(new_id=new_ids), label_field, meta.get("split_fields") or [])
        yield temp, ref
    finally:
        temp.delete()


def _write_state(temp, rows: pd.DataFrame, label_field: str | None, splits: list[str]) -> None:
    """Write a snapshot's rows onto the temporary dataset's samples ``rows["new_id"]``. The
    decision history is not part of a snapshot: the copy has none (the decisions, with their
    reason, source and time, are)."""
    import fiftyone as fo

    from curation.decisions import HISTORY_FIELD, _ensure_fields

    _ensure_fields(temp, label_field)
    for split in splits:
        if not temp.has_sample_field(split):
            temp.add_sample_field(split, fo.StringField)
    ids = list(rows["new_id"])
    temp.set_values(HISTORY_FIELD, dict(zip(ids, [None] * len(ids))), key_field="id")
    if label_field:
        temp.set_values(label_field, dict(zip(ids, [None if label is None else fo.Classification(label=label)
                                                    for label in rows["label"]])), key_field="id")
    for column in STATE_COLUMNS[1:]:
        temp.set_values(column, dict(zip(ids, rows[column])), key_field="id")
    for split in splits:
        column = f"split:{split}"
        if column in rows:
            temp.set_values(split, dict(zip(ids, rows[column])), key_field="id")
    temp.set_values("tags", dict(zip(ids, [list(tags or []) for tags in rows["tags"]])), key_field="id")
