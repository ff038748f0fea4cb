"""Exporting curated subsets: a view of the dataset, written in the formats training and
labelling tools read, with a provenance manifest that explains every change.

- The view: :class:`ViewSpec` (tags, decisions, classes, scores, ids, splits). Samples
  decided ``remove`` are left out; relabelled samples carry their corrected label (the
  decisions module writes it into the label field and keeps the old one).
- Formats (:data:`EXPORT_FORMATS`): a FiftyOne dataset directory, an image classification
  folder tree, COCO, YOLO, CVAT for images, and a CSV or parquet manifest. FiftyOne's own
  exporters write everything they can; COCO for whole-image classes is ours (FiftyOne's
  COCO exporter takes only detections, polylines and keypoints).
- Safe: class and split names come from data (a CSV, an annotation tool, a user field),
  so they become folder names through :func:`folder_names`, never as they are; the real
  names stay in the labels files and the manifest records the name -> folder mapping.
  Every path written is checked to lie inside the export.
- Atomic: everything is written into a hidden sibling directory
  (:func:`curation.files.atomic_directory`), and moved into place only when complete; an
  existing export is never silently replaced, and leftovers of an export that was killed
  are removed (and reported) by the next one.
- Read-only: source images are only read (copied into the export), and the dataset is
  never written (image sizes come from the image headers, not ``compute_metadata()``).
  Images that are missing or unreadable are left out, counted and named.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import curation
from curation.datasets import curation_info, now_iso
from curation.errors import CurationError, CurationInputError
from curation.files import SafeNames, atomic_directory, clean_stale_partials, ensure_inside, safe_component

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {
    "fiftyone": "FiftyOne dataset directory (every field: labels, findings, decisions, splits)",
    "folders": "image classification folder tree: <split>/<class>/<image>",
    "yolo": "YOLO classification layout (Ultralytics): <split>/<class>/<image>; YOLOv5 txt labels for detections",
    "coco": "COCO JSON per split (data/ + labels.json); a class is a whole-image box",
    "cvat": "CVAT for images 1.1 per split (data/ + labels.xml); a class is an image tag",
    "csv": "CSV manifest (source paths, labels, decisions, findings); embeddings.npy optional",
    "parquet": "parquet manifest; embeddings as a list column optional",
}
MANIFEST_NAME = "provenance.json"
MEDIA_FORMATS = ("fiftyone", "folders", "yolo", "coco", "cvat")  # formats that copy the images
UNLABELLED_REASON = "unlabelled (a folder tree has no place for them)"
UNREADABLE_REASON = "image missing or unreadable"


class ExportError(CurationError, RuntimeError):
    pass


@dataclass(frozen=True)
class ViewSpec:
    """Which samples to export. Empty tuples mean "no restriction".

    ``max_scores``: ``(("mislabel_score", 0.9),)`` leaves out samples scoring at or above
    0.9 (samples without the score stay). ``split_field``: the sample field holding the
    split; when set, the export is laid out per split and samples without a split are
    left out.
    """

    tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    decisions: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    max_scores: tuple[tuple[str, float], ...] = ()
    split_field: str | None = None
    splits: tuple[str, ...] = ()
    exclude_removed: bool = True

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ids"] = len(self.ids)  # the count; the exported ids are in the export itself
        return data


@dataclass
class ExportReport:
    """What :func:`export_dataset` wrote.

    Attributes:
        samples: samples exported (the view less ``left_out``).
        per_split: exported samples per split (``"all"`` without splits).
        left_out: reason -> count of samples the view selected but the export could not hold.
        left_out_samples: ``{"id", "filepath", "reason", "detail"}`` per left-out sample.
        files: files in the export, the manifest included.
        folder_names: ``{"splits": {name: folder}, "classes": {name: folder}}`` for the
            names that became folder names (see :func:`folder_names`).
        removed_leftovers: hidden leftovers of earlier, interrupted exports to the same
            place that this export removed.
        snapshot: the name of the snapshot the export was made from.
    """

    out_dir: Path
    format: str
    samples: int
    per_split: dict[str, int]
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> count
    files: int = 0
    left_out_samples: list[dict] = field(default_factory=list)
    folder_names: dict[str, dict[str, str]] = field(default_factory=dict)
    removed_leftovers: list[Path] = field(default_factory=list)
    snapshot: str | None = None

    def leave_out(self, reason: str, ids, filepaths, details=None) -> None:
        """Record samples the export leaves out, and why."""
        ids, filepaths = list(ids), list(filepaths)
        details = list(details) if details is not None else [None] * len(ids)
        self.left_out[reason] = self.left_out.get(reason, 0) + len(ids)
        self.left_out_samples += [{"id": sample_id, "filepath": path, "reason": reason, "detail": detail}
                                  for sample_id, path, detail in zip(ids, filepaths, details)]

    def left_out_lines(self, examples: int = 5) -> list[str]:
        """One line per reason: ``"3: image missing or unreadable: /a.png (no such file), ..."``."""
        lines = []
        for reason, count in self.left_out.items():
            samples = [s for s in self.left_out_samples if s["reason"] == reason]
            named = [f"{s['filepath']} ({s['detail']})" if s["detail"] else str(s["filepath"])
                     for s in samples[:examples]]
            more = f" and {len(samples) - examples} more (see {MANIFEST_NAME})" if len(samples) > examples else ""
            lines.append(f"{count}: {reason}" + (f": {', '.join(named)}{more}" if named else ""))
        return lines


def build_view(dataset, label_field: str | None, spec: ViewSpec = ViewSpec()):
    """The FiftyOne view that ``spec`` describes.

    Raises:
        ValueError: a field named in the spec does not exist (the message lists what does)
            or holds the wrong kind of values (a score that is not a number, a split that
            is not text), an id that is not a sample id, an unknown decision, or a split
            name that the split field does not hold.
    """
    import fiftyone as fo
    from bson import ObjectId
    from fiftyone import ViewField as F

    from curation.decisions import DECISIONS

    def require(name: str, what: str, kinds: tuple[type, ...] = (), expected: str = "") -> None:
        if not dataset.has_sample_field(name):
            available = ", ".join(sorted(dataset.get_field_schema()))
            raise CurationInputError(f"export: {what} field {name!r} does not exist on dataset {dataset.name!r}. "
                             f"Available fields: {available}")
        if kinds and not isinstance(dataset.get_field(name), kinds):
            raise CurationInputError(f"export: {what} field {name!r} holds {_field_kind(dataset.get_field(name))} "
                                     f"values; expected {expected}")

    not_ids = [sample_id for sample_id in spec.ids if not ObjectId.is_valid(str(sample_id))]
    if not_ids:
        raise CurationInputError(f"export: ids: {len(not_ids)} of {len(spec.ids)} are not sample ids (24 hexadecimal "
                                 f"characters), e.g. {not_ids[0]!r}")
    unknown = [d for d in spec.decisions if d not in (*DECISIONS, "none")]
    if unknown:
        raise CurationInputError(f"export: unknown decision {unknown[0]!r}. Available: {', '.join(DECISIONS)}, none")
    view = dataset.view()
    if spec.ids:
        view = view.select(list(spec.ids), ordered=True)
    if spec.tags:
        view = view.match_tags(list(spec.tags))
    if spec.exclude_tags:
        view = view.match_tags(list(spec.exclude_tags), bool=False)
    if spec.decisions:
        require("decision", "decision")
        wanted = [d for d in spec.decisions if d != "none"]
        condition = F("decision").is_in(wanted)
        if "none" in spec.decisions:
            condition = condition | (F("decision") == None)  # noqa: E711
        view = view.match(condition)
    if spec.exclude_removed and dataset.has_sample_field("decision"):
        view = view.match(F("decision") != "remove")
    if spec.classes:
        if not label_field:
            raise CurationInputError("export: a class filter needs a label field, got none")
        view = view.match(F(f"{label_field}.label").is_in(list(spec.classes)))
    if spec.max_scores:
        from curation.analysis import committed_runs, current_condition, owner_of_field

        runs, owner_of = committed_runs(dataset), owner_of_field()
    for name, limit in spec.max_scores:
        require(name, "score", (fo.FloatField, fo.IntField), "a number per sample, such as mislabel_score")
        if not isinstance(limit, numbers.Real) or isinstance(limit, bool) or not np.isfinite(limit):
            raise CurationInputError(f"export: the cut-off for score field {name!r} must be a finite number, got {limit!r}")
        keep = (F(name) == None) | (F(name) < float(limit))  # noqa: E711
        if name in owner_of:  # a score of an uncommitted analysis run counts as no score
            current = current_condition(owner_of[name], runs)
            if current is not None:
                keep = keep | ~current
        view = view.match(keep)
    if spec.split_field:
        require(spec.split_field, "split", (fo.StringField,), "text (a split name per sample), such as curation_split")
        view = view.exists(spec.split_field).match(F(spec.split_field) != "")
        if spec.splits:
            held = sorted(name for name in dataset.distinct(spec.split_field) if name)
            missing = [name for name in spec.splits if name not in held]
            if missing:
                raise CurationInputError(f"export: splits: no split {missing[0]!r} in field {spec.split_field!r} "
                                         f"(it holds: {', '.join(held) or 'none'})")
            view = view.match(F(spec.split_field).is_in(list(spec.splits)))
    return view


def _field_kind(field) -> str:
    """``"StringField"``, or ``"Detections"`` for an embedded label field."""
    document_type = getattr(field, "document_type", None)
    return document_type.__name__ if document_type is not None else type(field).__name__


def _label_kind(dataset, label_field: str | None) -> str | None:
    import fiftyone as fo

    if not label_field:
        return None
    if not dataset.has_sample_field(label_field):
        raise CurationInputError(f"export: label field {label_field!r} does not exist on dataset {dataset.name!r}")
    document_type = getattr(dataset.get_field(label_field), "document_type", None)
    if document_type is not None and issubclass(document_type, fo.Classification):
        return "classification"
    if document_type is not None and issubclass(document_type, fo.Detections):
        return "detections"
    raise CurationInputError(f"export: label field {label_field!r} holds {_field_kind(dataset.get_field(label_field))}; "
                             "expected a Classification or Detections field")


def _split_views(view, split_field: str | None) -> dict[str, object]:
    """``{split: view}``, or ``{"": view}`` without splits (the export is not laid out per split)."""
    from fiftyone import ViewField as F

    if not split_field:
        return {"": view}
    names = sorted(name for name in view.distinct(split_field) if name)
    return {name: view.match(F(split_field) == name) for name in names}


def folder_names(names, *, reserved: tuple[str, ...] = ()) -> dict[str, str]:
    """``{name: folder}``: distinct names from data (classes, splits) -> distinct safe folder names.

    Names that are already safe keep their own folder (``"a_b"`` stays ``"a_b"`` even beside
    ``"a/b"``, which becomes ``"a_b-2"``); ``reserved`` names (a file beside the folders) are
    never handed out. See :class:`curation.files.SafeNames`.
    """
    names = sorted({str(name) for name in names})
    safe = SafeNames(reserved=reserved)
    ordered = sorted(names, key=lambda name: (safe_component(name) != name, name))
    folders = {name: safe(name) for name in ordered}
    return {name: folders[name] for name in names}


@dataclass
class _Plan:
    """What a writer needs: where to write and which samples go where."""

    target: Path  # the staging directory; every path written must stay inside it
    label_field: str | None
    kind: str | None  # "classification", "detections" or None
    splits: dict[str, object]  # split name ("" without splits) -> view
    split_folders: dict[str, str]  # split name -> folder name
    sizes: dict[str, tuple[int, int]]  # sample id -> upright (width, height), read from the image headers
    report: ExportReport

    def split_dir(self, split: str) -> Path:
        directory = self.target / self.split_folders[split] if split else self.target
        return ensure_inside(self.target, directory)


def _export_fiftyone(plan: _Plan, view) -> None:
    import fiftyone as fo

    view.export(export_dir=str(plan.target), dataset_type=fo.types.FiftyOneDataset, export_media=True, progress=False)


def _export_folders(plan: _Plan, view) -> None:
    """``<split>/<class>/<image>`` with safe folder names (our own writer: FiftyOne's
    ImageClassificationDirectoryTree exporter uses each label as a path as it is)."""
    from fiftyone import ViewField as F

    if plan.kind != "classification":
        raise ExportError("export: a folder tree needs a Classification label field")
    label_path = f"{plan.label_field}.label"
    labelled_view = view.match(F(label_path) != None)  # noqa: E711
    # Without splits the class folders sit beside provenance.json.
    class_folders = folder_names(labelled_view.distinct(label_path),
                                 reserved=() if any(plan.splits) else (MANIFEST_NAME,))
    plan.report.folder_names["classes"] = class_folders
    for split, split_view in plan.splits.items():
        unlabelled = split_view.match(F(label_path) == None)  # noqa: E711
        if len(unlabelled):
            plan.report.leave_out(UNLABELLED_REASON, *unlabelled.values(["id", "filepath"]))
        directory = plan.split_dir(split)
        used: dict[str, set[str]] = {}
        for path, label in zip(*split_view.match(F(label_path) != None).values(["filepath", label_path])):  # noqa: E711
            folder = class_folders[label]
            name = _unique_name(safe_component(Path(path).name), used.setdefault(folder, set()))
            destination = ensure_inside(plan.target, directory / folder / name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)


def _export_yolo(plan: _Plan, view) -> None:
    import fiftyone as fo

    if plan.kind == "classification":
        # Ultralytics' classification layout is the folder tree with train/val/test at the top.
        return _export_folders(plan, view)
    # Every split must share one class list (dataset.yaml), or FiftyOne refuses the second split.
    classes = sorted(name for name in view.distinct(f"{plan.label_field}.detections.label") if name is not None)
    for split, split_view in plan.splits.items():
        folder = plan.split_folders[split] if split else "train"
        ensure_inside(plan.target, plan.target / "images" / folder)
        split_view.export(export_dir=str(plan.target), dataset_type=fo.types.YOLOv5Dataset,
                          label_field=plan.label_field, split=folder, classes=classes, export_media=True,
                          progress=False)


def _export_coco(plan: _Plan, view) -> None:
    import fiftyone as fo

    label_field = plan.label_field
    if plan.kind == "detections":
        for split, split_view in plan.splits.items():
            split_view.export(export_dir=str(plan.split_dir(split)), dataset_type=fo.types.COCODetectionDataset,
                              label_field=label_field, export_media=True, progress=False)
        return
    classes = sorted(c for c in view.distinct(f"{label_field}.label") if c) if label_field else []
    category_id = {name: index + 1 for index, name in enumerate(classes)}
    for split, split_view in plan.splits.items():
        directory = plan.split_dir(split)
        (directory / "data").mkdir(parents=True, exist_ok=True)
        ids, paths = split_view.values(["id", "filepath"])
        labels = split_view.values(f"{label_field}.label") if label_field else [None] * len(paths)
        images, annotations, used = [], [], set()
        for image_id, (sample_id, path, label) in enumerate(zip(ids, paths, labels), start=1):
            width, height = plan.sizes[sample_id]
            name = _unique_name(safe_component(Path(path).name), used)
            shutil.copy2(path, ensure_inside(plan.target, directory / "data" / name))
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            if label:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[label],
                                    "bbox": [0, 0, width, height], "area": width * height, "iscrowd": 0})
        coco = {"info": {"description": f"exported by curation {curation.__version__}", "date_created": now_iso()},
                "licenses": [], "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in category_id.items()],
                "images": images, "annotations": annotations}
        (directory / "labels.json").write_text(json.dumps(coco, indent=1))


def _unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``stem-2.ext``, ... if taken; compared case-insensitively (macOS, Windows)."""
    stem, suffix = os.path.splitext(name)
    candidate, count = name, 1
    while candidate.lower() in used:
        count += 1
        candidate = f"{stem}-{count}{suffix}"
    used.add(candidate.lower())
    return candidate


