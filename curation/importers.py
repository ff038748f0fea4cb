"""Importing data from disk into persistent FiftyOne datasets.

Formats (``--format``): ``auto`` (default: detected from the files), ``classes`` (one folder
per class), ``images`` (unlabelled image folder, searched recursively), ``coco``,
``yolo`` (YOLOv5 layout with ``dataset.yaml``; every split it names is imported and
tagged), ``yolov4``, ``cvat`` (FiftyOne's ``labels.xml`` + ``data/`` or CVAT's own
``annotations.xml`` + ``images/``), ``fiftyone`` (a FiftyOne dataset directory) and ``csv``
(a filepath column and a label column). The detection formats use FiftyOne's own importers.

Hostile input is imported as far as it can be, and everything left out is said: the folder
formats (``classes``, ``images``) never open a file while importing and skip, each with its
reason, broken or looping symbolic links, named pipes and other non-files, and names that
are not UTF-8 (FiftyOne cannot store them); the ``csv`` format skips rows with the wrong
number of fields, unusable paths or text that is not UTF-8, naming the line, and keeps one
row per file. Files that lie outside the source folder (CSV paths with ``..``, absolute or
``~`` paths, symbolic links) are imported but listed in a warning and in the dataset's
import record (``curation_info(dataset)["source"]``), because an export copies them.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import curation  # noqa: F401
from curation.datasets import DEFAULT_LABEL_FIELD, STAGING_MARKER, _fo, now_iso, update_curation_info
from curation.errors import CurationError
from curation.images import file_kind, not_a_regular_file

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FORMATS = ("auto", "classes", "images", "coco", "yolo", "yolov4", "cvat", "fiftyone", "csv")
DEMO_DATASET = "fashion-mnist-demo"
DEMO_SOURCE = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"
CSV_DELIMITERS = (",", ";", "\t", "|")  # tried in this order against the header row
MAX_NAMED = 20  # skipped files or rows named one warning each; the rest are counted
MAX_EXAMPLES = 3  # examples in a warning that summarises many files
MAX_RECORDED = 1000  # entries of each list kept in the dataset's import record


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
    # What was left out and why: (file relative to the source, or "file.csv:LINE", reason).
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Imported files that lie outside the source folder (resolved paths); exports copy them.
    outside_source: list[str] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _shown(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 appear as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _clipped(text: str, limit: int = 80) -> str:
    """``text`` for a message: non-printable characters escaped, at most ``limit`` characters."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in _shown(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_utf8(text: str) -> bool:
    """Whether ``text`` (a name read from disk or a CSV) can be stored: no undecodable bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _examples(items: list[str]) -> str:
    return ", ".join(items[:MAX_EXAMPLES]) + (", ..." if len(items) > MAX_EXAMPLES else "")


def _unusable_file(path: Path) -> str | None:
    """Why ``path`` cannot be imported as an image file, found without opening it; None if it can."""
    try:
        status = path.stat()  # follows symbolic links
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if path.is_symlink() else "file not found"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot read: {error.strerror or error}"
    return not_a_regular_file(status.st_mode)


def _scan_folder(folder: Path, source: Path, report: ImportReport, non_images: list[str]) -> list[tuple[Path, Path]]:
    """Image files at any depth below ``folder``, sorted, each with its real (resolved) path.

    Names starting with "." are left out. Never opens a file and never follows a link to a
    folder. Files that cannot be imported go to ``report.skipped`` with the reason; names
    without an image extension go to ``non_images`` (relative to ``source``, printable).
    """
    found = []
    real_folder = folder.resolve()
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            reason = f"cannot list folder: {error.strerror or error}"
            report.skipped.append((_shown(current.relative_to(source)), reason))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            shown = _shown(path.relative_to(source))
            if entry.is_dir(follow_symlinks=False):
                if not _is_utf8(entry.name):
                    report.skipped.append((shown, "folder name is not valid UTF-8, which FiftyOne cannot store "
                                                  "(rename it); nothing in it was imported"))
                else:
                    pending.append(path)
                continue
            if entry.is_symlink() and path.is_dir():  # False for broken or looping links: reported below
                report.skipped.append((shown, "symbolic link to a folder (not followed)"))
                continue
            if not _is_image(path):
                non_images.append(shown)
                continue
            if not _is_utf8(entry.name):
                report.skipped.append((shown, "file name is not valid UTF-8, which FiftyOne cannot store (rename it)"))
                continue
            reason = _unusable_file(path)
            if reason:
                report.skipped.append((shown, reason))
                continue
            # Only links can lead elsewhere: links to folders are not followed.
            real = path.resolve() if entry.is_symlink() else real_folder / path.relative_to(folder)
            if not _is_utf8(str(real)):
                report.skipped.append((shown, f"links to {_shown(real)}, a path that is not valid UTF-8"))
                continue
            found.append((path, real))
    return sorted(found)


def _note_outside_files(source: Path, found: list[tuple[Path, Path]], report: ImportReport) -> None:
    """List the files of a folder import that are links to files outside ``source``."""
    outside = [(path, real) for path, real in found if not real.is_relative_to(source)]
    if outside:
        report.outside_source = [str(real) for _, real in outside]
        examples = _examples([f"{path.relative_to(source)} -> {real}" for path, real in outside])
        report.warnings.append(
            f"{len(outside)} image(s) are symbolic links to files outside {source} ({examples}); they are imported, "
            "and an export copies them (all are listed in the dataset's info: curation.source.outside_source)"
        )


def _note_non_images(non_images: list[str], report: ImportReport) -> None:
    if non_images:
        report.warnings.append(
            f"skipped {len(non_images)} file(s) without an image extension ({_examples(non_images)})"
        )


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
    if not source.is_dir():
        raise DatasetImportError(f"{source}: expected a directory or a .csv file, got {file_kind(source.stat().st_mode)}")
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


def _read_csv(source: Path, filepath_column: str, report: ImportReport) -> tuple[list[str] | None, list, str]:
    """The header, the data rows as (line number, fields), and the delimiter of ``source``.

    UTF-8 with or without a byte-order mark. The delimiter is the first of ``CSV_DELIMITERS``
    that splits the header into names holding ``filepath_column`` (a comma if none does).
    Bytes that are not UTF-8 are kept as surrogate escapes, so the rows holding them can be
    named and skipped instead of rejecting the file. Blank lines are not rows.
    """
    reason = _unusable_file(source)
    if reason:  # a named pipe given as --format csv would block the read
        raise DatasetImportError(f"{source}: {reason}")
    text = source.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise DatasetImportError(f"{source}: cannot read as CSV: the file is empty; expected a header row such as "
                                 f"'{filepath_column},label'")
    delimiter = next(
        (candidate for candidate in CSV_DELIMITERS if filepath_column in _header_names(first, candidate)), ","
    )
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, rows = None, []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # the reader goes on with the next line
            report.skipped.append((f"{source}:{reader.line_num}", f"cannot parse the row: {error}"))
            continue
        if not any(value.strip() for value in fields):
            continue
        if header is None:
            header = [name.strip() for name in fields]
        else:
            rows.append((reader.line_num, fields))
    return header, rows, delimiter


def _header_names(line: str, delimiter: str) -> list[str]:
    """The column names ``line`` holds when split at ``delimiter``; none if it does not parse
    (the full read that follows then names the line and its error)."""
    try:
        return [name.strip() for name in next(csv.reader([line], delimiter=delimiter))]
    except csv.Error:
        return []


def _csv_row_path(raw: str, folder: Path) -> tuple[Path | None, str | None]:
    """The absolute, resolved path a CSV cell names (relative to ``folder``), or None and why not."""
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # "~someone/..." for a user this system does not know
        return None, f"cannot find the home folder named in {_clipped(raw)!r}"
    path = path if path.is_absolute() else folder / path
    try:
        return path.resolve(), None
    except RuntimeError:  # Python < 3.13 raises this for a loop of symbolic links
        return None, f"{_clipped(raw)!r} is a symbolic link loop"
    except (OSError, ValueError) as error:  # a NUL byte, for one
        return None, f"cannot use the path {_clipped(raw)!r}: {getattr(error, 'strerror', None) or error}"


def _label_text(label: str) -> str:
    return repr(label) if label else "no label"


def _from_csv(fo, source: Path, name: str, label_field: str, filepath_column: str, label_column: str, report: ImportReport):
    header, rows, delimiter = _read_csv(source, filepath_column, report)
    if header is None:
        raise DatasetImportError(f"{source}: cannot read as CSV: no header row")
    for column, what in ((filepath_column, "image paths"), (label_column, "labels")):
        if column not in header and not (column == label_column and label_column == ""):
            names = ", ".join(_clipped(name, 40) for name in header[:10]) + (", ..." if len(header) > 10 else "")
            raise DatasetImportError(f"{source}: expected a column {column!r} with {what}; the columns are {names}")
    path_index = header.index(filepath_column)
    label_index = header.index(label_column) if label_column in header else None
    folder = source.parent
    samples, missing, outside, repeated, relabelled = [], [], [], [], []
    first_seen: dict[str, tuple[int, str]] = {}  # resolved path -> (line, label)

    for line, fields in rows:
        where = f"{source}:{line}"
        if len(fields) != len(header):
            report.skipped.append((where, f"expected {len(header)} fields ({', '.join(map(_clipped, header))}), found "
                                          f"{len(fields)} (a value holding {delimiter!r} must be quoted)"))
            continue
        raw_path = fields[path_index].strip()
        label = fields[label_index].strip() if label_index is not None else ""
        if not raw_path:
            report.skipped.append((where, f"empty {filepath_column!r}"))
            continue
        if not (_is_utf8(raw_path) and _is_utf8(label)):
            report.skipped.append((where, "the row is not valid UTF-8 text (save the CSV as UTF-8)"))
            continue
        path, reason = _csv_row_path(raw_path, folder)
        if path is None:
            report.skipped.append((where, reason))
            continue
        try:
            status = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            status = None  # missing: kept, and reported per file when embedding
        except OSError as error:
            report.skipped.append((where, f"cannot read {_clipped(raw_path)!r}: {error.strerror or error}"))
            continue
        kind = not_a_regular_file(status.st_mode) if status is not None else None
        if kind:
            report.skipped.append((where, f"{_clipped(raw_path)!r} is {kind}"))
            continue
        if not _is_utf8(str(path)):
            report.skipped.append(
                (where, f"{_clipped(raw_path)!r} leads to {_shown(path)}, a path that is not valid UTF-8")
            )
            continue
        key = str(path)
        if key in first_seen:
            first_line, first_label = first_seen[key]
            if label != first_label:
                relabelled.append(
                    f"{where}: {key} is listed again (first on line {first_line}) with {_label_text(label)} instead of "
                    f"{_label_text(first_label)}; kept the first ({_label_text(first_label)})"
                )
            else:
                repeated.append(f"line {line}: {key} (first on line {first_line})")
            continue
        first_seen[key] = (line, label)
        if status is None:
            missing.append(path.name)
        if not path.is_relative_to(folder):
            outside.append((line, key))
        sample = fo.Sample(filepath=key)
        if label:  # blank = unlabelled
            sample[label_field] = fo.Classification(label=label)
        samples.append(sample)

    report.warnings += relabelled[:MAX_NAMED]
    if len(relabelled) > MAX_NAMED:
        report.warnings.append(f"{len(relabelled) - MAX_NAMED} more row(s) of {source.name} name a file listed before "
                               "with another label; each time the first row's label was kept")
    if repeated:
        report.warnings.append(f"{len(repeated)} row(s) of {source.name} name a file listed again with the same label "
                               f"({_examples(repeated)}); each file is imported once")
    if missing:
        report.warnings.append(
            f"{len(missing)} file(s) listed in {source.name} do not exist ({_examples(missing)}); "
            "they are kept and will be reported when embedding"
        )
    if outside:
        report.outside_source = [path for _, path in outside]
        report.warnings.append(
            f"{len(outside)} row(s) of {source.name} point outside its folder {folder} "
            f"({_examples([f'line {line}: {path}' for line, path in outside])}); they are imported, and an export "
            "copies them (all are listed in the dataset's info: curation.source.outside_source)"
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
    samples, non_images, classes, everything = [], [], set(), []
    for class_dir in sorted(path for path in source.iterdir() if path.is_dir() and not path.name.startswith(".")):
        if not _is_utf8(class_dir.name):
            report.skipped.append((_shown(class_dir.name), "folder name is not valid UTF-8, which FiftyOne cannot "
                                                           "store as a label (rename it); nothing in it was imported"))
            continue
        label = None if class_dir.name == UNLABELLED_FOLDER else class_dir.name
        found = _scan_folder(class_dir, source, report, non_images)
        everything += found
        for path, _ in found:
            sample = fo.Sample(filepath=str(path))
            if label is not None:
                sample[label_field] = fo.Classification(label=label)
                classes.add(label)
            samples.append(sample)
    _note_non_images(non_images, report)
    _note_outside_files(source, everything, report)
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples(samples)
    dataset.default_classes = sorted(classes)
    return dataset


def _from_image_folder(fo, source: Path, name: str, report: ImportReport):
    """Every image below ``source``, unlabelled (the ``images`` format).

    Written here rather than with FiftyOne's ``ImageDirectory``, which takes broken links and
    named pipes as samples and rejects the whole folder over one file name that is not UTF-8.
    """
    non_images: list[str] = []
    found = _scan_folder(source, source, report, non_images)
    _note_non_images(non_images, report)
    _note_outside_files(source, found, report)
    dataset = fo.Dataset(name, persistent=True)
    dataset.add_samples([fo.Sample(filepath=str(path)) for path, _ in found])
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
        return _from_image_folder(fo, source, name, report)
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

    Files (folder formats) or rows (``csv``) that cannot be imported are skipped, never the
    whole import: each is named with its reason in ``ImportReport.warnings`` (the first
    ``MAX_NAMED``, then a count) and ``ImportReport.skipped``. Files outside the source
    folder are imported and listed in ``ImportReport.outside_source``. Both lists are also
    kept in the dataset's import record, ``curation_info(dataset)["source"]``.

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
        DatasetImportError: unknown format, unreadable or unusable source (a symbolic link
            loop, a named pipe, an empty CSV, a missing column), or a dataset of that name
            exists and ``overwrite`` is False.
    """
    fo = _fo()
    if format not in FORMATS:
        raise DatasetImportError(f"unknown format {format!r}. Available: {', '.join(FORMATS)}")
    source = _source_path(source)
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
    _note_skipped(report)
    record = updates["source"]
    record["skipped_count"] = len(report.skipped)
    record["skipped"] = [f"{where}: {reason}" for where, reason in report.skipped[:MAX_RECORDED]]
    record["outside_source"] = {"count": len(report.outside_source), "paths": report.outside_source[:MAX_RECORDED]}
    update_curation_info(dataset, **updates)
    if report.samples == 0:
        report.warnings.append(f"{source}: no samples were found")
    return report


