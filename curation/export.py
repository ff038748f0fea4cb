"""Exporting curated subsets: a view of the dataset, written in the formats training and
labelling tools read, with a provenance manifest that explains every change.

- The view: :class:`ViewSpec` (tags, decisions, classes, scores, ids, splits). Samples
  decided ``remove`` are left out; relabelled samples carry their corrected label (the
  decisions module writes it into the label field and keeps the old one).
- Formats (:data:`EXPORT_FORMATS`): a FiftyOne dataset directory, an image classification
  folder tree, COCO, YOLO, CVAT for images, and a CSV or parquet manifest. FiftyOne's own
  exporters write everything they can; COCO for whole-image classes is ours (FiftyOne's
  COCO exporter takes only detections, polylines and keypoints).
- Atomic: everything is written into a hidden sibling directory, and moved into place
  only when complete; an existing export is never silently replaced.
- Source images are only read (copied into the export), never modified.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import curation
from curation.datasets import curation_info, now_iso
from curation.errors import CurationError, CurationInputError

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
PARTIAL_MARKER = ".partial-"


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
    out_dir: Path
    format: str
    samples: int
    per_split: dict[str, int]
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> count
    files: int = 0


def build_view(dataset, label_field: str | None, spec: ViewSpec = ViewSpec()):
    """The FiftyOne view that ``spec`` describes.

    Raises:
        ValueError: a field named in the spec does not exist (the message lists what does).
    """
    from fiftyone import ViewField as F

    def require(name: str, what: str) -> None:
        if not dataset.has_sample_field(name):
            available = ", ".join(sorted(dataset.get_field_schema()))
            raise CurationInputError(f"export: {what} field {name!r} does not exist on dataset {dataset.name!r}. "
                             f"Available fields: {available}")

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
    for name, limit in spec.max_scores:
        require(name, "score")
        view = view.match((F(name) == None) | (F(name) < float(limit)))  # noqa: E711
    if spec.split_field:
        require(spec.split_field, "split")
        view = view.exists(spec.split_field)
        if spec.splits:
            view = view.match(F(spec.split_field).is_in(list(spec.splits)))
    return view


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
    name = getattr(document_type, "__name__", type(dataset.get_field(label_field)).__name__)
    raise CurationInputError(f"export: label field {label_field!r} holds {name}; expected a Classification or Detections field")


def _split_views(view, split_field: str | None) -> dict[str, object]:
    """``{split: view}``, or ``{"": view}`` without splits (the export is not laid out per split)."""
    from fiftyone import ViewField as F

    if not split_field:
        return {"": view}
    names = sorted(name for name in view.distinct(split_field) if name)
    return {name: view.match(F(split_field) == name) for name in names}


def _export_fiftyone(view, target: Path, label_field, kind, split_field, report: ExportReport) -> None:
    import fiftyone as fo

    view.export(export_dir=str(target), dataset_type=fo.types.FiftyOneDataset, export_media=True, progress=False)


def _export_folders(view, target: Path, label_field, kind, split_field, report: ExportReport) -> None:
    import fiftyone as fo
    from fiftyone import ViewField as F

    if kind != "classification":
        raise ExportError("a folder tree needs a Classification label field")
    for split, split_view in _split_views(view, split_field).items():
        labelled = split_view.match(F(f"{label_field}.label") != None)  # noqa: E711
        unlabelled = len(split_view) - len(labelled)
        if unlabelled:
            reason = "unlabelled (a folder tree has no place for them)"
            report.left_out[reason] = report.left_out.get(reason, 0) + unlabelled
        if len(labelled):
            labelled.export(export_dir=str(target / split), dataset_type=fo.types.ImageClassificationDirectoryTree,
                            label_field=label_field, export_media=True, progress=False)


def _export_yolo(view, target: Path, label_field, kind, split_field, report: ExportReport) -> None:
    import fiftyone as fo

    if kind == "classification":
        # Ultralytics' classification layout is the folder tree with train/val/test at the top.
        return _export_folders(view, target, label_field, kind, split_field or None, report)
    for split, split_view in _split_views(view, split_field).items():
        split_view.export(export_dir=str(target), dataset_type=fo.types.YOLOv5Dataset, label_field=label_field,
                          split=split or "train", export_media=True, progress=False)


def _image_sizes(view) -> tuple[list[int], list[int]]:
    view.compute_metadata()  # reads image headers; the images themselves are untouched
    return view.values("metadata.width"), view.values("metadata.height")


def _export_coco(view, target: Path, label_field, kind, split_field, report: ExportReport) -> None:
    import fiftyone as fo

    if kind == "detections":
        for split, split_view in _split_views(view, split_field).items():
            split_view.export(export_dir=str(target / split), dataset_type=fo.types.COCODetectionDataset,
                              label_field=label_field, export_media=True, progress=False)
        return
    classes = sorted(c for c in view.distinct(f"{label_field}.label") if c) if label_field else []
    category_id = {name: index + 1 for index, name in enumerate(classes)}
    for split, split_view in _split_views(view, split_field).items():
        directory = target / split
        (directory / "data").mkdir(parents=True, exist_ok=True)
        paths = split_view.values("filepath")
        labels = split_view.values(f"{label_field}.label") if label_field else [None] * len(paths)
        widths, heights = _image_sizes(split_view)
        images, annotations, used = [], [], set()
        for image_id, (path, label, width, height) in enumerate(zip(paths, labels, widths, heights), start=1):
            name = _unique_name(Path(path).name, used)
            shutil.copy2(path, directory / "data" / name)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            if label:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[label],
                                    "bbox": [0, 0, width, height], "area": width * height, "iscrowd": 0})
        coco = {"info": {"description": f"exported by curation {curation.__version__}", "date_created": now_iso()},
                "licenses": [], "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in category_id.items()],
                "images": images, "annotations": annotations}
        (directory / "labels.json").write_text(json.dumps(coco, indent=1))


def _unique_name(name: str, used: set[str]) -> str:
    stem, suffix = os.path.splitext(name)
    candidate, count = name, 1
    while candidate in used:
        count += 1
        candidate = f"{stem}-{count}{suffix}"
    used.add(candidate)
    return candidate


def _export_cvat(view, target: Path, label_field, kind, split_field, report: ExportReport) -> None:
    import fiftyone as fo

    for split, split_view in _split_views(view, split_field).items():
        split_view.compute_metadata()
        split_view.export(export_dir=str(target / split), dataset_type=fo.types.CVATImageDataset,
                           label_field=label_field, export_media=True, progress=False)


def _manifest_table(view, label_field: str | None, split_field: str | None) -> pd.DataFrame:
    from curation.analysis import FINDING_FIELDS

    ids, paths, tags = view.values(["id", "filepath", "tags"])
    table = pd.DataFrame({"id": ids, "filepath": paths})
    table["label"] = view.values(f"{label_field}.label") if label_field else None
    table["split"] = view.values(split_field) if split_field else None
    table["tags"] = [",".join(t or []) for t in tags]
    for name in ("previous_label", "decision", "decision_reason", "decision_source", "decision_at", *FINDING_FIELDS):
        if name in table:
            continue
        table[name] = view.values(name) if view.has_sample_field(name) else None
    return table


def _export_manifest(view, target: Path, label_field, split_field, as_format: str, embeddings_field: str | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    table = _manifest_table(view, label_field, split_field)
    vectors = None
    if embeddings_field:
        if not view.has_sample_field(embeddings_field):
            raise CurationInputError(f"export: embeddings field {embeddings_field!r} does not exist")
        raw = view.values(embeddings_field)
        width = next((len(v) for v in raw if v is not None), 0)
        vectors = np.array([np.asarray(v, dtype=np.float32) if v is not None else np.full(width, np.nan, np.float32)
                            for v in raw], dtype=np.float32).reshape(len(raw), width)
    if as_format == "csv":
        table.to_csv(target / "manifest.csv", index=False)
        if vectors is not None:
            np.save(target / "embeddings.npy", vectors)  # row i = manifest row i
    else:
        if vectors is not None:
            table["embedding"] = list(vectors)
        table.to_parquet(target / "manifest.parquet", index=False)


_WRITERS: dict[str, Callable] = {"fiftyone": _export_fiftyone, "folders": _export_folders, "yolo": _export_yolo,
                                 "coco": _export_coco, "cvat": _export_cvat}


def provenance(dataset, view, *, label_field: str | None, spec: ViewSpec, export_format: str,
               report: ExportReport | None = None, embeddings_field: str | None = None) -> dict:
    """What an export contains and how it came to be: dataset, model, finder settings and
    thresholds, splits, and every removed or relabelled sample with when and why."""
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
        "dataset": dataset.name,
        "format": export_format,
        "format_description": EXPORT_FORMATS[export_format],
        "label_field": label_field,
        "view": spec.to_dict(),
        "samples": len(view),
        "per_split": report.per_split if report else None,
        "left_out": report.left_out if report else None,
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
                   embeddings_field: str | None = None, overwrite: bool = False) -> ExportReport:
    """Write the view ``spec`` describes to ``out_dir`` in ``format``, with ``provenance.json``.

    Raises:
        ValueError: unknown format (lists the valid ones), missing fields, an empty view.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ExportError: the format cannot hold the labels (e.g. a folder tree without classes).
    """
    if format not in EXPORT_FORMATS:
        raise CurationInputError(f"export: unknown format {format!r}. Available: {', '.join(EXPORT_FORMATS)}")
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"export: {out_dir} already exists; choose a new directory or pass overwrite")
    kind = _label_kind(dataset, label_field)
    if kind is None and format in ("folders", "yolo", "coco", "cvat"):
        raise ExportError(f"export: {format} needs labels, and dataset {dataset.name!r} has no Classification or "
                          "Detections field; export as fiftyone, csv or parquet, or name a label field")
    view = build_view(dataset, label_field, spec)
    if not len(view):
        raise CurationInputError(f"export: the view selects no samples of dataset {dataset.name!r} (filters: {spec.to_dict()})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.with_name(f".{out_dir.name}{PARTIAL_MARKER}{uuid.uuid4().hex[:8]}")
    report = ExportReport(out_dir=out_dir, format=format, samples=len(view),
                          per_split={name or "all": len(v) for name, v in _split_views(view, spec.split_field).items()})
    try:
        if format in ("csv", "parquet"):
            _export_manifest(view, partial, label_field, spec.split_field, format, embeddings_field)
        else:
            _WRITERS[format](view, partial, label_field, kind, spec.split_field, report)
        partial.mkdir(parents=True, exist_ok=True)
        exported = report.samples - sum(report.left_out.values())
        report.samples = exported
        manifest = provenance(dataset, view, label_field=label_field, spec=spec, export_format=format, report=report,
                              embeddings_field=embeddings_field)
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str))
        report.files = sum(1 for p in partial.rglob("*") if p.is_file())
        _move_into_place(partial, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return report


def _move_into_place(partial: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        try:
            os.rename(partial, out_dir)  # fails if something appeared at out_dir meanwhile
            return
        except OSError:
            if not out_dir.exists():
                raise
    if not overwrite:
        raise FileExistsError(f"export: {out_dir} appeared while exporting; the new export was not moved there")
    retired = out_dir.with_name(f".{out_dir.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, retired)
    os.rename(partial, out_dir)
    try:
        shutil.rmtree(retired)
    except OSError as error:
        logger.warning("the replaced export was moved to %s but could not be deleted: %s", retired, error)