def _export_cvat(plan: _Plan, view) -> None:
    import fiftyone as fo

    # FiftyOne's CVAT exporter reads each image's size itself when the sample has no
    # metadata; computing it on the samples would write to the dataset being exported.
    for split, split_view in plan.splits.items():
        split_view.export(export_dir=str(plan.split_dir(split)), dataset_type=fo.types.CVATImageDataset,
                          label_field=plan.label_field, export_media=True, progress=False)


def _check_images(view) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str, str]]]:
    """Upright ``(width, height)`` of every readable image by sample id (from the header
    alone; the dataset is not written), and ``(id, filepath, why)`` for the others."""
    from curation.images import image_info

    sizes, problems = {}, []
    for sample_id, path in zip(*view.values(["id", "filepath"])):
        if not path or not os.path.isfile(path):
            problems.append((sample_id, path, "no such file"))
            continue
        size = image_info(path)
        if size is None:
            problems.append((sample_id, path, "not a readable image"))
        else:
            sizes[sample_id] = size
    return sizes, problems


def _manifest_table(view, label_field: str | None, split_field: str | None) -> pd.DataFrame:
    from curation.analysis import current_values, finding_fields

    ids, paths, tags = view.values(["id", "filepath", "tags"])
    table = pd.DataFrame({"id": ids, "filepath": paths})
    table["label"] = view.values(f"{label_field}.label") if label_field else None
    table["split"] = view.values(split_field) if split_field else None
    table["tags"] = [",".join(t or []) for t in tags]
    for name in ("previous_label", "decision", "decision_reason", "decision_source", "decision_at"):
        table[name] = view.values(name) if view.has_sample_field(name) else None
    findings = current_values(view, [name for name in finding_fields() if name not in table])  # committed runs only
    for name, values in findings.items():
        table[name] = values
    return table