def _source_path(source: str | os.PathLike) -> Path:
    """``source`` made absolute and resolved, or a DatasetImportError that says what is wrong."""
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # "~someone/..." for a user this system does not know
        raise DatasetImportError(f"{_shown(source)}: cannot find the home folder it names") from None
    try:
        path = path.resolve()
    except RuntimeError:  # Python < 3.13 raises this for a loop of symbolic links
        raise DatasetImportError(f"{_shown(source)}: symbolic link loop") from None
    if not _is_utf8(str(path)):
        raise DatasetImportError(f"{_shown(path)}: the path is not valid UTF-8, which FiftyOne cannot store; rename it")
    return path


def _note_skipped(report: ImportReport) -> None:
    """One warning per skipped file or row, the first ``MAX_NAMED``; then one that counts the rest."""
    for where, reason in report.skipped[:MAX_NAMED]:
        report.warnings.append(f"skipped {where}: {reason}")
    rest = report.skipped[MAX_NAMED:]
    if rest:
        reasons = Counter(reason for _, reason in rest).most_common(MAX_EXAMPLES)
        common = "; ".join(f"{count} x {_clipped(reason, 60)}" for reason, count in reasons)
        report.warnings.append(f"skipped {len(rest)} more file(s) or row(s) ({common}); all are listed in the dataset's "
                               "info: curation.source.skipped")


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
