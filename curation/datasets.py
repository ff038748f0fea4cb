"""Opening FiftyOne datasets and summarising them for the overview and the CLI."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import curation  # noqa: F401  (sets FiftyOne's environment before it is imported)
from curation.database import check_database
from curation.errors import CurationError, CurationInputError

INFO_KEY = "curation"
DEFAULT_LABEL_FIELD = "ground_truth"


class DatasetNotFoundError(CurationError, LookupError):
    pass


def _fo():
    check_database().raise_if_unusable()
    import fiftyone as fo

    return fo


STAGING_MARKER = ".importing-"  # an import in progress writes to "<name>.importing-<id>" first


def list_dataset_names() -> list[str]:
    """Datasets a user can open (imports still in progress are left out)."""
    return sorted(name for name in _fo().list_datasets() if STAGING_MARKER not in name)


def load_dataset(name: str):
    """Open the FiftyOne dataset ``name``.

    Raises:
        DatasetNotFoundError: no such dataset (the message lists the existing ones).
    """
    fo = _fo()
    if not fo.dataset_exists(name):
        existing = ", ".join(sorted(fo.list_datasets())) or "none yet"
        raise DatasetNotFoundError(f"no FiftyOne dataset named {name!r}. Existing datasets: {existing}")
    dataset = fo.load_dataset(name)
    if _schema_changed_elsewhere(dataset):
        dataset.reload()
    return dataset


def _schema_changed_elsewhere(dataset) -> bool:
    """Whether another process added or deleted sample fields since this one loaded the dataset.

    FiftyOne hands back the same in-memory dataset on every ``load_dataset`` and keeps its
    schema; without this, fields written by ``curation analyze`` in a terminal would stay
    invisible to a running app until it restarts. One small query; reloads only on a change
    (a reload would also reset this process's in-memory samples).
    """
    from fiftyone.core.odm import get_db_conn

    stored = get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"sample_fields.name": 1})
    if stored is None:
        return False
    names = {field["name"] for field in stored.get("sample_fields", []) if not field["name"].startswith("_")}
    return names != set(dataset.get_field_schema())


def curation_info(dataset) -> dict[str, Any]:
    """Our bookkeeping in ``dataset.info['curation']`` (embedding runs, import source)."""
    return dict(dataset.info.get(INFO_KEY, {}))


def update_curation_info(dataset, **updates: Any) -> None:
    """Set keys of the dataset's curation info, keeping the keys other processes wrote
    meanwhile (the info is re-read from the database first, not merged into a stale copy)."""
    dataset._doc.reload("info")
    info = dict(dataset.info)
    ours = dict(info.get(INFO_KEY, {}))
    ours.update(updates)
    info[INFO_KEY] = ours
    dataset.info = info
    dataset.save()


def label_fields(dataset) -> list[str]:
    """Sample fields holding a single classification (``fo.Classification``)."""
    import fiftyone as fo

    schema = dataset.get_field_schema(embedded_doc_type=fo.Classification)
    return sorted(schema)


def default_label_field(dataset) -> str | None:
    fields = label_fields(dataset)
    stored = curation_info(dataset).get("label_field")
    for candidate in (stored, DEFAULT_LABEL_FIELD):
        if candidate in fields:
            return candidate
    return fields[0] if fields else None


def class_counts(dataset, label_field: str) -> dict[str, int]:
    """Samples per class, most common first; unlabelled samples are counted under ``None``."""
    counts = dataset.count_values(f"{label_field}.label")
    return dict(sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))))


@dataclass(frozen=True)
class EmbeddingStatus:
    field: str
    model: str
    requested_model: str
    fallback_reason: str | None
    embedded: int
    failed: int
    total: int
    updated_at: str | None

    @property
    def complete(self) -> bool:
        return self.embedded + self.failed >= self.total


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    sample_count: int
    label_fields: list[str]
    label_field: str | None
    class_counts: dict[str, int]
    embeddings: list[EmbeddingStatus] = field(default_factory=list)
    tags: dict[str, int] = field(default_factory=dict)


def embedding_statuses(dataset) -> list[EmbeddingStatus]:
    """One row per embedding run recorded on the dataset, newest first."""
    runs = curation_info(dataset).get("embeddings", {})
    total = len(dataset)
    statuses = []
    for field_name, run in runs.items():
        if not dataset.has_sample_field(field_name):
            continue
        error_field = f"{field_name}_error"
        failed = dataset.exists(error_field).count() if dataset.has_sample_field(error_field) else 0
        statuses.append(EmbeddingStatus(
            field=field_name,
            model=run.get("model", field_name),
            requested_model=run.get("requested_model", run.get("model", field_name)),
            fallback_reason=run.get("fallback_reason"),
            embedded=dataset.exists(field_name).count(),
            failed=failed,
            total=total,
            updated_at=run.get("updated_at"),
        ))
    return sorted(statuses, key=lambda status: status.updated_at or "", reverse=True)


def listing_from_database(database) -> list[tuple[str, int, list[EmbeddingStatus]]] | None:
    """``(name, sample count, embedding statuses)`` of every dataset, read with pymongo from
    FiftyOne's database ``database`` (a ``pymongo.database.Database``) without importing fiftyone.

    The same figures as ``summarize(load_dataset(name))`` (``len(dataset)``, then
    :func:`embedding_statuses`, whose ``exists`` count is FiftyOne's ``$gt: [field, null]``),
    for ``curation datasets``, which otherwise pays 2-3 s for importing fiftyone. Returns None
    (the caller then uses fiftyone) where FiftyOne would do more than read: a database or a
    dataset of another FiftyOne version (opening it migrates it), a grouped dataset (its
    length counts one slice), a dotted embedding field name.
    """
    from importlib.metadata import version

    installed = version("fiftyone")
    configs = list(database.config.find({}, {"version": 1, "type": 1}).limit(2))
    if len(configs) != 1 or configs[0].get("version") != installed or configs[0].get("type", "fiftyone") != "fiftyone":
        return None
    query = {"sample_collection_name": {"$regex": "^samples\\."}}  # FiftyOne's list_datasets(): public datasets
    projection = {"name": 1, "version": 1, "media_type": 1, "group_field": 1, "sample_collection_name": 1,
                  "sample_fields.name": 1, "info": 1}
    rows = []
    for document in database.datasets.find(query, projection):
        name = document.get("name")
        if name is None or STAGING_MARKER in name:
            continue
        if document.get("version") != installed or document.get("media_type") == "group" or document.get("group_field"):
            return None
        samples = database[document["sample_collection_name"]]
        total = samples.count_documents({})
        fields = {field["name"] for field in document.get("sample_fields", [])}
        runs = (document.get("info") or {}).get(INFO_KEY, {}).get("embeddings", {})
        if any("." in field_name for field_name in runs):
            return None

        def count_existing(field_name: str) -> int:
            return samples.count_documents({"$expr": {"$gt": [f"${field_name}", None]}})

        statuses = []
        for field_name, run in runs.items():
            if field_name not in fields:
                continue
            error_field = f"{field_name}_error"
            statuses.append(EmbeddingStatus(
                field=field_name,
                model=run.get("model", field_name),
                requested_model=run.get("requested_model", run.get("model", field_name)),
                fallback_reason=run.get("fallback_reason"),
                embedded=count_existing(field_name),
                failed=count_existing(error_field) if error_field in fields else 0,
                total=total,
                updated_at=run.get("updated_at"),
            ))
        rows.append((name, total, sorted(statuses, key=lambda status: status.updated_at or "", reverse=True)))
    return sorted(rows, key=lambda row: row[0])


def summarize(dataset, label_field: str | None = None) -> DatasetSummary:
    label_field = label_field or default_label_field(dataset)
    return DatasetSummary(
        name=dataset.name,
        sample_count=len(dataset),
        label_fields=label_fields(dataset),
        label_field=label_field,
        class_counts=class_counts(dataset, label_field) if label_field else {},
        embeddings=embedding_statuses(dataset),
        tags=dict(sorted(dataset.count_sample_tags().items())),
    )


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def tag_samples(dataset, sample_ids: list[str], tag: str) -> int:
    """Add ``tag`` to the given samples (persisted in the dataset). Returns how many were tagged."""
    tag = tag.strip()
    if not tag:
        raise CurationInputError("tag: expected a non-empty string, got an empty one")
    from curation.snapshots import snapshot_before

    view = dataset.select(sample_ids)
    snapshot_before(dataset, f"tagging {len(sample_ids)} samples {tag!r}", len(sample_ids))
    view.tag_samples(tag)
    return len(view)


def untag_samples(dataset, sample_ids: list[str], tag: str) -> int:
    from curation.snapshots import snapshot_before

    view = dataset.select(sample_ids)
    snapshot_before(dataset, f"removing the tag {tag!r} from {len(sample_ids)} samples", len(sample_ids))
    view.untag_samples(tag)
    return len(view)