def _export_manifest(view, target: Path, label_field, split_field, as_format: str, embeddings_field: str | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    table = _manifest_table(view, label_field, split_field)
    vectors = _embedding_matrix(view, embeddings_field) if embeddings_field else None
    if as_format == "csv":
        table.to_csv(target / "manifest.csv", index=False)
        if vectors is not None:
            np.save(target / "embeddings.npy", vectors)  # row i = manifest row i
    else:
        if vectors is not None:
            table["embedding"] = list(vectors)
        table.to_parquet(target / "manifest.parquet", index=False)


def _embedding_matrix(view, name: str) -> np.ndarray:
    """(N, D) float32, row i = sample i of ``view``; NaN rows where a sample has no vector.

    Raises:
        ValueError: the field does not exist or does not hold equally long vectors of numbers.
    """
    import fiftyone as fo

    if not view.has_sample_field(name):
        raise CurationInputError(f"export: embeddings field {name!r} does not exist")
    if not isinstance(view.get_field(name), (fo.VectorField, fo.ArrayField, fo.ListField)):
        raise CurationInputError(f"export: embeddings field {name!r} holds {_field_kind(view.get_field(name))} values; "
                                 "expected a vector per sample, such as the field `curation embed` writes")
    raw = view.values(name)
    try:
        rows = [None if v is None else np.asarray(v, dtype=np.float32) for v in raw]
    except (TypeError, ValueError) as error:
        raise CurationInputError(f"export: embeddings field {name!r} holds values that are not vectors of numbers "
                                 f"({error})") from None
    shapes = sorted({row.shape for row in rows if row is not None})
    if len(shapes) > 1 or (shapes and len(shapes[0]) != 1):
        raise CurationInputError(f"export: embeddings field {name!r} holds vectors of different shapes "
                                 f"({', '.join(map(str, shapes[:3]))}); expected one length for every sample")
    width = shapes[0][0] if shapes else 0
    matrix = np.full((len(rows), width), np.nan, dtype=np.float32)
    for index, row in enumerate(rows):
        if row is not None:
            matrix[index] = row
    return matrix


_WRITERS: dict[str, Callable] = {"fiftyone": _export_fiftyone, "folders": _export_folders, "yolo": _export_yolo,
                                 "coco": _export_coco, "cvat": _export_cvat}


def provenance(dataset, view, *, label_field: str | None, spec: ViewSpec, export_format: str,
               report: ExportReport | None = None, embeddings_field: str | None = None, snapshot=None,
               dataset_name: str | None = None) -> dict:
    """What an export contains and how it came to be: dataset, the snapshot it was made from
    (a :class:`curation.snapshots.SnapshotRef`), model, finder settings and thresholds,
    splits, and every removed or relabelled sample with when and why."""
    from curation.decisions import decided_samples

    info = curation_info(dataset)
    embedding_runs = info.get("embeddings", {})
    analysis = info.get("analysis", {})
    used_field = embeddings_field or analysis.get("embedding_field")
    changes = []
    base_ids = set(build_view(dataset, label_field, ViewSpec(**{**asdict(spec), "exclude_removed": False,
                                                                 "split_field": None, "splits": ()})).values("id"))
    for record in decided_samples(dataset, label_field, ("remove", "relabel")):
        if record.id not in base_ids:
            continue
        changes.append({"id": record.id, "filepath": record.filepath, "decision": record.decision,
                        "label": record.label, "previous_label": record.previous_label, "at": record.at,
                        "reason": record.reason, "source": record.source, "history": list(record.history)})
    counts = {}
    if label_field:
        split_field = spec.split_field
        table = pd.DataFrame({"label": view.values(f"{label_field}.label"),
                              "split": view.values(split_field) if split_field else "all"})
        counts = {split: {str(k): int(v) for k, v in group["label"].value_counts(dropna=False).items()}
                  for split, group in table.groupby("split")}
    return {
        "tool": f"curation {curation.__version__}",
        "created_at": now_iso(),
        "dataset": dataset_name or dataset.name,
        "snapshot": None if snapshot is None else {
            key: value for key, value in snapshot.to_dict().items() if key in ("name", "created_at", "kind", "note",
                                                                               "reason", "samples", "content_hash")},
        "format": export_format,
        "format_description": EXPORT_FORMATS[export_format],
        "label_field": label_field,
        "view": spec.to_dict(),
        "samples": len(view),
        "per_split": report.per_split if report else None,
        "left_out": report.left_out if report else None,
        "left_out_samples": report.left_out_samples if report else None,
        "folder_names": report.folder_names if report else None,
        "class_counts": counts,
        "embedding": {"field": used_field, **embedding_runs.get(used_field, {})} if used_field else None,
        "finders": {"updated_at": analysis.get("updated_at"), "settings": analysis.get("settings", {}),
                    "summaries": analysis.get("summaries", {}), "errors": analysis.get("errors", {})},
        "calibration": {name: {k: v for k, v in run.items() if k != "curve"}
                        for name, run in info.get("calibration", {}).items()},
        "splits": info.get("splits", {}).get(spec.split_field) if spec.split_field else None,
        "changes": changes,
        "removed": sum(1 for change in changes if change["decision"] == "remove"),
        "relabelled": sum(1 for change in changes if change["decision"] == "relabel"),
    }


def export_dataset(dataset, out_dir, *, format: str, label_field: str | None, spec: ViewSpec = ViewSpec(),
                   embeddings_field: str | None = None, overwrite: bool = False,
                   snapshot: str | None = None) -> ExportReport:
    """Write the view ``spec`` describes to ``out_dir`` in ``format``, with ``provenance.json``.

    Nothing is written outside ``out_dir`` and nothing to ``dataset``. Samples the format
    cannot hold (an image that is missing or unreadable, an unlabelled sample in a folder
    tree) are left out and listed in the report and the manifest. Hidden leftovers of an
    earlier export to ``out_dir`` that was killed are removed (``report.removed_leftovers``).

    The export is made from snapshot ``snapshot`` (its labels, decisions, splits and tags;
    see :func:`curation.snapshots.materialized`) or, by default, from the current state,
    which is recorded as a snapshot first (an existing snapshot with the same content is
    reused). Either way the manifest names the snapshot (``provenance["snapshot"]``).

    Raises:
        ValueError: unknown format (lists the valid ones), missing fields, an empty view, or
            a view whose images are all missing or unreadable (the message names them).
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ExportError: the format cannot hold the labels (e.g. a folder tree without classes).
    """
    if format not in EXPORT_FORMATS:
        raise CurationInputError(f"export: unknown format {format!r}. Available: {', '.join(EXPORT_FORMATS)}")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"export: {out_dir} already exists; choose a new directory or pass overwrite")
    from curation import snapshots

    if snapshot is not None:
        with snapshots.materialized(dataset, snapshot) as (version, ref):
            return _export(version, out_dir, format=format, label_field=label_field, spec=spec,
                           embeddings_field=embeddings_field, overwrite=overwrite, snapshot=ref, dataset_name=dataset.name)
    _label_kind(dataset, label_field)  # a bad label field fails before the snapshot is written
    ref = snapshots.create_snapshot(dataset, kind="export", reason=f"export to {out_dir}", dedupe=True)
    return _export(dataset, out_dir, format=format, label_field=label_field, spec=spec,
                   embeddings_field=embeddings_field, overwrite=overwrite, snapshot=ref, dataset_name=dataset.name)


