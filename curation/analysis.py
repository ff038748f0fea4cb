"""Running the finders on a FiftyOne dataset and writing their results back to it.

``analyze`` builds the shared context once (embeddings, labels, splits, one neighbour
graph), runs each requested finder, and stores the per-sample results as sample fields, so
they can be filtered in the FiftyOne App and exported with ``findings_table``. One
finder failing is reported and the others still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from curation.datasets import curation_info, default_label_field, now_iso, update_curation_info
from curation.embeddings import default_embedding_field, load_embeddings
from curation.finders import FINDER_REGISTRY, UnknownFinderError, get_finder
from curation.finders.base import FinderContext, FinderInputError, FinderResult
from curation.projection import ClusterConfig, compute_clusters, normalize_rows
from curation.errors import CurationError

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
DEFAULT_NEIGHBORS = 15

# The public findings contract: one row per sample, these columns, in this order.
FINDINGS_COLUMNS = [
    "id", "filepath", "split", "label", "mislabel_score", "suggested_label", "near_duplicate_group",
    "nearest_neighbor_filepath", "nearest_neighbor_similarity", "leak_filepath", "leak_similarity",
    "outlier_score", "uncertainty_score", "cluster",
]
# Sample fields written by analyze (the findings columns that are not already sample data).
FINDING_FIELDS = FINDINGS_COLUMNS[4:]


class AnalysisError(CurationError, RuntimeError):
    pass


def split_values(dataset, ids: list[str], split_field: str | None = None) -> np.ndarray | None:
    """Split name per sample from ``split_field`` or from train/val/test tags; None if neither exists."""
    view = dataset.select(ids, ordered=True)
    if split_field:
        if not dataset.has_sample_field(split_field):
            raise FinderInputError(f"split field {split_field!r} does not exist on dataset {dataset.name!r}")
        values = view.values(split_field)
        return np.array([None if v is None else str(v) for v in values], dtype=object)
    if dataset.has_sample_field("split"):
        values = view.values("split")
        if any(v is not None for v in values):
            return np.array([None if v is None else SPLIT_NAMES.get(str(v).lower(), str(v)) for v in values], dtype=object)
    splits = []
    for tags in view.values("tags"):
        found = [SPLIT_NAMES[t.lower()] for t in tags or [] if t.lower() in SPLIT_NAMES]
        splits.append(found[0] if found else None)
    return np.array(splits, dtype=object) if any(s is not None for s in splits) else None


def build_context(dataset, *, field: str | None = None, label_field: str | None = None,
                  split_field: str | None = None, k: int = DEFAULT_NEIGHBORS) -> FinderContext:
    """Everything the finders share, with one neighbour graph (disk-cached).

    Raises:
        AnalysisError: the dataset has no embeddings yet.
    """
    from curation.neighbors import cached_neighbors

    field = field or default_embedding_field(dataset)
    if not field:
        raise AnalysisError(f"dataset {dataset.name!r} has no embeddings; run `curation embed --dataset {dataset.name}` first")
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
    return FinderContext(
        ids=np.array(ids, dtype=object), embeddings=embeddings, filepaths=np.array(view.values("filepath"), dtype=object),
        neighbor_indices=graph.indices, neighbor_similarities=graph.similarities, labels=labels,
        splits=split_values(dataset, ids, split_field), model_name=model,
        extras={"embedding_field": field, "label_field": label_field},
    )


@dataclass
class AnalysisReport:
    results: dict[str, FinderResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def run_finders(context: FinderContext, names: list[str] | None = None, *, configs: dict | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> AnalysisReport:
    """Run each finder; a failure is recorded in ``errors`` and the rest still run."""
    names = list(names or FINDER_REGISTRY)
    unknown = [name for name in names if name not in FINDER_REGISTRY]
    if unknown:
        raise UnknownFinderError(f"unknown finder {unknown[0]!r}. Available: {', '.join(FINDER_REGISTRY)}")
    configs = configs or {}
    report = AnalysisReport()
    for position, name in enumerate(names):
        if progress:
            progress(name, position, len(names))
        if name == "leakage" and context.splits is None:
            report.skipped[name] = "no splits (a `split` field or train/val/test tags)"
            continue
        if name == "mislabels" and context.labels is None:
            report.skipped[name] = "no label field"
            continue
        try:
            finder = get_finder(name)
            report.results[name] = finder(context, configs[name]) if name in configs else finder(context)
        except FinderInputError as error:
            report.skipped[name] = str(error)
        except Exception as error:  # one finder failing must not stop the others; the reason is kept
            logger.exception("finder %s failed", name)
            report.errors[name] = f"{type(error).__name__}: {error}"
    if progress:
        progress("done", len(names), len(names))
    return report


def _column(result: FinderResult | None, column: str, ids: np.ndarray):
    if result is None or column not in result.table:
        return [None] * len(ids)
    values = result.table[column].reindex(ids)
    return [None if (isinstance(v, float) and np.isnan(v)) else v for v in values.tolist()]


# Which finder owns which sample field, and the field's type.
_FIELDS_BY_FINDER = {
    "mislabels": {"mislabel_score": "float", "suggested_label": "str", "uncertainty_score": "float",
                  "suggested_confidence": "float", "mislabel_reason": "str", "mislabel_disagreeing_ids": "list",
                  "mislabel_flag": "bool"},
    "duplicates": {"near_duplicate_group": "int", "nearest_neighbor_filepath": "str", "nearest_neighbor_similarity": "float",
                   "duplicate_flag": "bool", "duplicate_keeper": "bool"},
    "leakage": {"leak_filepath": "str", "leak_similarity": "float", "leak_flag": "bool"},
    "outliers": {"outlier_score": "float", "outlier_flag": "bool"},
    "label_next": {"uncertainty_score": "float", "label_next_rank": "int", "label_next_flag": "bool"},
}
# Per finder, the boolean sample field that says "this finder flags the sample" (its ``is_issue``).
FLAG_FIELDS = {"mislabels": "mislabel_flag", "duplicates": "duplicate_flag", "leakage": "leak_flag",
               "outliers": "outlier_flag", "label_next": "label_next_flag"}


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
        else:
            kinds = {"float": fo.FloatField, "int": fo.IntField, "str": fo.StringField, "bool": fo.BooleanField}
            dataset.add_sample_field(name, kinds[kind])


def write_findings(dataset, context: FinderContext, report: AnalysisReport, *, n_clusters: int = 10) -> None:
    """Store the per-sample findings as sample fields (columns of the findings contract).

    Only the fields of finders that ran are rewritten, so running one finder keeps the
    others' earlier results. A finder that ran but does not apply to a sample leaves None.
    """
    ids = context.ids
    row_of = {sample_id: row for row, sample_id in enumerate(ids)}
    results = report.results
    filepath = lambda sample_id: None if sample_id is None else context.filepaths[row_of[sample_id]]  # noqa: E731
    values: dict[str, list] = {}
    if "mislabels" in results:
        values["mislabel_score"] = _column(results["mislabels"], "score", ids)
        values["suggested_label"] = _column(results["mislabels"], "suggested_label", ids)
        values["uncertainty_score"] = _column(results["mislabels"], "uncertainty_score", ids)
        values["suggested_confidence"] = _column(results["mislabels"], "suggested_confidence", ids)
        values["mislabel_reason"] = _column(results["mislabels"], "reason", ids)
        values["mislabel_disagreeing_ids"] = [list(v) if v is not None else None
                                              for v in _column(results["mislabels"], "disagreeing_neighbors", ids)]
    if "duplicates" in results:
        groups = _column(results["duplicates"], "near_duplicate_group", ids)
        values["near_duplicate_group"] = [None if (g is None or g < 0) else int(g) for g in groups]
        values["nearest_neighbor_filepath"] = [filepath(i) for i in _column(results["duplicates"], "nearest_neighbor_id", ids)]
        values["nearest_neighbor_similarity"] = _column(results["duplicates"], "nearest_neighbor_similarity", ids)
    if "leakage" in results:
        values["leak_filepath"] = [filepath(i) for i in _column(results["leakage"], "leak_id", ids)]
        values["leak_similarity"] = _column(results["leakage"], "leak_similarity", ids)
    if "outliers" in results:
        values["outlier_score"] = _column(results["outliers"], "score", ids)
    if "label_next" in results:
        # Defined for unlabelled samples too, where the mislabel finder has nothing to say.
        values["uncertainty_score"] = _column(results["label_next"], "score", ids)
        values["label_next_rank"] = [None if r is None else int(r) for r in _column(results["label_next"], "label_next_rank", ids)]
    for name, result in results.items():
        if name in FLAG_FIELDS:
            values[FLAG_FIELDS[name]] = [bool(v) for v in _column(result, "is_issue", ids)]
    if "duplicates" in results:
        in_group = [g is not None for g in values["near_duplicate_group"]]
        keep = _column(results["duplicates"], "keep", ids)
        values["duplicate_keeper"] = [bool(k) if member else None for k, member in zip(keep, in_group)]
    values["cluster"] = compute_clusters(context.embeddings, ClusterConfig(n_clusters=n_clusters)).tolist()
    kinds = {name: kind for fields in _FIELDS_BY_FINDER.values() for name, kind in fields.items()} | {"cluster": "int"}
    for name, column in values.items():
        _ensure_field(dataset, name, kinds[name])
        cleaned = [v.item() if isinstance(v, np.generic) else v for v in column]
        dataset.set_values(name, dict(zip(ids.tolist(), cleaned)), key_field="id")
    previous = curation_info(dataset).get("analysis", {})
    merged = lambda key, new: {**{k: v for k, v in previous.get(key, {}).items() if k not in report.results  # noqa: E731
                                  and k not in report.errors and k not in report.skipped}, **new}
    update_curation_info(dataset, analysis={
        "updated_at": now_iso(),
        "embedding_field": context.extras.get("embedding_field"),
        "label_field": context.extras.get("label_field"),
        "summaries": merged("summaries", {name: result.summary for name, result in results.items()}),
        "settings": merged("settings", {name: _jsonable(result.info) for name, result in results.items()}),
        "errors": report.errors,
        "skipped": report.skipped,
    })


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


def analyze(dataset, finders: list[str] | None = None, *, field: str | None = None, label_field: str | None = None,
            split_field: str | None = None, configs: dict | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> AnalysisReport:
    """Build the context, run the finders, write the results to the dataset."""
    from curation.finders.duplicates import DEFAULT_THRESHOLD, DuplicateConfig

    context = build_context(dataset, field=field, label_field=label_field, split_field=split_field)
    configs = dict(configs or {})
    threshold = stored_threshold(dataset, context.extras["embedding_field"])
    for name in ("duplicates", "leakage"):
        configs.setdefault(name, DuplicateConfig(threshold=threshold or DEFAULT_THRESHOLD))
    if finders is None or "duplicates" in finders:
        context.extras["pixel_digests"] = ensure_pixel_digests(dataset, list(context.ids))
    report = run_finders(context, finders, configs=configs, progress=progress)
    write_findings(dataset, context, report)
    return report


def findings_table(dataset, label_field: str | None = None) -> pd.DataFrame:
    """One row per sample with the documented findings columns (empty where a finder did not apply)."""
    label_field = label_field or curation_info(dataset).get("analysis", {}).get("label_field") or default_label_field(dataset)
    ids, paths = dataset.values(["id", "filepath"])
    table = pd.DataFrame({"id": ids, "filepath": paths})
    splits = split_values(dataset, ids)
    table["split"] = splits if splits is not None else None
    table["label"] = dataset.values(f"{label_field}.label") if label_field else None
    for name in FINDING_FIELDS:
        table[name] = dataset.values(name) if dataset.has_sample_field(name) else None
    return table[FINDINGS_COLUMNS]


def write_findings_csv(dataset, path) -> int:
    """Write :func:`findings_table` to ``path`` atomically; returns the number of rows."""
    import os
    from pathlib import Path

    path = Path(path)
    table = findings_table(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    table.to_csv(partial, index=False)
    os.replace(partial, path)
    return len(table)


def stored_threshold(dataset, field: str) -> float | None:
    """The calibrated near-duplicate threshold for ``field``, if one was computed."""
    return curation_info(dataset).get("calibration", {}).get(field, {}).get("threshold")


def calibrate_dataset(dataset, *, field: str | None = None, sample_size: int = 100, target_precision: float = 0.95,
                      device: str = "auto"):
    """Calibrate the near-duplicate threshold for the dataset's embeddings and store it."""
    from curation.finders.calibration import calibrate_threshold
    from curation.models import ModelSpec, load_embedder

    context = build_context(dataset, field=field)
    field = context.extras["embedding_field"]
    run = curation_info(dataset).get("embeddings", {}).get(field, {})
    if "model_spec" not in run:
        raise AnalysisError(f"no record of the model behind {field!r}; re-run `curation embed --dataset {dataset.name}`")
    embedder = load_embedder(ModelSpec(**run["model_spec"]), device=device, allow_fallback=False)
    calibration = calibrate_threshold(list(context.filepaths), context.embeddings, context.neighbor_similarities, embedder,
                                      sample_size=sample_size, target_precision=target_precision)
    stored = dict(curation_info(dataset).get("calibration", {}))
    stored[field] = {**calibration.to_dict(), "updated_at": now_iso()}
    update_curation_info(dataset, calibration=stored)
    return calibration
