"""Importing data from disk into persistent FiftyOne datasets.

Formats (``--format``): ``auto`` (default: detected from the files), ``classes`` (one folder
per class), ``images`` (unlabelled image folder, searched recursively), ``coco``,
``yolo`` (YOLOv5 layout with ``dataset.yaml``; every split it names is imported and
tagged), ``yolov4``, ``cvat`` (FiftyOne's ``labels.xml`` + ``data/`` or CVAT's own
``annotations.xml`` + ``images/``), ``fiftyone`` (a FiftyOne dataset directory) and ``csv``
(a filepath column and a label column). The detection formats use FiftyOne's own importers.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import curation  # noqa: F401
from curation.datasets import DEFAULT_LABEL_FIELD, STAGING_MARKER, _fo, now_iso, update_curation_info
from curation.errors import CurationError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FORMATS = ("auto", "classes", "images", "coco", "yolo", "yolov4", "cvat", "fiftyone", "csv")
DEMO_DATASET = "fashion-mnist-demo"
DEMO_SOURCE = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"


class DatasetImportError(CurationError, ValueError):
    """The source cannot be imported as asked; the message names the file or field."""


@dataclass
class ImportReport:
    name: str
    format: str
    source: str
    samples: int
    label_field: str | None
    warnings: list[str] = field(default_factory=list)
    # Every label field the import created. COCO and CVAT files can hold several label
    # types; FiftyOne then stores one field per type (``<label_field>_detections``, ...).
    label_fields: list[str] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def detect_format(source: str | os.PathLike) -> str:
    """Guess the format of ``source`` from the files it holds.

    Raises:
        DatasetImportError: the path does not exist or holds nothing importable.
    """
    source = Path(source)
    if not source.exists():
        raise DatasetImportError(f"{source}: no such file or directory")
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "csv"
        raise DatasetImportError(f"{source}: expected a directory or a .csv file, got a {source.suffix or 'extension-less'} file")
    names = {path.name for path in source.iterdir()}
    if "samples.json" in names and "metadata.json" in names:
        return "fiftyone"
    if "dataset.yaml" in names:
        return "yolo"
    if "obj.names" in names:
        return "yolov4"
    if "labels.json" in names or any(name.endswith(".json") and "instances" in name for name in names):
        return "coco"
    if "labels.xml" in names or "annotations.xml" in names:
        return "cvat"
    subfolders = [path for path in source.iterdir() if path.is_dir() and not path.name.startswith(".")]
    top_images = [path for path in source.iterdir() if path.is_file() and _is_image(path)]
    if subfolders and not top_images and any(any(_is_image(p) for p in folder.iterdir()) for folder in subfolders):
        return "classes"
    if top_images or any(_is_image(path) for path in source.rglob("*")):
        return "images"
    raise DatasetImportError(f"{source}: found no images and no known annotation files (labels.json, dataset.yaml, annotations.xml, samples.json)")


def _from_csv(fo, source: Path, name: str, label_field: str, filepath_column: str, label_column: str, report: ImportReport):
    import pandas as pd

    try:
        # As text: a numeric label column with a gap would otherwise become floats ("3.0").
        table = pd.read_csv(source, dtype=str)
    except Exception as error:
        raise DatasetImportError(f"{source}: cannot read as CSV: {error}") from error
    for column, what in ((filepath_column, "image paths"), (label_column, "labels")):
        if column not in table.columns and not (column == label_column and label_column == ""):
            raise DatasetImportError(
                f"{source}: expected a column {column!r} with {what}; the columns are {', '.join(map(str, table.columns))}"
            )
    samples, missing = [], []
    # Positional access: itertuples renames columns that are keywords or start with "_".
    path_index = table.columns.get_loc(filepath_column)
    label_index = table.columns.get_loc(label_column) if label_column in table.columns else None
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        raw_path = row[path_index]
        if not isinstance(raw_path, str) or not raw_path.strip():
            report.warnings.append(f"{source}:{row_number}: empty {filepath_column!r}; row skipped")
            continue
        path = Path(raw_path.strip()).expanduser()
        path = path if path.is_absolute() else (source.parent / path)
        if not path.exists():
            missing.append(path.name)
        sample = fo.Sample(filepath=str(path.resolve()))
        label = row[label_index] if label_index is not None else None
        if isinstance(label, str) and label.strip():  # NaN or blank = unlabelled
            sample[label_field] = fo.Classification(label=label.strip())
        samples.append(sample)
    if missing:
        examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        report.warnings.append(
            f"{len(missing)} file(s) listed in {source.name} do not exist ({examples}); "
            "they are kept and will be reported when embedding"
        )
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples(samples)
    return dataset


UNLABELLED_FOLDER = "_unlabeled"  # FiftyOne's name for the class folder of unlabelled images


def _from_class_tree(fo, source: Path, name: str, label_field: str, report: ImportReport):
    """One folder per class, images at any depth below it.

    Written here rather than with FiftyOne's tree importer, which takes every file and stops
    at the first ``notes.txt`` or ``Thumbs.db`` with a media-type error.
    """
    samples, skipped, classes = [], [], set()
    for class_dir in sorted(path for path in source.iterdir() if path.is_dir() and not path.name.startswith(".")):
        label = None if class_dir.name == UNLABELLED_FOLDER else class_dir.name
        for path in sorted(class_dir.rglob("*")):
            relative = path.relative_to(class_dir)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            if not _is_image(path):
                skipped.append(str(path.relative_to(source)))
                continue
            sample = fo.Sample(filepath=str(path))
            if label is not None:
                sample[label_field] = fo.Classification(label=label)
                classes.add(label)
            samples.append(sample)
    if skipped:
        examples = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        report.warnings.append(f"skipped {len(skipped)} file(s) without an image extension ({examples})")
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples(samples)
    dataset.default_classes = sorted(classes)
    return dataset


def _first_existing(source: Path, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if (source / name).exists()), None)


def _importer_kwargs(chosen: str, source: Path, label_field: str) -> dict:
    """Arguments for FiftyOne's importer so every layout :func:`detect_format` accepts loads."""
    if chosen == "fiftyone":
        return {}
    kwargs: dict = {"label_field": label_field}
    if chosen == "coco" and not (source / "labels.json").exists():
        candidates = sorted(path.name for path in source.glob("*.json") if "instances" in path.name)
        if candidates:
            kwargs["labels_path"] = candidates[0]
    if chosen == "cvat":
        # CVAT's own "CVAT for images" export is annotations.xml plus images/.
        kwargs["labels_path"] = _first_existing(source, ("labels.xml", "annotations.xml")) or "labels.xml"
        kwargs["data_path"] = _first_existing(source, ("data", "images")) or "data"
    if chosen in ("yolo", "yolov4"):
        kwargs["include_all_data"] = True  # images without a label file are background, not noise
    return kwargs