def _export(dataset, out_dir: Path, *, format: str, label_field: str | None, spec: ViewSpec,
            embeddings_field: str | None, overwrite: bool, snapshot, dataset_name: str) -> ExportReport:
    kind = _label_kind(dataset, label_field)
    if kind is None and format in ("folders", "yolo", "coco", "cvat"):
        raise ExportError(f"export: {format} needs labels, and dataset {dataset_name!r} has no Classification or "
                          "Detections field; export as fiftyone, csv or parquet, or name a label field")
    view = build_view(dataset, label_field, spec)
    if kind == "detections":  # boxes decided "remove" are left out (curation.object_decisions)
        from curation.object_decisions import kept_boxes_view

        view = kept_boxes_view(view, label_field)
    if not len(view):
        raise CurationInputError(f"export: the view selects no samples of dataset {dataset_name!r} (filters: {spec.to_dict()})")
    report = ExportReport(out_dir=out_dir, format=format, samples=len(view), per_split={},
                          snapshot=snapshot.name if snapshot is not None else None)
    sizes: dict[str, tuple[int, int]] = {}
    if format in MEDIA_FORMATS:
        sizes, problems = _check_images(view)
        if len(problems) == len(view):
            named = ", ".join(f"{path} ({why})" for _, path, why in problems[:5])
            raise CurationInputError(f"export: none of the {len(problems)} selected images can be read: {named}"
                                     + (f" and {len(problems) - 5} more" if len(problems) > 5 else ""))
        if problems:
            ids, paths, details = zip(*problems)
            report.leave_out(UNREADABLE_REASON, ids, paths, details)
            view = view.exclude(list(ids))
            logger.info("export: leaving out %d missing or unreadable image(s)", len(problems))
    splits = _split_views(view, spec.split_field)
    split_folders = folder_names([name for name in splits if name], reserved=(MANIFEST_NAME,))
    if spec.split_field and format in MEDIA_FORMATS and format != "fiftyone":
        report.folder_names["splits"] = split_folders
    plan = _Plan(target=out_dir, label_field=label_field, kind=kind, splits=splits, split_folders=split_folders,
                 sizes=sizes, report=report)

    report.removed_leftovers = clean_stale_partials(out_dir, log=False)
    if report.removed_leftovers:
        logger.info("export: removed %d leftover(s) of an interrupted export: %s", len(report.removed_leftovers),
                    ", ".join(str(path) for path in report.removed_leftovers))
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        plan.target = staging
        if format in ("csv", "parquet"):
            _export_manifest(view, staging, label_field, spec.split_field, format, embeddings_field)
        else:
            _WRITERS[format](plan, view)
        left_out_ids = [item["id"] for item in report.left_out_samples]
        exported = view.exclude(left_out_ids) if left_out_ids else view
        report.samples = len(exported)
        report.per_split = {name or "all": len(v) for name, v in _split_views(exported, spec.split_field).items()}
        manifest = provenance(dataset, exported, label_field=label_field, spec=spec, export_format=format,
                              report=report, embeddings_field=embeddings_field, snapshot=snapshot,
                              dataset_name=dataset_name)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
        report.files = sum(1 for path in staging.rglob("*") if path.is_file())
    return report
