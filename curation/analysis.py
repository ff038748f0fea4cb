"""Running the finders on a FiftyOne dataset and writing their results back to it.

``analyze`` builds the shared context once (embeddings, labels, splits, one neighbour
graph), runs each requested finder, and stores the per-sample results as sample fields, so
they can be filtered in the FiftyOne App and exported with ``findings_table``. One
finder failing is reported and the others still run.

A run is committed in one step
------------------------------
MongoDB, as FiftyOne runs it (a standalone server), has no transaction across documents,
so an ``analyze`` killed in its write phase (``kill -9``, a crash, a lost connection) used
to leave new scores beside old flags and the info of the old run. Now:

1. Every sample receives all of this run's fields in one update, which MongoDB applies
   atomically per document, together with a stamp ``analysis_run.<owner> = <run id>`` for
   each owner whose fields it carries (a finder, or ``cluster``; :func:`fields_by_owner`
   gives every field exactly one owner).
2. After the last sample, one write of the dataset document commits the run:
   ``info["curation"]["analysis"]["runs"]`` maps each owner to the run id of its results,
   beside the summaries and settings of that same run.
3. Readers ignore an owner's fields on a sample stamped by any run other than the
   committed one (values without a stamp, written outside ``analyze``, are read as stored;
   :func:`current_values`, :func:`current_condition`; used by
   :func:`findings_table`, the queues and status in :mod:`curation.review` and
   :func:`curation.decisions.accept_suggestions`). The committed ids are read from the
   database on each call (:func:`committed_runs`), so a process holding an older copy of
   the dataset (the app, while ``curation analyze`` runs in a terminal) sees the commit.

Killed before the commit, the samples already rewritten carry a run that was never
committed and read as not analysed until the next ``analyze``; the others keep the old run,
which is what the info still describes. After the commit everything is the new run. A
finder that was requested but failed or was skipped loses its earlier results in the same
way (fields cleared, no committed run), so nothing stale outlives the run that replaced it.
Results written before run ids existed (no ``runs`` record) are read as stored; the first
run-id commit records those owners as :data:`UNSTAMPED`, so they stay readable.

Why stamps rather than staging fields: writing ``<field>__staging`` and renaming it into
place is one collection-wide update per field, so a kill between two renames mixes runs
just as before; it would need the stamps anyway. It is also slower: for 5,000 samples and
15 fields, copy and swap took 7.2 s, the old per-field ``set_values`` 4.8 s, and one update
per sample with every field and the stamp 0.3 s (private mongod, 2 CPU cores).

Test hook: ``CURATION_TEST_ANALYSIS_WRITE_PAUSE=SECONDS`` sleeps after each batch of
:data:`WRITE_BATCH_SIZE` samples in the write phase, so tests can kill ``analyze`` in the
middle of it (``tests/test_hostile_analysis.py``). Never set it otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from curation.datasets import curation_info, default_label_field, label_fields, now_iso, update_curation_info
from curation.embeddings import default_embedding_field, load_embeddings
from curation.errors import CurationError, CurationInputError, MissingFieldError
from curation.finders import FINDER_REGISTRY, UnknownFinderError, finder_specs, get_spec
from curation.finders.base import FinderContext, FinderInputError, FinderResult
from curation.projection import ClusterConfig, compute_clusters, normalize_rows

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
DEFAULT_NEIGHBORS = 15

# What the product knows about each finder lives in its spec (:class:`~curation.finders.base.FinderSpec`);
# everything below is derived from the registered specs at call time, so a finder registered
# later (one module plus one registry line) is written, read, exported and queued like the others.

# The public findings contract: one row per sample, these leading columns, then each finder's
# ``findings_columns`` in registry order (contract version 1), ``cluster``, then the columns
# of finders added in later versions. ``findings_columns()`` == the list in the README.
LEADING_FINDINGS_COLUMNS = ("id", "filepath", "split", "label")
# Fields analyze writes that no finder owns: the k-means region of each sample.
CLUSTER_FIELDS = {"cluster": "int"}


def findings_columns() -> list[str]:
    """The findings CSV columns, in order (see the README's "Findings CSV contract")."""
    specs = finder_specs()
    first = [c for spec in specs if spec.findings_version <= 1 for c in spec.findings_columns]
    blocks = [(spec.findings_version, position, spec.findings_columns) for position, spec in enumerate(specs)
              if spec.findings_version > 1]
    blocks += [(version, position, columns) for position, spec in enumerate(specs)
               for version, columns in spec.added_findings_columns]
    later = [c for _, _, columns in sorted(blocks, key=lambda block: block[:2]) for c in columns]
    return [*LEADING_FINDINGS_COLUMNS, *first, *CLUSTER_FIELDS, *later]


def finding_fields() -> list[str]:
    """Sample fields of the findings contract that analyze writes (the columns that are not sample data)."""
    return findings_columns()[len(LEADING_FINDINGS_COLUMNS):]


def fields_by_owner() -> dict[str, dict[str, str]]:
    """{owner: {sample field: kind}} for every field analyze writes: each finder's spec fields,
    and ``cluster``. Every field has exactly one owner, so a run of one finder never
    overwrites another's results.

    Raises:
        ValueError: two finders declare the same field.
    """
    owners = {spec.name: spec.field_kinds for spec in finder_specs()}
    owners["cluster"] = dict(CLUSTER_FIELDS)
    seen: dict[str, str] = {}
    for owner, fields in owners.items():
        for name in fields:
            if name in seen:
                raise ValueError(f"sample field {name!r} is declared by both {seen[name]!r} and {owner!r}")
            seen[name] = owner
    return owners


def owner_of_field() -> dict[str, str]:
    """{sample field: owner}, the inverse of :func:`fields_by_owner`."""
    return {name: owner for owner, fields in fields_by_owner().items() for name in fields}


def flag_fields() -> dict[str, str]:
    """{finder: its boolean "this is an issue" sample field}."""
    return {spec.name: spec.flag_field for spec in finder_specs()}


# The former constants, kept for readers that import them: computed from the specs on access.
_DERIVED = {"FINDINGS_COLUMNS": findings_columns, "FINDING_FIELDS": finding_fields, "FIELDS_BY_OWNER": fields_by_owner,
            "OWNER_OF_FIELD": owner_of_field, "FLAG_FIELDS": flag_fields}


def __getattr__(name: str):
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Per sample: {owner: id of the run that wrote the owner's fields on this sample}.
RUN_FIELD = "analysis_run"
# A committed "run" for results stored before run ids existed: read samples without a stamp.
UNSTAMPED = "unstamped"
WRITE_BATCH_SIZE = 256
WRITE_PAUSE_VARIABLE = "CURATION_TEST_ANALYSIS_WRITE_PAUSE"


class AnalysisError(CurationError, RuntimeError):
    pass


def split_source(dataset, split_field: str | None = None) -> tuple[str, str | None] | None:
    """Where the split of each sample comes from, by this rule (the first that applies):

    1. ``split_field``, when given (it must exist);
    2. the field the most recent ``curation split`` wrote (recorded in
       ``dataset.info["curation"]["splits"]``; fields deleted since are passed over);
    3. a ``split`` field with at least one value;
    4. train/val/test tags (and their synonyms, see :data:`SPLIT_NAMES`).

    The leakage finder, the findings table and its CSV all follow it.

    Returns:
        ``("field", name)``, ``("tags", None)``, or None when nothing holds a split.

    Raises:
        FinderInputError: ``split_field`` does not exist.
    """
    if split_field:
        if not dataset.has_sample_field(split_field):
            raise FinderInputError(f"split field {split_field!r} does not exist on dataset {dataset.name!r}")
        return "field", split_field
    records = curation_info(dataset).get("splits", {})
    written = [(record.get("written_at") or "", position, name) for position, (name, record) in enumerate(records.items())
               if isinstance(record, dict) and dataset.has_sample_field(name)]
    if written:
        return "field", max(written)[2]
    if dataset.has_sample_field("split") and dataset.exists("split").count():
        return "field", "split"
    if any(tag.lower() in SPLIT_NAMES for tag in dataset.count_sample_tags()):
        return "tags", None
    return None


def describe_split_source(source: tuple[str, str | None] | None) -> str:
    """``("field", "curation_split")`` -> ``"field 'curation_split'"``, for info and messages."""
    if source is None:
        return "none"
    return f"field {source[1]!r}" if source[0] == "field" else "train/val/test tags"


def _read_splits(dataset, ids: list[str], source: tuple[str, str | None] | None,
                 normalize_field: bool) -> np.ndarray | None:
    if source is None:
        return None
    view = dataset.select(ids, ordered=True)
    kind, name = source
    if kind == "field":
        values = [None if v is None else str(v) for v in view.values(name)]
        if normalize_field:
            values = [None if v is None else SPLIT_NAMES.get(v.lower(), v) for v in values]
    else:
        values = []
        for tags in view.values("tags"):
            found = [SPLIT_NAMES[t.lower()] for t in tags or [] if t.lower() in SPLIT_NAMES]
            values.append(found[0] if found else None)
    return np.array(values, dtype=object) if any(v is not None for v in values) else None


def split_values(dataset, ids: list[str], split_field: str | None = None) -> np.ndarray | None:
    """Split name per sample of ``ids`` by the rule of :func:`split_source`; None when none of
    them has one.

    Values of a named field and of the product's own split field are kept as written; values
    of a ``split`` field and tags are mapped to train/val/test (``validation`` -> ``val``).
    """
    source = split_source(dataset, split_field)
    return _read_splits(dataset, ids, source, normalize_field=source == ("field", "split") and not split_field)


def embedding_fields(dataset) -> list[str]:
    """Sample fields that can hold embeddings (vector and array fields)."""
    import fiftyone as fo

    return sorted(name for name, kind in dataset.get_field_schema().items()
                  if isinstance(kind, (fo.VectorField, fo.ArrayField)))


def check_embedding_field(dataset, field: str) -> None:
    """Raise unless ``field`` exists on ``dataset`` and holds vectors.

    Raises:
        MissingFieldError: no such field (the message lists the embedding fields).
        CurationInputError: the field holds something else (a string, a label...).
    """
    available = ", ".join(embedding_fields(dataset)) or "none"
    if not dataset.has_sample_field(field):
        raise MissingFieldError(f"dataset {dataset.name!r} has no embedding field {field!r}; embedding fields: {available}")
    if field not in embedding_fields(dataset):
        kind = type(dataset.get_field(field)).__name__
        raise CurationInputError(f"{field!r} is not an embedding field of dataset {dataset.name!r} (it is a {kind}); "
                                 f"embedding fields: {available}")


def check_label_field(dataset, label_field: str) -> None:
    """Raise :class:`CurationInputError` unless ``label_field`` holds one ``fo.Classification`` per sample."""
    fields = label_fields(dataset)
    if label_field not in fields:
        raise CurationInputError(f"label field {label_field!r} is not a classification field of dataset {dataset.name!r}; "
                                 f"classification fields: {', '.join(fields) or 'none'}")


def build_context(dataset, *, field: str | None = None, label_field: str | None = None,
                  split_field: str | None = None, k: int = DEFAULT_NEIGHBORS) -> FinderContext:
    """Everything the finders share, with one neighbour graph (disk-cached).

    Raises:
        AnalysisError: the dataset has no embeddings yet.
        MissingFieldError, CurationInputError: ``field`` is not an embedding field, or
            ``label_field`` not a classification field.
        FinderInputError: ``split_field`` does not exist.
    """
    from curation.neighbors import cached_neighbors

    field = field or default_embedding_field(dataset)
    if not field:
        raise AnalysisError(f"dataset {dataset.name!r} has no embeddings; run `curation embed --dataset {dataset.name}` first")
    check_embedding_field(dataset, field)
    if label_field is not None:
        check_label_field(dataset, label_field)
    source = split_source(dataset, split_field)  # a missing split field fails before the neighbour graph
    ids, embeddings = load_embeddings(dataset, field)
    if not ids:
        raise AnalysisError(f"dataset {dataset.name!r} has no embedded samples in {field!r}")
    embeddings = normalize_rows(embeddings)
    graph = cached_neighbors(dataset.name, field, ids, embeddings, k)
    view = dataset.select(ids, ordered=True)
    label_field = label_field if label_field is not None else default_label_field(dataset)
    labels = None
    if label_field:
        labels = np.array(view.values(f"{label_field}.label"), dtype=object)
    model = curation_info(dataset).get("embeddings", {}).get(field, {}).get("model")
    splits = _read_splits(dataset, ids, source, normalize_field=source == ("field", "split") and not split_field)
    return FinderContext(
        ids=np.array(ids, dtype=object), embeddings=embeddings, filepaths=np.array(view.values("filepath"), dtype=object),
        neighbor_indices=graph.indices, neighbor_similarities=graph.similarities, labels=labels,
        splits=splits, model_name=model, embedding_field=field, label_field=label_field,
        split_source=describe_split_source(source),
    )


@dataclass
class AnalysisReport:
    results: dict[str, FinderResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # set once the results are committed to the dataset


def check_finder_names(names: list[str] | None) -> list[str]:
    """``names`` (default: every registered finder) after checking each is registered.

    Raises:
        UnknownFinderError: an unregistered name (the message lists the valid ones).
    """
    names = list(FINDER_REGISTRY) if names is None else list(names)
    unknown = [name for name in names if name not in FINDER_REGISTRY]
    if unknown:
        raise UnknownFinderError(f"unknown finder {unknown[0]!r}. Available: {', '.join(FINDER_REGISTRY)}")
    if not names:
        raise UnknownFinderError(f"no finder named; choose from: {', '.join(FINDER_REGISTRY)}")
    return names


def run_finders(context: FinderContext, names: list[str] | None = None, *, configs: dict | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> AnalysisReport:
    """Run each finder; a failure is recorded in ``errors`` and the rest still run; a finder
    whose requirements (its spec's ``requires``) the context does not meet, or that refuses
    its input, is recorded in ``skipped``."""
    names = check_finder_names(names)
    configs = configs or {}
    report = AnalysisReport()
    for position, name in enumerate(names):
        if progress:
            progress(name, position, len(names))
        spec = get_spec(name)
        missing = spec.missing_requirement(context)
        if missing:
            report.skipped[name] = missing
            continue
        try:
            report.results[name] = spec.run(context, configs.get(name))
        except FinderInputError as error:
            report.skipped[name] = str(error)
        except Exception as error:  # one finder failing must not stop the others; the reason is kept
            logger.exception("finder %s failed", name)
            report.errors[name] = f"{type(error).__name__}: {error}"
    if progress:
        progress("done", len(names), len(names))
    return report


def _jsonable(value):
    """Finder info dicts as plain JSON types, so they can be stored in ``dataset.info``."""
    import json

    def convert(item):
        if isinstance(item, np.generic):
            return item.item()
        if isinstance(item, np.ndarray):
            return item.tolist()
        if hasattr(item, "__dataclass_fields__"):
            from dataclasses import asdict

            return asdict(item)
        return str(item)

    return json.loads(json.dumps(value, default=convert))


def _ensure_field(dataset, name: str, kind: str) -> None:
    import fiftyone as fo

    if not dataset.has_sample_field(name):
        if kind == "list":
            dataset.add_sample_field(name, fo.ListField, subfield=fo.StringField)
        elif kind == "dict":
            dataset.add_sample_field(name, fo.DictField)
        else:
            kinds = {"float": fo.FloatField, "int": fo.IntField, "str": fo.StringField, "bool": fo.BooleanField}
            dataset.add_sample_field(name, kinds[kind])


def _finding_values(context: FinderContext, report: AnalysisReport, n_clusters: int) -> dict[str, list]:
    """Per sample field written by this run (the fields of each finder that ran, from its
    spec, and ``cluster``), its values aligned with ``context.ids``."""
    values: dict[str, list] = {}
    for spec in finder_specs():
        result = report.results.get(spec.name)
        if result is None:
            continue
        for finding in spec.fields:
            column = finding.values(result, context)
            if len(column) != len(context.ids):
                raise AnalysisError(f"finder {spec.name!r}: field {finding.name!r} has {len(column)} values "
                                    f"for {len(context.ids)} samples")
            values[finding.name] = column
    values["cluster"] = compute_clusters(context.embeddings, ClusterConfig(n_clusters=n_clusters)).tolist()
    return {name: [v.item() if isinstance(v, np.generic) else v for v in column] for name, column in values.items()}


def _write_pause() -> float:
    """Seconds to sleep after each write batch (test hook, see the module docstring)."""
    text = os.environ.get(WRITE_PAUSE_VARIABLE, "").strip()
    if not text:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise CurationInputError(f"{WRITE_PAUSE_VARIABLE}: expected seconds (a number >= 0), got {text!r}; "
                                 "it is a test hook, unset it")
    return seconds


def _write_samples(dataset, ids: np.ndarray, values: dict[str, list], run_id: str, done: list[str],
                   cleared: list[str]) -> None:
    """One update per sample: this run's fields and stamps; the cleared owners' fields and stamps removed.

    A pipeline update, so the stamp merges into an ``analysis_run`` that is missing or None,
    and every value is a ``$literal`` (a label such as ``"$x"`` is not a field path).
    """
    import fiftyone as fo
    from bson import ObjectId
    from pymongo import UpdateOne

    pause = _write_pause()
    stamps = {owner: run_id for owner in done}
    run_stamps = {"$mergeObjects": [{"$ifNull": [f"${RUN_FIELD}", {}]}, {"$literal": stamps}]}
    owners = fields_by_owner()
    removed = [name for owner in cleared for name in owners[owner]] + [f"{RUN_FIELD}.{owner}" for owner in cleared]
    touch = {"last_modified_at": "$$NOW"} if dataset.has_sample_field("last_modified_at") else {}
    columns = list(values.items())
    for start in range(0, len(ids), WRITE_BATCH_SIZE):
        operations = []
        for row in range(start, min(start + WRITE_BATCH_SIZE, len(ids))):
            update = {name: {"$literal": column[row]} for name, column in columns}
            pipeline = [{"$set": {**update, RUN_FIELD: run_stamps, **touch}}]
            if removed:
                pipeline.append({"$unset": removed})
            operations.append(UpdateOne({"_id": ObjectId(ids[row])}, pipeline))
        dataset._sample_collection.bulk_write(operations, ordered=False)
        if pause:
            time.sleep(pause)
    fo.Sample._reload_docs(dataset._sample_collection_name, sample_ids=[str(i) for i in ids], hard=True)


def write_findings(dataset, context: FinderContext, report: AnalysisReport, *, n_clusters: int = 10) -> str:
    """Store the per-sample findings as sample fields (columns of the findings contract) and
    commit them as one run (see the module docstring); returns the run id.

    Only the fields of finders that ran are rewritten, so running one finder keeps the
    others' earlier results. A finder that ran but does not apply to a sample leaves None. A
    finder that was requested but failed or was skipped loses its earlier results (its
    summary is dropped too; ``errors`` and ``skipped`` say why).
    """
    values = _finding_values(context, report, n_clusters)
    owners = fields_by_owner()
    done = [owner for owner in owners if owner in report.results] + ["cluster"]
    cleared = [name for name in owners if name in report.errors or name in report.skipped]
    for owner in done:
        for name, kind in owners[owner].items():
            _ensure_field(dataset, name, kind)
    _ensure_field(dataset, RUN_FIELD, "dict")
    run_id = uuid.uuid4().hex
    _write_samples(dataset, context.ids, values, run_id, done, cleared)

    # Merge into the info as stored now, not this process's copy from before the run (another
    # process may have written a split or a calibration meanwhile). Only the info is reloaded:
    # ``dataset.reload()`` would also replace the caller's in-memory samples.
    dataset._doc.reload("info")
    previous = curation_info(dataset).get("analysis", {})
    replaced = set(done) | set(cleared)
    if "runs" in previous:
        runs = {owner: run for owner, run in previous["runs"].items() if owner not in replaced}
    else:  # results stored before run ids: they stay readable as they are
        runs = {owner: UNSTAMPED for owner in [*previous.get("summaries", {}), "cluster"] if previous
                and owner in owners and owner not in replaced}
    runs.update(dict.fromkeys(done, run_id))
    kept = lambda key: {k: v for k, v in previous.get(key, {}).items() if k not in replaced}  # noqa: E731
    update_curation_info(dataset, analysis={
        "updated_at": now_iso(),
        "run_id": run_id,
        "embedding_field": context.embedding_field,
        "label_field": context.label_field,
        "split_source": context.split_source,
        "summaries": {**kept("summaries"), **{name: result.summary for name, result in report.results.items()}},
        "settings": {**kept("settings"), **{name: _jsonable(result.info) for name, result in report.results.items()}},
        "runs": runs,
        "errors": report.errors,
        "skipped": report.skipped,
    })
    return run_id


def committed_runs(collection) -> dict[str, str] | None:
    """``{owner: run id}`` of the results readers may show, read from the database now (not
    from this process's copy of the dataset); ``{}`` when a first run stamped samples but was
    never committed; None when results carry no run ids (never analysed, or analysed before
    run ids existed): then every stored value counts."""
    from fiftyone.core.odm import get_db_conn

    dataset = collection._root_dataset
    stored = get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"info": 1})
    info = (stored or {}).get("info") if stored is not None else dataset.info
    runs = ((info or {}).get("curation", {}) or {}).get("analysis", {}).get("runs")
    if isinstance(runs, dict):
        return dict(runs)
    # Stamps but no commit: the first analyze was killed; its stamped values are not shown.
    return {} if dataset.has_sample_field(RUN_FIELD) else None


def analysis_record(dataset) -> dict:
    """The dataset's analysis record (updated_at, fields, summaries, settings, runs, errors,
    skipped) as stored now: re-read from the database, so a process holding the dataset
    open (the app) shows what a ``curation analyze`` in a terminal committed. ``{}`` if none."""
    dataset._doc.reload("info")
    return dict(curation_info(dataset).get("analysis") or {})


def has_results(owner: str, runs: dict[str, str] | None) -> bool:
    """Whether ``owner`` has results readers may show under ``runs`` (see :func:`committed_runs`):
    always without run ids, otherwise only when the owner has a committed run."""
    return runs is None or runs.get(owner) is not None


def current_condition(owner: str, runs: dict[str, str] | None):
    """A FiftyOne expression matching samples whose ``owner`` fields may be read: stamped by
    the committed run, or not stamped at all (written outside ``analyze``); None when nothing
    needs checking (``runs`` is None). Samples stamped by another run (one that was killed
    before its commit) do not match."""
    from fiftyone import ViewField as F

    if runs is None:
        return None
    expected = runs.get(owner)
    stamp = F(f"{RUN_FIELD}.{owner}")
    if expected is None or expected == UNSTAMPED:
        return stamp.exists(False)
    return stamp.exists(False) | (stamp == expected)


def _is_current(stamps: dict | None, owner: str, runs: dict[str, str] | None) -> bool:
    if runs is None:
        return True
    actual = (stamps or {}).get(owner)
    return actual is None or actual == runs.get(owner)


def current_values(collection, fields: list[str], runs: dict[str, str] | None | bool = True) -> dict[str, list]:
    """Values of ``fields`` for every sample of ``collection`` (a dataset or view), in its
    order; a finding field is None where its owner's run is not the committed one, and a
    field that does not exist is all None.

    Args:
        runs: the committed runs (:func:`committed_runs`); True (default) reads them now.
    """
    if runs is True:
        runs = committed_runs(collection)
    present = [name for name in dict.fromkeys(fields) if collection.has_sample_field(name)]
    owner_of = owner_of_field()
    owned = [name for name in present if name in owner_of]
    read = present + ([RUN_FIELD] if owned and runs is not None and collection.has_sample_field(RUN_FIELD) else [])
    columns = dict(zip(read, collection.values(read))) if read else {}
    count = len(next(iter(columns.values()))) if columns else collection.count()
    if owned and runs is not None:
        stamps = columns.pop(RUN_FIELD, [None] * count)
        for name in owned:
            owner = owner_of[name]
            columns[name] = [value if _is_current(stamp, owner, runs) else None
                             for value, stamp in zip(columns[name], stamps)]
    return {name: columns.get(name, [None] * count) for name in fields}


PIXEL_HASH_FIELD = "pixel_hash"


def ensure_pixel_digests(dataset, ids: list[str]) -> list[str | None]:
    """Hashes of decoded pixels for ``ids``, computing and storing only the missing ones."""
    from curation.finders.duplicates import pixel_digest

    if dataset.has_sample_field(PIXEL_HASH_FIELD):
        missing_ids, missing_paths = dataset.exists(PIXEL_HASH_FIELD, False).values(["id", "filepath"])
    else:
        missing_ids, missing_paths = dataset.values(["id", "filepath"])
    if missing_ids:
        # "" marks an undecodable file, so it is not retried on every run.
        digests = {sample_id: pixel_digest(path) or "" for sample_id, path in zip(missing_ids, missing_paths)}
        dataset.set_values(PIXEL_HASH_FIELD, digests, key_field="id")
    values = dataset.select(ids, ordered=True).values(PIXEL_HASH_FIELD)
    return [value or None for value in values]


VERIFIER_INFO_KEY = "duplicate_verifier"
# Record fields of an embedding run that do not change its vectors (an incremental run
# rewrites them); everything else (model, weights, input size, ...) identifies the vectors.
_VOLATILE_RUN_KEYS = ("updated_at", "device", "fallback_reason")
# A verifier's prior (duplicate pairs among candidate pairs) was set for a dataset size; one
# this many times larger or smaller is calibrated again.
VERIFIER_SIZE_TOLERANCE = 1.5


def _embedding_run_identity(dataset, field: str) -> dict | None:
    record = curation_info(dataset).get("embeddings", {}).get(field)
    if not isinstance(record, dict) or "model_spec" not in record:
        return None
    return {key: value for key, value in record.items() if key not in _VOLATILE_RUN_KEYS}


def stored_verifier(dataset, field: str, count: int | None = None) -> dict | None:
    """The near-duplicate verifier calibrated for ``field`` (``VerifierCalibration.to_dict()``
    plus ``embedding_run`` and ``updated_at``), or None when there is none or it no longer
    fits: the field was re-embedded with another model or settings, or the dataset's size
    (``count``) changed more than :data:`VERIFIER_SIZE_TOLERANCE` times."""
    stored = curation_info(dataset).get(VERIFIER_INFO_KEY, {}).get(field)
    if not isinstance(stored, dict):
        return None
    if stored.get("embedding_run") != _embedding_run_identity(dataset, field):
        return None
    size = stored.get("dataset_size") or 0
    if count is not None and not (size / VERIFIER_SIZE_TOLERANCE <= count <= size * VERIFIER_SIZE_TOLERANCE):
        return None
    return stored


def calibrate_verifier_for(dataset, context: FinderContext, *, sample_size: int | None = None,
                           target_precision: float = 0.9, device: str = "auto", progress=None) -> dict:
    """Self-calibrate the near-duplicate verifier on ``context`` (the dataset's own images, edited,
    embedded with the model of its embedding field) and store it in the dataset info.

    ``sample_size``: images that get edited copies; default ``min(200, max(20, N // 10))``.

    Raises:
        AnalysisError: no record of the model behind the embedding field.
        ModelUnavailableError: that model cannot be loaded (e.g. its weights are gone).
        FinderInputError: too few usable images to calibrate on.
    """
    from curation.embeddings import embedder_for_field
    from curation.finders.verification import calibrate_verifier, cached_signatures

    field = context.embedding_field
    identity = _embedding_run_identity(dataset, field)
    if identity is None:
        raise AnalysisError(f"no record of the model behind {field!r}; re-run `curation embed --dataset {dataset.name}`")
    count = len(context)
    if sample_size is None:
        sample_size = min(200, max(20, count // 10))
    signatures = context.signatures
    if signatures is None:
        signatures = context.signatures = cached_signatures(dataset.name, list(context.filepaths))
    embedder = embedder_for_field(dataset, field, device=device)
    k = min(10, context.neighbor_indices.shape[1])
    verifier = calibrate_verifier(list(context.filepaths), context.embeddings, context.neighbor_indices,
                                  context.neighbor_similarities, embedder, signatures=signatures, k=k,
                                  sample_size=sample_size, target_precision=target_precision, progress=progress)
    record = {**verifier.to_dict(), "embedding_run": identity, "updated_at": now_iso()}
    stored = dict(curation_info(dataset).get(VERIFIER_INFO_KEY, {}))
    stored[field] = record
    update_curation_info(dataset, **{VERIFIER_INFO_KEY: stored})
    return record


def ensure_duplicate_verifier(dataset, context: FinderContext) -> dict | None:
    """The stored verifier for the context's embedding field, calibrating one first when none
    fits (the first ``analyze`` of a dataset and model). When that is impossible (no model
    record, model not loadable, too few images) returns None and sets
    ``context.duplicate_verifier_note``: the finders then fall back to the cosine threshold
    and say why."""
    from curation.models import ModelUnavailableError

    stored = stored_verifier(dataset, context.embedding_field, len(context))
    if stored is not None:
        return stored
    try:
        return calibrate_verifier_for(dataset, context)
    except (CurationError, ModelUnavailableError, OSError) as error:
        logger.warning("near-duplicate verifier not calibrated on %s: %s", dataset.name, error)
        context.duplicate_verifier_note = f"verifier not calibrated: {error}"
        return None


def _load_signatures(dataset, context: FinderContext):
    from curation.finders.verification import cached_signatures

    return cached_signatures(dataset.name, list(context.filepaths))


def _load_annotator_votes(dataset, context: FinderContext):
    """The votes of ``curation import-annotations`` (default field), or None when there are none."""
    from curation.annotators import DEFAULT_FIELD, read_votes

    if not dataset.has_sample_field(DEFAULT_FIELD):
        return None
    try:
        return read_votes(dataset, DEFAULT_FIELD)
    except CurationError as error:  # the field exists but holds no votes
        logger.info("no annotator votes on %s: %s", dataset.name, error)
        return None


# What analyze can fill into the context for finders that declare it in ``context_needs``,
# in this order (a later loader may use what an earlier one filled in).
CONTEXT_LOADERS: dict[str, Callable] = {
    "pixel_digests": lambda dataset, context: ensure_pixel_digests(dataset, list(context.ids)),
    "signatures": _load_signatures,
    "duplicate_verifier": ensure_duplicate_verifier,
    "annotator_votes": _load_annotator_votes,
}


def analyze(dataset, finders: list[str] | None = None, *, field: str | None = None, label_field: str | None = None,
            split_field: str | None = None, configs: dict | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> AnalysisReport:
    """Build the context, run the finders, write the results to the dataset as one run.

    Raises:
        UnknownFinderError: a name in ``finders`` is not registered, or ``finders`` is empty.
        AnalysisError, MissingFieldError, CurationInputError, FinderInputError: see
            :func:`build_context`.
    """
    finders = check_finder_names(finders)
    _write_pause()  # a bad test-hook value fails now, not after the finders ran
    context = build_context(dataset, field=field, label_field=label_field, split_field=split_field)
    configs = dict(configs or {})
    specs = [get_spec(name) for name in finders]
    needs = set(need for spec in specs for need in spec.context_needs)
    unknown = sorted(needs - set(CONTEXT_LOADERS))
    if unknown:
        raise AnalysisError(f"a finder needs {unknown[0]!r}, which analyze cannot provide; it can: {', '.join(CONTEXT_LOADERS)}")
    for need in (name for name in CONTEXT_LOADERS if name in needs):
        setattr(context, need, CONTEXT_LOADERS[need](dataset, context))
    for spec in specs:  # a finder's settings for this dataset (e.g. the calibrated threshold)
        if spec.dataset_config is not None and spec.name not in configs:
            configs[spec.name] = spec.dataset_config(dataset, context)
    report = run_finders(context, finders, configs=configs, progress=progress)
    report.run_id = write_findings(dataset, context, report)
    return report


def findings_table(dataset, label_field: str | None = None, split_field: str | None = None) -> pd.DataFrame:
    """One row per sample with the documented findings columns (empty where a finder did not
    apply, did not run, or its latest run was not completed).

    ``split`` comes from ``split_field`` when given, else by the rule of :func:`split_source`:
    the field the most recent ``curation split`` wrote (``curation_split`` by default), a
    ``split`` field, or train/val/test tags. ``label`` is the label field the last analysis
    used (else the dataset's default).

    Raises:
        FinderInputError: ``split_field`` does not exist.
    """
    label_field = label_field or curation_info(dataset).get("analysis", {}).get("label_field") or default_label_field(dataset)
    ids, paths = dataset.values(["id", "filepath"])
    table = pd.DataFrame({"id": ids, "filepath": paths})
    splits = split_values(dataset, ids, split_field)
    table["split"] = splits if splits is not None else None
    table["label"] = dataset.values(f"{label_field}.label") if label_field and dataset.has_sample_field(label_field) else None
    for name, column in current_values(dataset, finding_fields()).items():
        table[name] = column
    return table[findings_columns()]


def write_findings_csv(dataset, path, *, split_field: str | None = None) -> int:
    """Write :func:`findings_table` to ``path`` atomically (readers never see half a file;
    a failure leaves none); returns the number of rows.

    Raises:
        CurationInputError: ``path`` is a directory.
        FileNotFoundError: the folder of ``path`` does not exist (it is not created).
    """
    from curation.files import atomic_file

    with atomic_file(Path(path)) as partial:
        table = findings_table(dataset, split_field=split_field)
        table.to_csv(partial, index=False)
    return len(table)


def stored_threshold(dataset, field: str) -> float | None:
    """The calibrated near-duplicate threshold for ``field``, if one was computed."""
    return curation_info(dataset).get("calibration", {}).get(field, {}).get("threshold")


def calibrate_dataset(dataset, *, field: str | None = None, sample_size: int | None = None,
                      target_precision: float = 0.9, device: str = "auto") -> dict:
    """Calibrate the near-duplicate verifier on the dataset's own images again and store it
    (``analyze`` does this by itself the first time); returns the stored record.

    Args:
        sample_size: images that get edited copies, >= 1 (default ``min(200, max(20, N // 10))``;
            200 x 4 copies take one to two minutes on a CPU).
        target_precision: in (0, 1]; the lowest threshold expected to reach it is chosen.

    Raises:
        CurationInputError: ``sample_size`` or ``target_precision`` out of range.
        AnalysisError, ModelUnavailableError, FinderInputError: see :func:`calibrate_verifier_for`.
    """
    if sample_size is not None and (isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer))
                                    or sample_size < 1):
        raise CurationInputError(f"sample_size: expected a whole number >= 1, got {sample_size!r}")
    if not isinstance(target_precision, (int, float)) or not math.isfinite(target_precision) \
            or not 0 < target_precision <= 1:
        raise CurationInputError(f"target_precision: expected a number in (0, 1], got {target_precision!r}")
    context = build_context(dataset, field=field)
    return calibrate_verifier_for(dataset, context, sample_size=sample_size, target_precision=target_precision,
                                  device=device)


def attach_stored_verifier(dataset, context: FinderContext) -> bool:
    """Give ``context`` the image signatures and the stored verifier of its embedding field
    (no calibration; for the pages, which show what ``analyze`` calibrated). True when both
    are there; otherwise ``context.duplicate_verifier_note`` says why not."""
    context.duplicate_verifier = stored_verifier(dataset, context.embedding_field, len(context))
    if context.duplicate_verifier is None:
        context.duplicate_verifier_note = ("not calibrated for this embedding field yet: run `curation analyze` "
                                           "or calibrate on this page")
        return False
    if context.signatures is None:
        context.signatures = _load_signatures(dataset, context)
    context.duplicate_verifier_note = None
    return True