def _yolo_splits(source: Path) -> list[str]:
    """The splits ``dataset.yaml`` names, each folder or list once (train and val often coincide)."""
    import yaml

    try:
        config = yaml.safe_load((source / "dataset.yaml").read_text()) or {}
    except Exception as error:
        raise DatasetImportError(f"{source / 'dataset.yaml'}: cannot read as YAML: {error}") from error
    splits, seen = [], []
    for split in ("train", "val", "test"):
        value = config.get(split) if isinstance(config, dict) else None
        if value and value not in seen:
            splits.append(split)
            seen.append(value)
    if not splits:
        keys = ", ".join(map(str, config)) if isinstance(config, dict) else type(config).__name__
        raise DatasetImportError(f"{source / 'dataset.yaml'}: expected a 'train', 'val' or 'test' entry; found {keys}")
    return splits


def _import_into(fo, chosen: str, source: Path, name: str, label_field: str, report: ImportReport,
                 csv_filepath_column: str, csv_label_column: str):
    types = fo.types
    fo_types = {
        "coco": types.COCODetectionDataset,
        "yolo": types.YOLOv5Dataset,
        "yolov4": types.YOLOv4Dataset,
        "cvat": types.CVATImageDataset,
        "fiftyone": types.FiftyOneDataset,
    }
    if chosen == "csv":
        return _from_csv(fo, source, name, label_field, csv_filepath_column, csv_label_column, report)
    if chosen == "classes":
        return _from_class_tree(fo, source, name, label_field, report)
    if chosen == "images":
        return fo.Dataset.from_dir(dataset_dir=str(source), dataset_type=types.ImageDirectory,
                                   name=name, persistent=True, recursive=True)
    kwargs = _importer_kwargs(chosen, source, label_field)
    if chosen == "yolo":
        # FiftyOne's YOLOv5 importer reads one split (default "val"); a dataset has them all.
        dataset = fo.Dataset(name, persistent=True)
        for split in _yolo_splits(source):
            dataset.add_dir(dataset_dir=str(source), dataset_type=fo_types[chosen], split=split, tags=[split], **kwargs)
        return dataset
    return fo.Dataset.from_dir(dataset_dir=str(source), dataset_type=fo_types[chosen], name=name, persistent=True, **kwargs)


def import_dataset(
    source: str | os.PathLike,
    name: str,
    *,
    format: str = "auto",
    label_field: str = DEFAULT_LABEL_FIELD,
    overwrite: bool = False,
    csv_filepath_column: str = "filepath",
    csv_label_column: str = "label",
) -> ImportReport:
    """Import ``source`` into a new persistent FiftyOne dataset called ``name``.

    The import is written under a temporary name and renamed when it succeeds, so a failed
    import with ``overwrite=True`` leaves the existing dataset as it was.

    Args:
        source: a folder, or a ``.csv`` file for the ``csv`` format.
        name: the FiftyOne dataset to create.
        format: one of ``FORMATS``; ``auto`` detects it with :func:`detect_format`.
        label_field: the sample field for the labels (``fo.Classification`` for ``classes``
            and ``csv``). Formats with several label types get ``<label_field>_<type>``
            fields; ``ImportReport.label_fields`` lists them.
        overwrite: replace an existing dataset called ``name``.
        csv_filepath_column: CSV column with image paths (relative ones are resolved against
            the CSV's folder).
        csv_label_column: CSV column with class names; ``""`` for an unlabelled CSV.

    Raises:
        DatasetImportError: unknown format, unreadable source, or a dataset of that name exists
            and ``overwrite`` is False.
    """
    fo = _fo()
    source = Path(source).expanduser().resolve()
    if format not in FORMATS:
        raise DatasetImportError(f"unknown format {format!r}. Available: {', '.join(FORMATS)}")
    if not source.exists():
        raise DatasetImportError(f"{source}: no such file or directory")
    chosen = detect_format(source) if format == "auto" else format
    if fo.dataset_exists(name) and not overwrite:
        raise DatasetImportError(f"a dataset named {name!r} already exists; choose another --name or pass --overwrite")
    report = ImportReport(name=name, format=chosen, source=str(source), samples=0, label_field=label_field)
    staging = f"{name}{STAGING_MARKER}{uuid.uuid4().hex[:8]}"
    try:
        dataset = _import_into(fo, chosen, source, staging, label_field, report, csv_filepath_column, csv_label_column)
    except BaseException as error:  # Ctrl-C too: never leave a half-imported staging dataset
        if fo.dataset_exists(staging):
            fo.delete_dataset(staging)
        if isinstance(error, DatasetImportError) or not isinstance(error, Exception):
            raise
        raise DatasetImportError(f"{source}: could not import as {chosen!r}: {type(error).__name__}: {error}") from error
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset.name = name
    dataset.persistent = True
    report.samples = len(dataset)
    report.label_fields = _created_label_fields(dataset, label_field) if chosen != "fiftyone" else _all_label_fields(fo, dataset)
    if chosen in ("images", "fiftyone"):
        report.label_field = None
    elif not dataset.has_sample_field(label_field):
        report.label_field = report.label_fields[0] if report.label_fields else None
    updates = {"source": {"path": str(source), "format": chosen, "imported_at": now_iso()}}
    if report.label_field and dataset.has_sample_field(report.label_field):
        updates["label_field"] = report.label_field
    update_curation_info(dataset, **updates)
    if report.samples == 0:
        report.warnings.append(f"{source}: no samples were found")
    return report


def _all_label_fields(fo, dataset) -> list[str]:
    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Label))


def _created_label_fields(dataset, label_field: str) -> list[str]:
    # A fresh dataset: the only label fields are the ones the importer made from label_field.
    return sorted(name for name in dataset.get_field_schema() if name == label_field or name.startswith(f"{label_field}_"))


def ensure_demo_dataset(name: str = DEMO_DATASET):
    """The bundled demo dataset, imported from ``data/`` on first use."""
    fo = _fo()
    if not fo.dataset_exists(name):
        import_dataset(DEMO_SOURCE, name, format="classes")
    return fo.load_dataset(name)
