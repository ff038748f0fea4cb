"""Relabelling round trip: send samples to CVAT or Label Studio, bring the corrections back.

:func:`export_annotation_task` writes the samples marked ``decision == "annotate"`` (or any
chosen ids) as a task each tool imports, with the current label pre-filled:

``format="cvat"`` ("CVAT for images 1.1")::

    out_dir/
        annotations.xml   every class under <meta><task><labels>, one <image> per sample
                          with <tag label="..." source="manual"/> holding its current label
        images/<sample_id>.<ext>
        task.zip          annotations.xml + images/, the layout CVAT itself exports
        mapping.json      image name -> sample id, original file and label at export
        README.txt

``format="labelstudio"``::

    out_dir/
        tasks.json        Label Studio import format, the current label as a prediction
        label_config.xml  <View><Image name="image"/><Choices name="label"> every class
        images/<sample_id>.<ext>
        mapping.json
        README.txt        how to let Label Studio serve images/ (local files)

With a ``fo.Detections`` field the task carries each image's boxes instead (boxes decided
"remove", see :mod:`curation.object_decisions`, are not sent): CVAT gets ``<box label xtl ytl
xbr ybr>`` in pixels with the box's id in ``<attribute name="object_id">`` (declared on every
label, so CVAT keeps it), Label Studio a ``RectangleLabels`` prediction per box in percent
whose region ``id`` is the box's id, and ``label_config.xml`` holds ``<RectangleLabels>``.
``mapping.json`` lists, per image, the boxes sent (id, class, relative box) and the size.

The folder is built with :func:`curation.files.atomic_directory` (a hidden sibling renamed
into place), so a reader sees the whole task or none of it. File names come from sample ids
only; class names go into XML and JSON values only (escaped by the writers), so no class
name can place a file outside ``out_dir``. A class name that XML 1.0 cannot carry (a
control character such as NUL) is refused before anything is written.

:func:`import_annotations` reads what the tool exports afterwards (CVAT's annotations.xml
or its zip; Label Studio's JSON or JSON-MIN export) from a path;
:func:`import_annotations_from_bytes` reads the same from memory, for uploads: it detects
the format from the content (zip magic, ``<`` for XML, ``[``/``{`` for JSON), never uses the
browser's file name as a path and writes the bytes nowhere. Both match every item back to a
sample (by the sample id in the image name or task data, else by file name through
``mapping.json`` or the dataset's own file names) and record the result with
:mod:`curation.decisions`: a changed label becomes a relabel (the original kept in
``previous_label``), an unchanged one a "keep".

Boxes come back as object decisions (:func:`curation.object_decisions.apply_object_changes`),
matched by their id: a changed class is a "relabel", a box moved or resized (IoU with its old
place below :data:`MOVED_IOU`) is "moved" (the old box kept for undo), a box sent and missing
from an image that came back is "remove", a box without a known id is a new box ("added"),
an unchanged one is confirmed ("keep", unless it carries a decision already). Every one is
undone by :func:`curation.object_decisions.undo_objects`. The boxes sent are read from
``mapping.json``; without it (CVAT's own zip, an upload) they are the sample's boxes not
decided "remove". A box outside the image, of negative or no size, rotated, malformed or of
a class neither the field nor the task knows is a problem and its box is left as it is (never
removed). A file in which no box carries the id of a box sent is refused: the boxes never
reached the tool, and reading it would delete them all. Label Studio's JSON-MIN export has no
region ids and cannot be used for boxes. Images sent to annotation whose boxes were all read
are marked "keep" (reviewed).

Validate first, then write. The whole file is read and every item checked (a class name
that is a non-empty string XML can carry, one class per item, a sample of this dataset)
before the first write. Items that cannot be used are reported in
:attr:`ImportResult.problems`, each naming the file and the item, and skipped; the rest is
applied. No item is ever half-applied, and no bad item can stop the import midway. Only a
database failure during the writes can interrupt them (:class:`ImportInterruptedError`
says how many samples were written); running the same import again finishes it, because
samples that already hold the file's label with a decision from a file of the same tool
and name are left alone (:attr:`ImportResult.already_applied`).

Hostile files are refused with an :class:`AnnotationFileError` naming the file (and the zip
member): more than :data:`MAX_ANNOTATION_BYTES` to read (checked against a zip member's
declared size before unpacking, and again while reading), XML with a document type
declaration (entity expansion such as "billion laughs", external entities), XML nested
deeper than :data:`MAX_XML_DEPTH`, JSON nested deeper than Python can parse, broken zips.
CVAT XML is streamed through expat and only the parts the import uses are kept.
:attr:`ImportResult.problems` lists the first :data:`MAX_LISTED_PROBLEMS` problems;
:attr:`ImportResult.n_problems` and :attr:`ImportResult.problem_kinds` count them all.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import lzma
import math
import os
import re
import reprlib
import shutil
import sys
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse
from xml.parsers import expat

import curation  # noqa: F401  (sets FiftyOne's environment before it is imported)
from curation.datasets import now_iso
from curation.decisions import apply_relabel, record_decision
from curation.errors import CurationError, CurationInputError
from curation.files import atomic_directory

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("cvat", "labelstudio")
TOOL_NAMES = {"cvat": "CVAT", "labelstudio": "Label Studio"}
MAPPING_FILE = "mapping.json"
IMAGES_DIR = "images"
# Label Studio serves files below LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT at this URL; with
# the document root set to the export folder, "images/<name>" is the file's relative path.
DEFAULT_IMAGE_URL_PREFIX = "/data/local-files/?d=images/"
LABEL_STUDIO_FROM_NAME = "label"
LABEL_STUDIO_TO_NAME = "image"
MODEL_VERSION = "curation"
# What a label field holds: one class per image, or boxes.
CLASSIFICATION = "classification"
DETECTIONS = "detections"
# CVAT carries each box's id in a text attribute of this name (declared on every label, so
# CVAT keeps it through its own import and export); Label Studio in the region's "id".
OBJECT_ID_ATTRIBUTE = "object_id"
# A returned box overlapping its box in the dataset less than this (IoU) has been moved;
# above it, the difference is taken for rounding (CVAT writes pixels with 2 decimals).
MOVED_IOU = 0.95
# A box may reach this far outside the image (a share of its side) and is clipped to it;
# beyond that it is a problem. Tools snap boxes to the border, give or take rounding.
EDGE_TOLERANCE = 0.005

# The most bytes read from one annotation file or zip member. A CVAT tag is ~100 bytes per
# image and a Label Studio task ~1-2 KB, so this holds hundreds of thousands of items;
# what is parsed from it takes a few times as much memory.
MAX_ANNOTATION_BYTES = 256 * 2**20
# CVAT for images nests 7 levels at most (annotations/meta/project/tasks/task/segments/...).
MAX_XML_DEPTH = 64
# ImportResult.problems keeps this many lines; n_problems and problem_kinds count them all.
MAX_LISTED_PROBLEMS = 50
UPLOAD_NAME = "upload"

# Characters XML 1.0 cannot carry at all (even as &#...;), plus CR, which XML parsers turn
# into LF in element text, so a class name holding one would not survive the round trip.
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# What zipfile raises on a damaged or unusual archive (found by fuzzing): a bad header,
# a corrupt stream, an encrypted or unsupported member, a non-UTF-8 name, a bad offset.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError,
               ValueError, OSError)


class AnnotationFileError(CurationError, ValueError):
    """An annotation file cannot be read at all; the message names the file and what is wrong."""


class ImportInterruptedError(CurationError, RuntimeError):
    """The database failed while an import was writing; the message says how far it got."""


@dataclass
class TaskExport:
    """What :func:`export_annotation_task` wrote.

    Attributes:
        out_dir: the export folder.
        format: ``"cvat"`` or ``"labelstudio"``.
        n_samples: images in the task.
        classes: the class list offered to annotators, sorted.
        files: every file written, as absolute paths inside ``out_dir``.
        n_boxes: boxes sent, for a ``fo.Detections`` field (boxes decided "remove" are not).
    """

    out_dir: Path
    format: str
    n_samples: int
    classes: list[str]
    files: list[Path]
    n_boxes: int = 0


@dataclass
class ImportResult:
    """What :func:`import_annotations` found (and, unless ``dry_run``, applied).

    Attributes:
        changed: ``(sample_id, old_label, new_label)`` for every corrected sample.
        confirmed: ids of samples whose label the annotator kept.
        problems: the first :data:`MAX_LISTED_PROBLEMS` items that were not applied, one
            line each naming the file and the item.
        new_classes: labels that no sample of the dataset had before the import, sorted.
        format: the format read (``"cvat"`` or ``"labelstudio"``).
        dry_run: True when nothing was written.
        already_applied: ids that already hold the file's label with a keep or relabel
            decision from a file of the same tool and name (``decision_source``): an
            earlier run of this import. Left as they are, so a second run writes nothing.
        n_problems: every problem, listed or not.
        problem_kinds: problems per kind, e.g. ``{"unknown sample id": 909813}``.
        kind: ``"classification"``, or ``"detections"`` for a box task; the ``boxes_*``
            lists are filled for the latter only (and ``already_applied`` holds box ids).
        boxes_relabelled: ``(sample_id, object_id, old_label, new_label)`` per box whose
            class the annotator changed (moved or not).
        boxes_moved: ``(sample_id, object_id, old_box, new_box)`` per box moved or resized
            (overlapping its old place less than :data:`MOVED_IOU`); relative boxes.
        boxes_removed: ``(sample_id, object_id, label)`` per box sent and not returned.
        boxes_added: ``(sample_id, label, box)`` per box the annotator drew.
        boxes_confirmed: ids of boxes returned as they were sent.
        added_ids: the new boxes' ids, once written (empty on a dry run).
        reviewed: samples marked "annotate" whose every returned box could be used: they
            are marked "keep" (reviewed), which takes them out of the annotation queue.
    """

    changed: list[tuple[str, str | None, str]] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    format: str = ""
    dry_run: bool = False
    already_applied: list[str] = field(default_factory=list)
    n_problems: int = 0
    problem_kinds: dict[str, int] = field(default_factory=dict)
    kind: str = CLASSIFICATION
    boxes_relabelled: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    boxes_moved: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    boxes_removed: list[tuple[str, str, str | None]] = field(default_factory=list)
    boxes_added: list[tuple[str, str, tuple]] = field(default_factory=list)
    boxes_confirmed: list[str] = field(default_factory=list)
    added_ids: list[str] = field(default_factory=list)
    reviewed: list[str] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        """Whether applying the file writes anything (a dry run's question)."""
        return bool(self.changed or self.confirmed or self.boxes_relabelled or self.boxes_moved
                    or self.boxes_removed or self.boxes_added or self.boxes_confirmed or self.reviewed)

    def box_change_lines(self) -> list[str]:
        """One line per box change, e.g. ``"<sample id> box <object id>: cat -> dog"``."""
        def shown(box) -> str:
            return "[" + ", ".join(f"{value:.3f}" for value in box) + "]"

        lines = [f"{sample_id} box {object_id}: {old} -> {new}"
                 for sample_id, object_id, old, new in self.boxes_relabelled]
        lines += [f"{sample_id} box {object_id}: moved {shown(old)} -> {shown(new)}"
                  for sample_id, object_id, old, new in self.boxes_moved]
        lines += [f"{sample_id} box {object_id}: {label} removed" for sample_id, object_id, label in self.boxes_removed]
        lines += [f"{sample_id}: new box {label} {shown(box)}" for sample_id, label, box in self.boxes_added]
        return lines

    def _box_summary(self) -> list[str]:
        counts = (len(self.boxes_relabelled), len(self.boxes_moved), len(self.boxes_removed), len(self.boxes_added))
        if self.dry_run:
            first = "would relabel {} box(es), move {}, remove {}, add {}".format(*counts)
        else:
            first = "relabelled {} box(es), moved {}, removed {}, added {}".format(*counts)
        parts = [first, f"confirmed {len(self.boxes_confirmed)}"]
        if self.reviewed:
            parts.append(f"{'would mark' if self.dry_run else 'marked'} {len(self.reviewed)} image(s) sent to "
                         f"annotation reviewed")
        return parts

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        parts = (self._box_summary() if self.kind == DETECTIONS
                 else [f"{verb} {len(self.changed)} label(s)", f"confirmed {len(self.confirmed)}"])
        if self.already_applied:
            parts.append(f"already applied {len(self.already_applied)}")
        if self.new_classes:
            shown = ", ".join(_short_text(name) for name in self.new_classes[:10])
            more = f" (and {len(self.new_classes) - 10} more)" if len(self.new_classes) > 10 else ""
            parts.append(f"new classes: {shown}{more}")
        total = max(self.n_problems, len(self.problems))
        if total:
            kinds = sorted(self.problem_kinds.items(), key=lambda pair: (-pair[1], pair[0]))
            detail = ", ".join(f"{count:,} {kind}" for kind, count in kinds)
            parts.append(f"{total:,} problem(s)" + (f": {detail}" if detail else ""))
        return "; ".join(parts)


# --------------------------------------------------------------------------- text for messages

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4


def _short_text(text: str, limit: int = 80) -> str:
    """``text`` for a one-line message: control characters escaped, cut to ``limit``."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shown(value) -> str:
    """A short repr of any value from a file (depth- and length-limited, so never huge)."""
    return _REPR.repr(value)


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _json_value(value) -> str:
    """``null``, ``boolean true``, ``number 3``, ``a list [...]``: a JSON value for a message."""
    kind = _json_type(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if kind in ("list", "object"):
        return f"{'an' if kind == 'object' else 'a'} {kind} {_shown(value)}"
    return f"{kind} {_shown(value)}"


def _xml_unsafe_character(name: str) -> str | None:
    """The first character of ``name`` that a CVAT or Label Studio file cannot carry, if any."""
    match = _XML_UNSAFE.search(name)
    return match.group() if match else None


def _check_class_name(value) -> tuple[str | None, str | None]:
    """(the class name, stripped, None) or (None, why it is not one)."""
    if not isinstance(value, str):
        return None, f"expected a class name (a string), got {_json_value(value)}"
    name = value.strip()
    if not name:
        return None, "expected a class name, got an empty one"
    bad = _xml_unsafe_character(name)
    if bad is not None:
        return None, (f"class name {_shown(name)} holds the control character U+{ord(bad):04X}, which CVAT and "
                      f"Label Studio files cannot carry")
    return name, None


# --------------------------------------------------------------------------- export


def _copy_image(source: Path, target: Path) -> None:
    """Copy one image (a seam the tests use to fail an export midway)."""
    shutil.copy2(source, target)


@dataclass(frozen=True)
class _TaskBox:
    object_id: str
    label: str
    bounding_box: tuple[float, float, float, float]  # relative [x, y, width, height], FiftyOne's layout


@dataclass(frozen=True)
class _TaskItem:
    sample_id: str
    source: Path
    image_name: str
    label: str | None
    width: int
    height: int
    boxes: tuple[_TaskBox, ...] = ()


def _validate_format(format: str) -> None:
    if format not in EXPORT_FORMATS:
        raise CurationInputError(f"unknown annotation format {format!r}. Available: {', '.join(EXPORT_FORMATS)}")


def _validate_label_field(dataset, label_field: str | None) -> str:
    """``"classification"`` or ``"detections"``: what ``label_field`` holds; raises otherwise."""
    import fiftyone as fo

    if not isinstance(label_field, str) or not label_field:
        raise CurationInputError(f"dataset {dataset.name!r} has no classification label field to relabel "
                                 f"(got label_field={label_field!r}); expected a field of fo.Classification "
                                 f"(or fo.Detections, for boxes): pass its name (on the command line: --label-field)")
    if not dataset.has_sample_field(label_field):
        raise CurationInputError(f"dataset {dataset.name!r} has no field {label_field!r}; "
                                 f"expected a field of fo.Classification (or fo.Detections, for boxes)")
    field_ = dataset.get_field(label_field)
    document_type = getattr(field_, "document_type", None)
    if document_type is fo.Classification:
        return CLASSIFICATION
    if isinstance(document_type, type) and issubclass(document_type, fo.Detections):
        return DETECTIONS
    found = document_type.__name__ if document_type is not None else type(field_).__name__
    raise CurationInputError(f"field {label_field!r} of dataset {dataset.name!r}: expected fo.Classification, got "
                             f"{found} (fo.Detections works too, for boxes)")


def _select_samples(dataset, sample_ids: list[str] | None) -> list[str]:
    if sample_ids is None:
        from fiftyone import ViewField as F

        ids = dataset.match(F("decision") == "annotate").values("id") if dataset.has_sample_field("decision") else []
        if not ids:
            raise CurationInputError(f"dataset {dataset.name!r}: no sample is marked for annotation "
                             f"(decision == 'annotate'); pass sample_ids or mark samples first")
        return ids
    from bson import ObjectId

    ids = list(dict.fromkeys(str(sample_id) for sample_id in sample_ids))  # keep order, drop repeats
    if not ids:
        raise CurationInputError("sample_ids: expected at least one sample id, got an empty list")
    valid = [sample_id for sample_id in ids if ObjectId.is_valid(sample_id)]
    known = set(dataset.select(valid).values("id")) if valid else set()
    unknown = [sample_id for sample_id in ids if sample_id not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise CurationInputError(f"dataset {dataset.name!r} has no samples with id {shown}")
    return ids


def _sent_boxes(detections) -> tuple[_TaskBox, ...]:
    """The boxes of one sample to send: all but those decided "remove" (see
    :func:`curation.object_decisions.kept_boxes_view`) and those without a label or a box."""
    boxes = []
    for detection in (detections.detections if detections is not None else None) or []:
        decision = detection.get_field("decision") if detection.has_field("decision") else None
        if decision == "remove" or not detection.label or detection.bounding_box is None:
            continue
        boxes.append(_TaskBox(detection.id, detection.label, tuple(float(v) for v in detection.bounding_box)))
    return tuple(boxes)


def _task_items(dataset, ids: list[str], label_field: str, kind: str = CLASSIFICATION) -> list[_TaskItem]:
    from curation.images import image_info

    view = dataset.select(ids, ordered=True)
    filepaths = view.values("filepath")
    if kind == DETECTIONS:
        boxes = [_sent_boxes(detections) for detections in view.values(label_field)]
        labels = [None] * len(ids)
    else:
        labels = view.values(f"{label_field}.label")
        boxes = [()] * len(ids)
    items, missing, unreadable = [], [], []
    for sample_id, filepath, label, sample_boxes in zip(ids, filepaths, labels, boxes):
        source = Path(filepath)
        if not source.is_file():
            missing.append(f"{source} (sample {sample_id})")
            continue
        size = image_info(source)
        if size is None:
            unreadable.append(f"{source} (sample {sample_id})")
            continue
        items.append(_TaskItem(sample_id, source, f"{sample_id}{_image_suffix(source)}", label, *size,
                               boxes=sample_boxes))
    if missing:
        raise FileNotFoundError(f"cannot export for annotation: image file(s) missing: {'; '.join(missing[:5])}"
                                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    if unreadable:
        raise CurationInputError(f"cannot export for annotation: expected readable images, could not read "
                         f"{'; '.join(unreadable[:5])}" + (f" (and {len(unreadable) - 5} more)" if len(unreadable) > 5 else ""))
    return items


def _image_suffix(source: Path) -> str:
    """The image's extension for its task file name; anything but a plain one is dropped
    (the name lands in XML and URLs, and only the sample id must identify it)."""
    suffix = source.suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,10}", suffix) else ""


def _label_path(label_field: str, kind: str) -> str:
    return f"{label_field}.detections.label" if kind == DETECTIONS else f"{label_field}.label"


def _task_classes(dataset, label_field: str, items: list[_TaskItem], classes: list[str] | None,
                  kind: str = CLASSIFICATION) -> list[str]:
    used = {item.label for item in items if item.label is not None}
    used |= {box.label for item in items for box in item.boxes}
    if classes is None:
        every = {label for label in dataset.distinct(_label_path(label_field, kind)) if label is not None}
        task_classes = sorted(every | used)
    else:
        chosen = [str(name).strip() for name in classes]
        if any(not name for name in chosen):
            raise CurationInputError("classes: expected non-empty class names, got an empty one")
        not_listed = sorted(used - set(chosen))
        if not_listed:
            raise CurationInputError(f"classes: the exported samples carry label(s) {', '.join(not_listed)} that are "
                                     f"not in the given class list; add them, or leave classes=None to offer every "
                                     f"class of the dataset")
        task_classes = sorted(set(chosen))
    for name in task_classes:
        bad = _xml_unsafe_character(name)
        if bad is not None:
            raise CurationInputError(f"cannot export for annotation: class name {_shown(name)} holds the control "
                                     f"character U+{ord(bad):04X}, which CVAT and Label Studio files cannot carry; "
                                     f"rename the class first (or pass classes= without it)")
    return task_classes


def _mapping_entry(item: _TaskItem, kind: str) -> dict:
    entry = {"sample_id": item.sample_id, "filepath": str(item.source), "label": item.label}
    if kind == DETECTIONS:
        # The boxes as sent: a box the import does not get back for this image was deleted.
        entry.update(width=item.width, height=item.height, boxes=[
            {"object_id": box.object_id, "label": box.label, "bounding_box": list(box.bounding_box)}
            for box in item.boxes])
    return entry


def _write_mapping(folder: Path, dataset, label_field: str, format: str, items: list[_TaskItem],
                   kind: str = CLASSIFICATION, classes: list[str] | None = None) -> Path:
    path = folder / MAPPING_FILE
    path.write_text(json.dumps({
        "dataset": dataset.name,
        "label_field": label_field,
        "kind": kind,
        "format": format,
        "exported_at": now_iso(),
        "classes": list(classes or []),
        "images": {item.image_name: _mapping_entry(item, kind) for item in items},
    }, indent=2), encoding="utf-8")
    return path


def _pixels(value: float) -> str:
    return f"{value:.2f}"


def _corners_in_image(box: _TaskBox) -> tuple[float, float, float, float]:
    """Relative (left, top, right, bottom), clipped to the image: tools keep boxes inside it."""
    x, y, w, h = box.bounding_box
    return (min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0), min(max(x + w, 0.0), 1.0), min(max(y + h, 0.0), 1.0))


def _cvat_box(image: ET.Element, box: _TaskBox, width: int, height: int) -> None:
    left, top, right, bottom = _corners_in_image(box)
    left, top, right, bottom = left * width, top * height, right * width, bottom * height
    element = ET.SubElement(image, "box", {"label": box.label, "source": "manual", "occluded": "0",
                                           "xtl": _pixels(left), "ytl": _pixels(top), "xbr": _pixels(right),
                                           "ybr": _pixels(bottom), "z_order": "0"})
    ET.SubElement(element, "attribute", {"name": OBJECT_ID_ATTRIBUTE}).text = box.object_id


def _cvat_annotations_xml(name: str, items: list[_TaskItem], classes: list[str],
                          kind: str = CLASSIFICATION) -> ET.ElementTree:
    stamp = now_iso()
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    for tag, text in (("id", ""), ("name", _XML_UNSAFE.sub("", name)), ("size", str(len(items))), ("mode", "annotation"),
                      ("overlap", "0"), ("bugtracker", ""), ("flipped", "False"), ("created", stamp),
                      ("updated", stamp), ("subset", "default"), ("start_frame", "0"),
                      ("stop_frame", str(max(len(items) - 1, 0))), ("frame_filter", "")):
        ET.SubElement(task, tag).text = text
    labels = ET.SubElement(task, "labels")
    for class_name in classes:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = class_name
        ET.SubElement(label, "type").text = "rectangle" if kind == DETECTIONS else "any"
        attributes = ET.SubElement(label, "attributes")
        if kind == DETECTIONS:
            # Declared, so that CVAT keeps the attribute on import; immutable, empty by default:
            # a box an annotator draws has no id and comes back as a new box.
            attribute = ET.SubElement(attributes, "attribute")
            for tag, text in (("name", OBJECT_ID_ATTRIBUTE), ("mutable", "False"), ("input_type", "text"),
                              ("default_value", ""), ("values", "")):
                ET.SubElement(attribute, tag).text = text
    segment = ET.SubElement(ET.SubElement(task, "segments"), "segment")
    for tag, text in (("id", "0"), ("start", "0"), ("stop", str(max(len(items) - 1, 0))), ("url", "")):
        ET.SubElement(segment, tag).text = text
    owner = ET.SubElement(task, "owner")
    ET.SubElement(owner, "username").text = ""
    ET.SubElement(owner, "email").text = ""
    ET.SubElement(meta, "dumped").text = stamp
    for index, item in enumerate(items):
        image = ET.SubElement(root, "image", {"id": str(index), "name": item.image_name,
                                              "width": str(item.width), "height": str(item.height)})
        if item.label is not None:
            ET.SubElement(image, "tag", {"label": item.label, "source": "manual"})
        for box in item.boxes:
            _cvat_box(image, box, item.width, item.height)
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return tree


def _write_cvat(folder: Path, dataset, items: list[_TaskItem], classes: list[str],
                kind: str = CLASSIFICATION) -> list[Path]:
    xml_path = folder / "annotations.xml"
    _cvat_annotations_xml(dataset.name, items, classes, kind).write(xml_path, encoding="utf-8", xml_declaration=True)
    zip_path = folder / "task.zip"
    # Images are already compressed; storing them keeps the zip fast to write.
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(xml_path, "annotations.xml")
        for item in items:
            archive.write(folder / IMAGES_DIR / item.image_name, f"{IMAGES_DIR}/{item.image_name}",
                          compress_type=zipfile.ZIP_STORED)
    readme = folder / "README.txt"
    template = _CVAT_BOXES_README if kind == DETECTIONS else _CVAT_README
    n_boxes = sum(len(item.boxes) for item in items)
    readme.write_text(template.format(n=len(items), classes=", ".join(classes), n_boxes=n_boxes,
                                      attribute=OBJECT_ID_ATTRIBUTE), encoding="utf-8")
    return [xml_path, zip_path, readme]


_CVAT_README = """\
Relabelling task for CVAT ("CVAT for images 1.1"), {n} images.

Either
  * Projects > + > create a project with these labels: {classes}
    then on the project: Actions > Import dataset, format "CVAT 1.1", file task.zip
or
  * Tasks > + > create a task with the labels above, upload the files in images/,
    then Actions > Upload annotations, format "CVAT 1.1", file annotations.xml (or task.zip).

Each image carries its current label as a tag; change the tag where it is wrong and
leave it where it is right. Afterwards: Actions > Export task dataset (or Export annotations),
format "CVAT for images 1.1", and import the downloaded zip or its annotations.xml with
curation.relabel.import_annotations. Image names are <sample id>.<ext>; keep them.
"""


_CVAT_BOXES_README = """\
Box relabelling task for CVAT ("CVAT for images 1.1"), {n} images with {n_boxes} boxes.

Either
  * Projects > + > create a project with these labels: {classes}
    each with a text attribute "{attribute}" (immutable, empty by default);
    then on the project: Actions > Import dataset, format "CVAT 1.1", file task.zip
or
  * Tasks > + > create a task with the labels above (and their "{attribute}" attribute),
    upload the files in images/, then Actions > Upload annotations, format "CVAT 1.1",
    file annotations.xml (or task.zip).

Every box carries the id of its box in the dataset in the attribute "{attribute}"; leave it as
it is. Fix a box's class or its corners, delete a box that is wrong, draw a box that is missing
(it needs no id). Afterwards: Actions > Export task dataset (or Export annotations), format
"CVAT for images 1.1", and import the downloaded zip or its annotations.xml with
curation.relabel.import_annotations. Image names are <sample id>.<ext>; keep them.
"""


def _label_config_xml(classes: list[str], kind: str = CLASSIFICATION) -> str:
    view = ET.Element("View")
    ET.SubElement(view, "Image", {"name": LABEL_STUDIO_TO_NAME, "value": "$image"})
    if kind == DETECTIONS:
        rectangles = ET.SubElement(view, "RectangleLabels", {"name": LABEL_STUDIO_FROM_NAME,
                                                             "toName": LABEL_STUDIO_TO_NAME})
        for class_name in classes:
            ET.SubElement(rectangles, "Label", {"value": class_name})
        ET.indent(view, space="  ")
        return ET.tostring(view, encoding="unicode") + "\n"
    choices = ET.SubElement(view, "Choices", {"name": LABEL_STUDIO_FROM_NAME, "toName": LABEL_STUDIO_TO_NAME,
                                              "choice": "single-radio", "showInline": "true"})
    for class_name in classes:
        ET.SubElement(choices, "Choice", {"value": class_name})
    ET.indent(view, space="  ")
    return ET.tostring(view, encoding="unicode") + "\n"


def _labelstudio_region(box: _TaskBox, item: _TaskItem) -> dict:
    """One box as a Label Studio region: percent of the image, top-left corner; ``id`` is the
    box's id in the dataset, which Label Studio keeps when an annotator accepts the prediction."""
    left, top, right, bottom = _corners_in_image(box)
    x, y, w, h = left, top, right - left, bottom - top
    return {"id": box.object_id, "from_name": LABEL_STUDIO_FROM_NAME, "to_name": LABEL_STUDIO_TO_NAME,
            "type": "rectanglelabels", "original_width": item.width, "original_height": item.height,
            "image_rotation": 0, "value": {"x": x * 100, "y": y * 100, "width": w * 100, "height": h * 100,
                                            "rotation": 0, "rectanglelabels": [box.label]}}


def _write_labelstudio(folder: Path, final_dir: Path, items: list[_TaskItem], classes: list[str],
                       image_url_prefix: str, kind: str = CLASSIFICATION) -> list[Path]:
    tasks = []
    for item in items:
        task = {"data": {"image": f"{image_url_prefix}{item.image_name}", "sample_id": item.sample_id}}
        if kind == DETECTIONS:
            task["predictions"] = [{"model_version": MODEL_VERSION,
                                    "result": [_labelstudio_region(box, item) for box in item.boxes]}]
        elif item.label is not None:
            task["predictions"] = [{"model_version": MODEL_VERSION, "result": [{
                "from_name": LABEL_STUDIO_FROM_NAME, "to_name": LABEL_STUDIO_TO_NAME, "type": "choices",
                "value": {"choices": [item.label]}}]}]
        else:
            task["predictions"] = []
        tasks.append(task)
    tasks_path = folder / "tasks.json"
    tasks_path.write_text(json.dumps(tasks, indent=2, ensure_ascii=False), encoding="utf-8")
    config_path = folder / "label_config.xml"
    config_path.write_text(_label_config_xml(classes, kind), encoding="utf-8")
    readme = folder / "README.txt"
    readme.write_text(_LABEL_STUDIO_README.format(n=len(items), out_dir=final_dir.resolve(),
                                                  prefix=image_url_prefix)
                      + (_LABEL_STUDIO_BOXES_NOTE if kind == DETECTIONS else ""), encoding="utf-8")
    return [tasks_path, config_path, readme]


_LABEL_STUDIO_README = """\
Relabelling task for Label Studio, {n} images. Image URLs in tasks.json start with
    {prefix}

With the default prefix ("/data/local-files/?d=images/"), let Label Studio serve this folder:
  1. Start Label Studio with local files enabled and this folder as the document root:
       LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \\
       LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={out_dir} \\
       label-studio start
  2. Create a project; Settings > Labeling Interface > Code: paste label_config.xml.
  3. Settings > Cloud Storage > Add Source Storage > Local files, absolute path
       {out_dir}/images
     (do not sync it: the tasks come from tasks.json).
  4. Import tasks.json. Each task shows its current label as a prediction; accept it or
     pick another class, and submit (or skip to leave the task out).
Any other URL prefix works too (pass image_url_prefix), e.g. a web server serving images/.

Afterwards: Export > JSON (or JSON-MIN), and import the file with
curation.relabel.import_annotations. Tasks keep their sample id in data.sample_id.
"""


_LABEL_STUDIO_BOXES_NOTE = """
Boxes: each task shows the image's boxes as a prediction (RectangleLabels); start the
annotation from it, so that every box keeps its id (the region id is the box's id in the
dataset). Fix a class or move a corner, delete a wrong box, draw a missing one. Export as
JSON, not JSON-MIN: JSON-MIN leaves the region ids out, and boxes cannot be matched without.
"""


def export_annotation_task(
    dataset,
    out_dir: str | os.PathLike,
    *,
    format: str,
    label_field: str,
    sample_ids: list[str] | None = None,
    classes: list[str] | None = None,
    overwrite: bool = False,
    image_url_prefix: str = DEFAULT_IMAGE_URL_PREFIX,
) -> TaskExport:
    """Write the samples to relabel as a CVAT or Label Studio task, current labels pre-filled.

    The folder is built with :func:`curation.files.atomic_directory` (a hidden sibling moved
    into place at the end), so a failed export leaves neither a half-written ``out_dir`` nor
    the temporary folder, and leftovers of a killed export are removed by the next one.
    Source images are copied (as ``images/<sample_id>.<ext>``), never changed. Class names
    are written into XML and JSON values only, never into a path.

    Args:
        dataset: the FiftyOne dataset.
        out_dir: the folder to create.
        format: ``"cvat"`` (CVAT for images 1.1) or ``"labelstudio"``.
        label_field: the ``fo.Classification`` field holding the labels, or a ``fo.Detections``
            field: then each image's boxes are sent (all but those decided "remove").
        sample_ids: the samples to export; None exports those with ``decision == "annotate"``.
        classes: the classes annotators may choose; None offers every label of the dataset.
            Must include the current labels of the exported samples.
        overwrite: replace an existing ``out_dir``.
        image_url_prefix: Label Studio only: prepended to each image name to form its URL.
            The default suits Label Studio's local-file serving (see the README it writes).

    Returns:
        A :class:`TaskExport`.

    Raises:
        CurationInputError: (a ValueError) unknown format, no label field or one that is
            neither classification nor detections, unknown sample ids, no sample marked for
            annotation, classes missing a
            current label, or a class name with a control character XML cannot carry.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        FileNotFoundError: a sample's image file is missing.
    """
    _validate_format(format)
    kind = _validate_label_field(dataset, label_field)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    ids = _select_samples(dataset, sample_ids)
    items = _task_items(dataset, ids, label_field, kind)
    task_classes = _task_classes(dataset, label_field, items, classes, kind)

    # 0o755: the images must stay readable to a Label Studio running as another user.
    with atomic_directory(out_dir, overwrite=overwrite, mode=0o755) as staging:
        (staging / IMAGES_DIR).mkdir()
        for item in items:
            _copy_image(item.source, staging / IMAGES_DIR / item.image_name)
        written = [_write_mapping(staging, dataset, label_field, format, items, kind, task_classes)]
        if format == "cvat":
            written += _write_cvat(staging, dataset, items, task_classes, kind)
        else:
            written += _write_labelstudio(staging, out_dir, items, task_classes, image_url_prefix, kind)
        written += [staging / IMAGES_DIR / item.image_name for item in items]
        relative = [path.relative_to(staging) for path in written]
    files = sorted(out_dir / path for path in relative)
    logger.info("exported %d samples for %s to %s", len(items), TOOL_NAMES[format], out_dir)
    return TaskExport(out_dir=out_dir, format=format, n_samples=len(items), classes=task_classes, files=files,
                      n_boxes=sum(len(item.boxes) for item in items))



# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Annotation:
    """One item of an annotation file: which image, which label, who said so."""

    item: str  # how problems name it, e.g. "<image id=3 name=...>" or "task 17"
    sample_id: str | None  # when the file names it
    image_name: str | None
    label: str  # a checked class name (see _check_class_name)
    user: str | None = None


class _Problems:
    """Collects what cannot be used: the first lines verbatim, every one counted by kind."""

    def __init__(self, label: str):
        self.label = label
        self.listed: list[str] = []
        self.total = 0
        self.kinds: dict[str, int] = {}

    def add(self, item: str, kind: str, why: str) -> None:
        self.add_line(kind, f"{self.label}: {item}: {why}")

    def add_line(self, kind: str, line: str) -> None:
        self.total += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.listed) < MAX_LISTED_PROBLEMS:
            self.listed.append(line)


class _SampleMatcher:
    """Finds the sample an item of an annotation file refers to."""

    def __init__(self, dataset, mapping: dict[str, str]):
        self.dataset = dataset
        self.ids = set(dataset.values("id"))
        self.mapping = mapping
        self._by_file_name: dict[str, list[str]] | None = None

    @property
    def by_file_name(self) -> dict[str, list[str]]:
        """File name -> sample ids, read only when an item is not named by sample id."""
        if self._by_file_name is None:
            self._by_file_name = {}
            ids, filepaths = self.dataset.values(["id", "filepath"])
            for sample_id, filepath in zip(ids, filepaths):
                self._by_file_name.setdefault(os.path.basename(filepath), []).append(sample_id)
        return self._by_file_name

    def match(self, annotation: _Annotation) -> tuple[str | None, tuple[str, str] | None]:
        """(sample id, None) or (None, (kind of problem, why not))."""
        from bson import ObjectId

        if annotation.sample_id:
            if annotation.sample_id in self.ids:
                return annotation.sample_id, None
            return None, ("unknown sample id", f"unknown sample id {_shown(annotation.sample_id)} (not in this dataset)")
        if not annotation.image_name:
            return None, ("no image name or sample id", "no image name or sample id to match it to a sample")
        base = PurePosixPath(annotation.image_name.replace("\\", "/")).name
        stem = base.rsplit(".", 1)[0]
        if ObjectId.is_valid(stem):
            if stem in self.ids:
                return stem, None
            return None, ("unknown sample id", f"unknown sample id {stem!r} from image name "
                                               f"{_shown(annotation.image_name)} (not in this dataset)")
        # Label Studio renames uploads to "<8 hex>-<original name>".
        candidates = [base] + ([base.split("-", 1)[1]] if "-" in base else [])
        for name in candidates:
            if name in self.mapping and self.mapping[name] in self.ids:
                return self.mapping[name], None
            owners = self.by_file_name.get(name, [])
            if len(owners) == 1:
                return owners[0], None
            if len(owners) > 1:
                return None, ("ambiguous image name", f"image name {_shown(base)} matches {len(owners)} samples of "
                                                      f"the dataset; cannot tell which")
        return None, ("unknown image", f"unknown image {_shown(annotation.image_name)} (no sample with this id or "
                                       f"file name)")


# ---- reading the source: a file, a folder, a zip, or bytes; everything bounded


@dataclass(frozen=True)
class _Source:
    label: str  # how messages name it: "path/annotations.xml", "task.zip (annotations.xml)"
    file_name: str  # what decision_source records: "annotations.xml", "task.zip"
    content: bytes
    mapping: dict[str, str]  # image name -> sample id, from a mapping.json beside or inside
    mapping_problem: str | None = None
    sent_boxes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # sample id -> object ids sent (boxes)
    task_classes: tuple[str, ...] = ()  # the classes the task offered (mapping.json "classes")


def _too_large(label: str, size: int, *, member: str | None = None) -> AnnotationFileError:
    what = f"{member} unpacks to" if member else "the file holds"
    return AnnotationFileError(f"{label}: {what} {size:,} bytes, more than the {MAX_ANNOTATION_BYTES:,} bytes read "
                               f"from an annotation file{' (a zip bomb?)' if member else ''}; export fewer images per "
                               f"task, or raise curation.relabel.MAX_ANNOTATION_BYTES")


def _read_file(path: Path, label: str) -> bytes:
    """The file's bytes, refused beyond MAX_ANNOTATION_BYTES (checked again while reading:
    the file may grow, or be a device that never ends)."""
    size = path.stat().st_size
    if size > MAX_ANNOTATION_BYTES:
        raise _too_large(label, size)
    with path.open("rb") as stream:
        content = stream.read(MAX_ANNOTATION_BYTES + 1)
    if len(content) > MAX_ANNOTATION_BYTES:
        raise _too_large(label, len(content))
    return content


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> bytes:
    """One zip member's bytes; its declared size is checked before anything is unpacked."""
    if info.flag_bits & 0x1:
        raise AnnotationFileError(f"{label}: the zip member is encrypted; export it without a password")
    if info.file_size > MAX_ANNOTATION_BYTES:
        raise _too_large(label, info.file_size, member=PurePosixPath(info.filename).name)
    try:
        with archive.open(info) as member:
            # zipfile stops at the declared size (and then fails the CRC); the bound is a second guard.
            content = member.read(MAX_ANNOTATION_BYTES + 1)
    except _ZIP_ERRORS as error:
        raise AnnotationFileError(f"{label}: cannot unpack it from the zip ({type(error).__name__}: "
                                  f"{_short_text(str(error), 200)})") from error
    if len(content) > MAX_ANNOTATION_BYTES:
        raise _too_large(label, len(content), member=PurePosixPath(info.filename).name)
    return content


_NO_MAPPING: tuple = ({}, None, {}, ())


def _sent_box_ids(entry: dict) -> tuple[str, ...] | None:
    """The object ids a mapping entry lists under "boxes" (), or None when they are malformed."""
    boxes = entry.get("boxes", [])
    if not isinstance(boxes, list) or not all(isinstance(box, dict) and isinstance(box.get("object_id"), str)
                                              for box in boxes):
        return None
    return tuple(box["object_id"] for box in boxes)


def _parse_mapping(content: bytes, label: str) -> tuple[dict[str, str], str | None, dict[str, tuple[str, ...]],
                                                         tuple[str, ...]]:
    """(image name -> sample id, None, sample id -> object ids sent, the task's classes), or
    ({}, why the mapping is ignored, {}, ())."""
    ignored = "; matching by sample id and file name only"
    try:
        data = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        return {}, f"{label}: ignored: not readable JSON ({_short_text(str(error), 200)}){ignored}", {}, ()
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict) or not all(isinstance(entry, dict) and isinstance(entry.get("sample_id"), str)
                                               for entry in images.values()):
        return {}, f'{label}: ignored: expected {{"images": {{image name: {{"sample_id": ...}}}}}}{ignored}', {}, ()
    if not all(_sent_box_ids(entry) is not None for entry in images.values()):
        return ({}, f'{label}: ignored: expected "boxes" of an image to be a list of {{"object_id": ...}}{ignored}',
                {}, ())
    sent = {entry["sample_id"]: _sent_box_ids(entry) for entry in images.values() if "boxes" in entry}
    classes = data.get("classes")
    classes = tuple(name for name in classes if isinstance(name, str)) if isinstance(classes, list) else ()
    return {name: entry["sample_id"] for name, entry in images.items()}, None, sent, classes


def _mapping_beside(folder: Path) -> tuple:
    path = folder / MAPPING_FILE
    if not path.is_file():
        return _NO_MAPPING
    try:
        return _parse_mapping(_read_file(path, str(path)), str(path))
    except AnnotationFileError as error:
        return {}, f"{error}; ignored", {}, ()


def _is_zip(head: bytes, stream) -> bool:
    return head[:4] in _ZIP_MAGIC or zipfile.is_zipfile(stream)


def _source_from_zip(archive: zipfile.ZipFile, name: str, file_name: str, folder: Path | None) -> _Source:
    """The annotations inside an open zip (CVAT's annotations.xml first, else a JSON export)."""
    # Not ZipInfo.is_dir(): it fails with IndexError on a member with an empty name.
    members = [info for info in archive.infolist() if info.filename and not info.filename.endswith("/")]
    xml = [info for info in members if PurePosixPath(info.filename).name == "annotations.xml"]
    json_files = [info for info in members if info.filename.lower().endswith(".json")
                  and PurePosixPath(info.filename).name != MAPPING_FILE]
    chosen = (xml or json_files or [None])[0]
    if chosen is None:
        names = ", ".join(_short_text(info.filename, 100) for info in members[:10])
        more = f" (and {len(members) - 10} more)" if len(members) > 10 else ""
        raise AnnotationFileError(f"{name}: expected a zip holding annotations.xml (CVAT for images 1.1) or a JSON "
                                  f"export; it holds {names or 'nothing'}{more}")
    label = f"{name} ({_short_text(chosen.filename, 200)})"
    content = _read_member(archive, chosen, label)
    inside = [info for info in members if PurePosixPath(info.filename).name == MAPPING_FILE]
    if inside:
        mapping_label = f"{name} ({_short_text(inside[0].filename, 200)})"
        try:
            found = _parse_mapping(_read_member(archive, inside[0], mapping_label), mapping_label)
        except AnnotationFileError as error:
            found = ({}, f"{error}; ignored", {}, ())
    elif folder is not None:
        found = _mapping_beside(folder)
    else:
        found = _NO_MAPPING
    return _Source(label, file_name, content, *found)


def _open_zip(stream, name: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(stream)
    except _ZIP_ERRORS as error:
        raise AnnotationFileError(f"{name}: not a readable zip ({type(error).__name__}: "
                                  f"{_short_text(str(error), 200)})") from error


def _source_from_path(path: Path) -> _Source:
    """For a file, a folder or a zip on disk."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        for name in ("annotations.xml", "result.json", "tasks.json"):
            if (path / name).is_file():
                return _Source(str(path / name), name, _read_file(path / name, str(path / name)), *_mapping_beside(path))
        found = sorted(child.name for child in path.iterdir())
        shown = ", ".join(_short_text(name, 100) for name in found[:10]) + (
            f" (and {len(found) - 10} more)" if len(found) > 10 else "")
        raise AnnotationFileError(f"{path}: expected annotations.xml (CVAT) or a Label Studio JSON export in this "
                                  f"folder, found {shown or 'nothing'}")
    if not path.is_file():
        raise AnnotationFileError(f"{path}: expected a file, a zip or a folder, got something else (a device or pipe?)")
    with path.open("rb") as stream:
        if _is_zip(stream.read(4), stream):
            stream.seek(0)
            with _open_zip(stream, str(path)) as archive:
                return _source_from_zip(archive, str(path), path.name, path.parent)
    return _Source(str(path), path.name, _read_file(path, str(path)), *_mapping_beside(path.parent))


def _upload_name(name_hint: str) -> str:
    """A name for messages and ``decision_source`` from a browser-supplied file name: its
    last component, printable, at most 120 characters; never used as a path."""
    name = PurePosixPath(str(name_hint or "").replace("\\", "/")).name
    name = "".join(char for char in name if char.isprintable()).strip()
    return name[:120] or UPLOAD_NAME


def _source_from_bytes(data: bytes, name_hint: str) -> _Source:
    name = _upload_name(name_hint)
    buffer = io.BytesIO(data)
    if _is_zip(data[:4], buffer):
        with _open_zip(buffer, name) as archive:
            return _source_from_zip(archive, name, name, None)
    if len(data) > MAX_ANNOTATION_BYTES:
        raise _too_large(name, len(data))
    return _Source(name, name, data, {})


def _detect_format(label: str, content: bytes) -> str:
    stripped = content.lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 byte-order mark and blanks may come first
    if not stripped:
        raise AnnotationFileError(f"{label}: the file is empty; expected CVAT XML or a Label Studio JSON export")
    head = stripped[:1]
    if head == b"<":
        return "cvat"
    if head in (b"[", b"{"):
        return "labelstudio"
    raise AnnotationFileError(f"{label}: cannot tell the format: expected CVAT XML (starting with '<') or "
                              f"Label Studio JSON (starting with '['), got {content[:20]!r}")


# ---- CVAT


_CVAT_BOX_ATTRIBUTES = ("label", "xtl", "ytl", "xbr", "ybr", "rotation")


class _CvatImage:
    __slots__ = ("id", "name", "labels", "n_tags", "others", "width", "height", "boxes")

    def __init__(self, attributes: dict[str, str]):
        self.id = attributes.get("id", "?")
        self.name = attributes.get("name")
        self.width = attributes.get("width")
        self.height = attributes.get("height")
        self.labels: dict[str | None, None] = {}  # distinct tag labels, in order
        self.n_tags = 0
        self.others: set[str] = set()  # other child elements (<box>, <polygon>, ...)
        self.boxes: list[dict[str, str | None]] = []  # when reading boxes: the attributes used, and "object_id"


class _CvatStream:
    """Reads a CVAT for images 1.1 file with expat, keeping only what the import uses: each
    top-level <image> (its id, name, tag labels and the names of other children), how many
    <track>s, and the usernames in <meta>. A DTD is refused outright: nothing in a CVAT export
    needs one, and entity declarations are how "billion laughs" and external-entity attacks work.
    """

    _USER_PATHS = {("meta", kind, who, "username") for kind in ("job", "task", "project") for who in ("assignee", "owner")}

    def __init__(self, label: str, *, boxes: bool = False):
        self.label = label
        self.read_boxes = boxes
        self.path: list[str] = []
        self.images: list[_CvatImage] = []
        self.current: _CvatImage | None = None
        self.box: dict[str, str | None] | None = None
        self.n_tracks = 0
        self.users: dict[tuple[str, str], str] = {}
        self.text: list[str] | None = None
        self.box_text: list[str] | None = None

    def parse(self, content: bytes) -> None:
        parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.StartDoctypeDeclHandler = self._refuse_dtd
        parser.EntityDeclHandler = self._refuse_dtd
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._data
        try:
            parser.Parse(content, True)
        except AnnotationFileError:  # raised by the handlers below (it is a ValueError too)
            raise
        except expat.ExpatError as error:
            raise AnnotationFileError(f"{self.label}: malformed XML ({error}); expected a CVAT for images 1.1 "
                                      f"annotations.xml") from error
        except (LookupError, ValueError) as error:  # the XML declaration names an encoding expat cannot use
            raise AnnotationFileError(f"{self.label}: cannot read the encoding the XML declaration names "
                                      f"({_short_text(str(error), 200)}); expected UTF-8, as CVAT writes") from error

    def _refuse_dtd(self, *_) -> None:
        raise AnnotationFileError(f"{self.label}: XML with a document type declaration (<!DOCTYPE ...>) is refused: "
                                  f"its entities can expand without bound or read other files, and CVAT exports "
                                  f"have none")

    def _start(self, name: str, attributes: dict[str, str]) -> None:
        depth = len(self.path) + 1
        if depth > MAX_XML_DEPTH:
            raise AnnotationFileError(f"{self.label}: XML nested deeper than {MAX_XML_DEPTH} elements; expected a "
                                      f"CVAT for images 1.1 file (a few levels deep)")
        if depth == 1 and name != "annotations":
            raise AnnotationFileError(f"{self.label}: expected a CVAT for images 1.1 file with <annotations> at the "
                                      f"top, got <{_short_text(name)}>")
        if depth == 2 and name == "image":
            self.current = _CvatImage(attributes)
        elif depth == 2 and name == "track":
            self.n_tracks += 1
        elif depth == 3 and self.current is not None:
            if name == "tag":
                self.current.labels.setdefault(attributes.get("label"))
                self.current.n_tags += 1
            elif name == "box" and self.read_boxes:
                self.box = {key: attributes.get(key) for key in _CVAT_BOX_ATTRIBUTES}
                self.box[OBJECT_ID_ATTRIBUTE] = None
                self.current.boxes.append(self.box)
            elif len(self.current.others) < 20:
                self.current.others.add(name)
        elif depth == 4 and self.box is not None and name == "attribute" \
                and attributes.get("name") == OBJECT_ID_ATTRIBUTE:
            self.box_text = []
        elif depth == 5 and tuple(self.path[1:]) + (name,) in self._USER_PATHS:
            self.text = []
        self.path.append(name)

    def _end(self, name: str) -> None:
        self.path.pop()
        depth = len(self.path) + 1
        if depth == 2 and name == "image" and self.current is not None:
            self.images.append(self.current)
            self.current = None
        elif depth == 3 and name == "box":
            self.box = None
        elif depth == 4 and self.box_text is not None:
            if self.box is not None and self.box[OBJECT_ID_ATTRIBUTE] is None:
                self.box[OBJECT_ID_ATTRIBUTE] = "".join(self.box_text).strip()
            self.box_text = None
        elif depth == 5 and self.text is not None:
            self.users.setdefault((self.path[2], self.path[3]), "".join(self.text).strip())
            self.text = None

    def _data(self, text: str) -> None:
        if self.text is not None and sum(map(len, self.text)) < 1000:
            self.text.append(text)
        elif self.box_text is not None and sum(map(len, self.box_text)) < 1000:
            self.box_text.append(text)

    def user(self) -> str | None:
        """The annotator CVAT names in <meta>: the job's or task's assignee, else its owner."""
        for kind in ("job", "task", "project"):
            for who in ("assignee", "owner"):
                if self.users.get((kind, who)):
                    return _short_text(self.users[(kind, who)], 200)
        return None


def _parse_cvat(label: str, content: bytes, *, boxes: bool = False) -> _CvatStream:
    """Stream-parse a CVAT for images file; a video export (tracks only) is refused."""
    stream = _CvatStream(label, boxes=boxes)
    stream.parse(content)
    if not stream.images and stream.n_tracks:
        raise AnnotationFileError(f"{label}: this is a 'CVAT for video' export (tracks); export the task as "
                                  f"'CVAT for images 1.1' instead")
    return stream


def _named_images(stream: _CvatStream, problems: _Problems):
    """``(image, item)`` for each <image> of the file; one without a name is a problem, skipped."""
    for image in stream.images:
        item = f"<image id={_short_text(image.id, 40)} name={_shown(image.name)}>"
        if not image.name:
            problems.add(item, "no image name", "expected a name attribute, found none")
            continue
        yield image, item


def _read_cvat(label: str, content: bytes, problems: _Problems) -> list[_Annotation]:
    stream = _parse_cvat(label, content)
    user = stream.user()
    annotations = []
    for image, item in _named_images(stream, problems):
        if not image.n_tags:
            found = (f" (found {', '.join('<' + _short_text(tag, 40) + '>' for tag in sorted(image.others))}; only "
                     f"image-level <tag> is read)") if image.others else ""
            problems.add(item, "no label", f"no label given{found}")
            continue
        if None in image.labels:
            problems.add(item, "no label", 'expected <tag label="..."> with a class name, got a tag without one')
            continue
        checked = [_check_class_name(value) for value in image.labels]
        why = next((why for _, why in checked if why), None)
        if why:
            problems.add(item, "not a class name", why)
            continue
        labels = list(dict.fromkeys(name for name, _ in checked))
        if len(labels) > 1:
            shown = ", ".join(_short_text(name, 60) for name in labels[:5]) + (" ..." if len(labels) > 5 else "")
            problems.add(item, "several labels", f"expected one class tag, found {len(labels)}: {shown}")
            continue
        annotations.append(_Annotation(item=item, sample_id=None, image_name=image.name, label=labels[0], user=user))
    return annotations


# ---- Label Studio


def _parse_time(value) -> dt.datetime:
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
        except ValueError:
            pass  # not a time stamp: sorts first, like a missing one
    return dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _labelstudio_user(value) -> str | None:
    def plain(part) -> str | None:
        if isinstance(part, str) and part:
            return _short_text(part, 200)
        if isinstance(part, int) and not isinstance(part, bool):
            return str(part)
        return None

    if isinstance(value, dict):
        return next((plain(value[key]) for key in ("email", "username", "id") if plain(value.get(key))), None)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"user {value}"
    return plain(value)


def _chosen_label(value, where: str) -> tuple[str | None, tuple[str, str] | None]:
    """The one class in a result value (``{"choices": [...]}``) or a JSON-MIN cell (a string,
    a list of strings): (label, None) or (None, (kind of problem, why not))."""
    choices = value.get("choices") if isinstance(value, dict) else value
    if isinstance(choices, str):
        choices = [choices]
    if not isinstance(choices, list) or not choices:
        return None, ("no label", f"expected {where} to hold one class, got {_json_value(value)}")
    labels = []
    for choice in choices:
        label, why = _check_class_name(choice)
        if why:
            return None, ("not a class name", why)
        labels.append(label)
    distinct = list(dict.fromkeys(labels))
    if len(distinct) != 1:
        shown = ", ".join(_short_text(name, 60) for name in distinct[:5]) + (" ..." if len(distinct) > 5 else "")
        return None, ("several labels", f"expected one class, got {len(distinct)}: {shown}")
    return distinct[0], None


def _image_of(data) -> str | None:
    url = data.get("image") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        return None
    try:
        parsed = urlparse(url)
    except ValueError:  # e.g. an unbalanced "[" in the host; then it is no URL, take it as a path
        return unquote(url)
    local = parse_qs(parsed.query).get("d")
    return unquote(local[0]) if local else unquote(parsed.path)


def _sample_id_of(container: dict, where: str) -> tuple[str | None, tuple[str, str] | None]:
    sample_id = container.get("sample_id")
    if sample_id is None or sample_id == "":
        return None, None
    if not isinstance(sample_id, str):
        return None, ("malformed task", f"expected {where} to be a string, got a JSON {_json_type(sample_id)}")
    return sample_id, None


def _label_studio_item(task, index: int) -> str:
    task_id = task.get("id") if isinstance(task, dict) else None
    if isinstance(task_id, str) and task_id:
        return f"task {_short_text(task_id, 60)}"
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        return f"task {task_id}"
    return f"item {index}"


def _load_labelstudio_tasks(label: str, content: bytes) -> list:
    try:
        tasks = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationFileError(f"{label}: malformed JSON ({_short_text(str(error), 200)}); expected a Label "
                                  f"Studio JSON export") from error
    except RecursionError as error:
        raise AnnotationFileError(f"{label}: JSON nested too deeply to read (Python's limit is about "
                                  f"{sys.getrecursionlimit()} levels); expected a Label Studio JSON export, whose "
                                  f"tasks nest a few levels") from error
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise AnnotationFileError(f"{label}: expected a Label Studio JSON export (a list of tasks), "
                                  f"got a JSON {_json_type(tasks)}")
    return tasks


def _read_labelstudio(label: str, content: bytes, problems: _Problems) -> list[_Annotation]:
    tasks = _load_labelstudio_tasks(label, content)
    annotations = []
    for index, task in enumerate(tasks):
        item = _label_studio_item(task, index)
        if not isinstance(task, dict):
            problems.add(item, "not a task", f"expected a task object, got a JSON {_json_type(task)}")
            continue
        if "annotations" in task or "data" in task:
            found = _labelstudio_full_task(task)
        else:
            found = _labelstudio_min_task(task)
        if isinstance(found, tuple):
            problems.add(item, *found)
        else:
            annotations.append(_Annotation(item=item, **found))
    return annotations


def _latest_annotation(task: dict) -> tuple[dict | None, tuple[str, str] | None]:
    """(the latest annotation that was not cancelled, None) or (None, (kind of problem, why not))."""
    entries = task.get("annotations") or []
    if not isinstance(entries, list):
        return None, ("malformed task", f"expected 'annotations' to be a list, got a JSON {_json_type(entries)}")
    usable = [entry for entry in entries if isinstance(entry, dict) and not entry.get("was_cancelled")]
    if not usable:
        return None, ("no label", ("no label given (every annotation was cancelled/skipped)" if entries
                                   else "no label given (not annotated)"))
    latest = max(enumerate(usable), key=lambda pair: (_parse_time(pair[1].get("updated_at") or pair[1].get("created_at")),
                                                      pair[0]))[1]
    results = latest.get("result") or []
    if not isinstance(results, list):
        return None, ("malformed task", f"expected the annotation's 'result' to be a list, got a JSON "
                                        f"{_json_type(results)}")
    return latest, None


def _labelstudio_full_task(task: dict) -> dict | tuple[str, str]:
    """The fields of an _Annotation, or (kind of problem, why not)."""
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    sample_id, problem = _sample_id_of(data, "data.sample_id")
    if problem:
        return problem
    where = {"sample_id": sample_id, "image_name": _image_of(data)}
    latest, problem = _latest_annotation(task)
    if problem:
        return problem
    results = latest.get("result") or []
    choice_results = [result for result in results if isinstance(result, dict) and result.get("type") == "choices"]
    named = [result for result in choice_results if result.get("from_name") == LABEL_STUDIO_FROM_NAME]
    chosen = named or choice_results
    if not chosen:
        return "no label", "no label given (the latest annotation has no 'choices' result)"
    label, problem = _chosen_label(chosen[0].get("value"), "value.choices")
    if problem:
        return problem
    return {**where, "label": label, "user": _labelstudio_user(latest.get("completed_by"))}


def _labelstudio_min_task(task: dict) -> dict | tuple[str, str]:
    sample_id, problem = _sample_id_of(task, "sample_id")
    if problem:
        return problem
    where = {"sample_id": sample_id, "image_name": _image_of(task)}
    for key in (LABEL_STUDIO_FROM_NAME, "choice", "choices"):
        if key in task:
            label, problem = _chosen_label(task[key], repr(key))
            if problem:
                return problem
            return {**where, "label": label, "user": _labelstudio_user(task.get("annotator"))}
    return "no label", "no label given (expected a 'label' or 'choice' key, or 'annotations')"


# ---- boxes (a fo.Detections field)


@dataclass(frozen=True)
class _ReturnedBox:
    """One box of a returned image, checked: a class name and a box inside the image."""

    item: str  # how problems name it, e.g. "<image id=0 name=...> box 2 (object_id ...)"
    object_id: str | None  # None: drawn by the annotator
    label: str
    bounding_box: tuple[float, float, float, float]  # relative [x, y, width, height], clipped to the image


@dataclass(frozen=True)
class _BoxAnnotation:
    """One returned image of a box task: its boxes, and the ids of boxes that could not be used."""

    item: str
    sample_id: str | None
    image_name: str | None
    boxes: tuple[_ReturnedBox, ...]
    held: frozenset[str]  # object ids of unusable boxes: their boxes are left as they are, never removed
    user: str | None = None
    n_unusable: int = 0  # boxes of this image that could not be used (each one a problem)


def _checked_box(x: float, y: float, width: float, height: float, shown: str) -> tuple[tuple | None, tuple | None]:
    """(the box clipped to the image, None) or (None, (kind of problem, why not)); all relative."""
    if not all(math.isfinite(value) for value in (x, y, width, height)):
        return None, ("malformed box", f"expected finite coordinates, got {shown}")
    if width < 0 or height < 0:
        return None, ("negative box size", f"the box has a negative width or height ({shown})")
    if width == 0 or height == 0:
        return None, ("empty box", f"the box has no area ({shown})")
    if x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + width > 1 + EDGE_TOLERANCE or y + height > 1 + EDGE_TOLERANCE:
        return None, ("box outside the image", f"the box reaches outside the image ({shown})")
    left, top = max(x, 0.0), max(y, 0.0)
    right, bottom = min(x + width, 1.0), min(y + height, 1.0)
    if right <= left or bottom <= top:
        return None, ("empty box", f"the box has no area inside the image ({shown})")
    return (left, top, right - left, bottom - top), None


def _number(value) -> float | None:
    """A finite-or-not float from an XML attribute or a JSON number; None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and len(value) <= 100:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _box_item(item: str, index: int, what: str, object_id: str | None) -> str:
    return f"{item} {what} {index}" + (f" ({OBJECT_ID_ATTRIBUTE} {_short_text(object_id, 40)})" if object_id else "")


def _read_cvat_boxes(label: str, content: bytes, problems: _Problems) -> list[_BoxAnnotation]:
    stream = _parse_cvat(label, content, boxes=True)
    user = stream.user()
    annotations = []
    for image, item in _named_images(stream, problems):
        width, height = _number(image.width), _number(image.height)
        if width is None or height is None or not (math.isfinite(width) and math.isfinite(height)) \
                or width <= 0 or height <= 0:
            problems.add(item, "no image size", f"expected positive width and height attributes in pixels, got "
                                                f"width={_shown(image.width)} height={_shown(image.height)}; its "
                                                f"boxes are left as they are")
            continue
        if image.others:
            shapes = ", ".join("<" + _short_text(tag, 40) + ">" for tag in sorted(image.others))
            problems.add(item, "not a box", f"found {shapes}; only <box> is read for boxes, the rest is ignored")
        boxes, held = [], set()
        for index, raw in enumerate(image.boxes):
            object_id = raw[OBJECT_ID_ATTRIBUTE] or None
            box_item = _box_item(item, index, "box", object_id)
            found, problem = _cvat_box_of(raw, width, height)
            if problem:
                problems.add(box_item, *problem)
                if object_id:
                    held.add(object_id)
                continue
            boxes.append(_ReturnedBox(box_item, object_id, *found))
        # A shape that is not a box counts as unusable too: the image is not fully read.
        annotations.append(_BoxAnnotation(item, None, image.name, tuple(boxes), frozenset(held), user,
                                          len(image.boxes) - len(boxes) + len(image.others)))
    return annotations


def _cvat_box_of(raw: dict, width: float, height: float) -> tuple[tuple | None, tuple | None]:
    """((class, relative box), None) or (None, (kind of problem, why not)) for one <box>."""
    if raw["label"] is None:
        return None, ("no label", 'expected <box label="...">, got a box without one')
    name, why = _check_class_name(raw["label"])
    if why:
        return None, ("not a class name", why)
    corners = [_number(raw[key]) for key in ("xtl", "ytl", "xbr", "ybr")]
    shown = " ".join(f"{key}={_shown(raw[key])}" for key in ("xtl", "ytl", "xbr", "ybr"))
    if any(value is None for value in corners):
        return None, ("malformed box", f"expected numbers for xtl, ytl, xbr, ybr (pixels), got {shown}")
    rotation = _number(raw["rotation"]) if raw["rotation"] is not None else 0.0
    if _is_rotated(rotation):
        return None, ("rotated box", f"the box is rotated ({_shown(raw['rotation'])} degrees); only upright boxes can "
                                     f"be stored")
    left, top, right, bottom = corners
    box, problem = _checked_box(left / width, top / height, (right - left) / width, (bottom - top) / height,
                                f"{shown} in an image of {width:g} x {height:g} pixels")
    return (None, problem) if problem else ((name, box), None)


def _read_labelstudio_boxes(label: str, content: bytes, problems: _Problems) -> list[_BoxAnnotation]:
    annotations = []
    for index, task in enumerate(_load_labelstudio_tasks(label, content)):
        item = _label_studio_item(task, index)
        if not isinstance(task, dict):
            problems.add(item, "not a task", f"expected a task object, got a JSON {_json_type(task)}")
            continue
        if "annotations" not in task and "data" not in task:
            problems.add(item, "no box ids", "this is Label Studio's JSON-MIN export, which leaves the region ids out, "
                                             "so its boxes cannot be matched to the dataset's; export as JSON instead")
            continue
        found = _labelstudio_task_boxes(task, item, problems)
        if isinstance(found, tuple):
            problems.add(item, *found)
        else:
            annotations.append(found)
    return annotations


def _labelstudio_task_boxes(task: dict, item: str, problems: _Problems) -> _BoxAnnotation | tuple[str, str]:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    sample_id, problem = _sample_id_of(data, "data.sample_id")
    if problem:
        return problem
    latest, problem = _latest_annotation(task)
    if problem:
        return problem
    boxes, held, n_unusable = [], set(), 0
    for index, result in enumerate(latest.get("result") or []):
        if not isinstance(result, dict) or result.get("type") != "rectanglelabels":
            continue
        region_id = result.get("id")
        object_id = region_id if isinstance(region_id, str) and region_id else None
        box_item = _box_item(item, index, "region", object_id)
        found, problem = _labelstudio_box_of(result.get("value"))
        if problem:
            problems.add(box_item, *problem)
            n_unusable += 1
            if object_id:
                held.add(object_id)
            continue
        boxes.append(_ReturnedBox(box_item, object_id, *found))
    return _BoxAnnotation(item, sample_id, _image_of(data), tuple(boxes), frozenset(held),
                          _labelstudio_user(latest.get("completed_by")), n_unusable)


def _labelstudio_box_of(value) -> tuple[tuple | None, tuple | None]:
    """((class, relative box), None) or (None, (kind of problem, why not)) for one region's value."""
    if not isinstance(value, dict):
        return None, ("malformed box", f"expected the region's 'value' to be an object, got {_json_value(value)}")
    name, problem = _chosen_label(value.get("rectanglelabels"), "value.rectanglelabels")
    if problem:
        return None, problem
    numbers = {key: _number(value.get(key)) if not isinstance(value.get(key), str) else None
               for key in ("x", "y", "width", "height")}
    shown = ", ".join(f"{key}={_shown(value.get(key))}" for key in numbers) + " (percent)"
    if any(number is None for number in numbers.values()):
        return None, ("malformed box", f"expected numbers for x, y, width, height, got {shown}")
    rotation = value.get("rotation", 0)
    rotation = 0.0 if rotation is None else _number(rotation) if not isinstance(rotation, str) else None
    if _is_rotated(rotation):
        return None, ("rotated box", f"the box is rotated ({_shown(value.get('rotation'))} degrees); only upright "
                                     f"boxes can be stored")
    box, problem = _checked_box(numbers["x"] / 100, numbers["y"] / 100, numbers["width"] / 100,
                                numbers["height"] / 100, shown)
    return (None, problem) if problem else ((name, box), None)


def _iou(a, b) -> float:
    """Intersection over union of two [x, y, width, height] boxes."""
    if a is None or b is None:
        return 0.0
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _box_list(detections) -> list:
    """The detections of a ``fo.Detections`` value, which may be None or hold None."""
    return list((detections.detections if detections is not None else None) or [])


def _is_rotated(rotation: float | None) -> bool:
    """True for a rotation that is not a whole turn (or is no number at all)."""
    if rotation is None or not math.isfinite(rotation):
        return True
    turn = rotation % 360
    return min(turn, 360 - turn) > 0.01


def _field_of(detection, name: str):
    return detection.get_field(name) if detection.has_field(name) else None


class _BoxPlanner:
    """Turns the matched images of a box task into object changes (nothing is written here)."""

    def __init__(self, result: ImportResult, problems: _Problems, *, known: set[str], label_field: str, tool: str,
                 decision_source: str):
        from curation.object_decisions import ObjectChange

        self.change = ObjectChange
        self.result = result
        self.problems = problems
        self.known = known
        self.label_field = label_field
        self.tool = tool
        self.decision_source = decision_source
        self.changes: list = []
        self.clean: list[str] = []  # samples whose every returned box could be used

    def _unknown_class(self, box: _ReturnedBox) -> None:
        shown = ", ".join(_short_text(name, 40) for name in sorted(self.known)[:10])
        more = f" (and {len(self.known) - 10} more)" if len(self.known) > 10 else ""
        self.problems.add(box.item, "unknown class", f"class {_shown(box.label)} is not a class of "
                                                     f"{self.label_field!r} nor of the task; known: "
                                                     f"{shown or 'none'}{more}")

    def plan(self, sample_id: str, annotation: _BoxAnnotation, detections, sent: tuple[str, ...]) -> None:
        by_id = {detection.id: detection for detection in _box_list(detections)}
        by = f" by {annotation.user}" if annotation.user else ""
        seen = set(annotation.held) & set(by_id)
        clean = not annotation.n_unusable
        for box in annotation.boxes:
            existing = by_id.get(box.object_id) if box.object_id and box.object_id not in seen else None
            if box.label not in self.known:
                self._unknown_class(box)
                clean = False
                if existing is not None:
                    seen.add(existing.id)
                continue
            if existing is None:  # drawn by the annotator (or a copy of another box)
                self._plan_new(sample_id, box, by_id, seen, by)
            else:
                seen.add(existing.id)
                self._plan_existing(sample_id, box, existing, by)
        for object_id in sent:
            detection = by_id.get(object_id)
            if detection is None or object_id in seen or _field_of(detection, "decision") == "remove":
                continue
            self.changes.append(self.change(sample_id, "remove", object_id, reason=f"deleted in {self.tool}{by}"))
            self.result.boxes_removed.append((sample_id, object_id, detection.label))
        if clean:
            self.clean.append(sample_id)

    def _plan_new(self, sample_id: str, box: _ReturnedBox, by_id: dict, seen: set[str], by: str) -> None:
        for detection in by_id.values():  # added by an earlier run of this import?
            if (detection.id not in seen and _field_of(detection, "decision") == "added"
                    and _field_of(detection, "decision_source") == self.decision_source and detection.label == box.label
                    and _iou(detection.bounding_box, box.bounding_box) >= MOVED_IOU):
                seen.add(detection.id)
                self.result.already_applied.append(detection.id)
                return
        self.changes.append(self.change(sample_id, "added", label=box.label, bounding_box=box.bounding_box,
                                        reason=f"drawn in {self.tool}{by}"))
        self.result.boxes_added.append((sample_id, box.label, box.bounding_box))

    def _plan_existing(self, sample_id: str, box: _ReturnedBox, existing, by: str) -> None:
        decision = _field_of(existing, "decision")
        if decision == "remove":
            self.problems.add(box.item, "removed box", "this box was removed in the dataset after the export; it stays "
                                                       "removed (undo the removal there to bring it back)")
            return
        old_label, old_box = existing.label, existing.bounding_box
        relabelled = box.label != old_label and box.label != (old_label or "").strip()
        moved = _iou(old_box, box.bounding_box) < MOVED_IOU
        if not relabelled and not moved:
            if _field_of(existing, "decision_source") == self.decision_source and decision is not None:
                self.result.already_applied.append(existing.id)
                return
            self.result.boxes_confirmed.append(existing.id)
            if decision is None:  # a box decided before keeps that decision
                self.changes.append(self.change(sample_id, "keep", existing.id, reason=f"confirmed in {self.tool}{by}"))
            return
        if relabelled:
            self.result.boxes_relabelled.append((sample_id, existing.id, old_label, box.label))
        if moved:
            self.result.boxes_moved.append((sample_id, existing.id, tuple(old_box or ()), box.bounding_box))
            what = f"moved in {self.tool}{by}" + (f", relabelled {old_label} -> {box.label}" if relabelled else "")
            self.changes.append(self.change(sample_id, "moved", existing.id, label=box.label if relabelled else None,
                                            bounding_box=box.bounding_box, reason=what))
        else:
            self.changes.append(self.change(sample_id, "relabel", existing.id, label=box.label,
                                            reason=f"corrected in {self.tool}{by}"))


def _import_boxes(dataset, source: _Source, chosen: str, problems: _Problems, *, label_field: str,
                  dry_run: bool) -> ImportResult:
    reader = _read_cvat_boxes if chosen == "cvat" else _read_labelstudio_boxes
    matched = _match_samples(dataset, source, reader(source.label, source.content, problems), problems)
    tool = TOOL_NAMES[chosen]
    decision_source = f"{chosen}:{source.file_name}"
    result = ImportResult(format=chosen, dry_run=dry_run, kind=DETECTIONS)
    ids = list(matched)
    current = dict(zip(ids, dataset.select(ids, ordered=True).values(label_field))) if ids else {}
    sent: dict[str, tuple[str, ...]] = {}
    for sample_id in ids:
        if sample_id in source.sent_boxes:
            sent[sample_id] = source.sent_boxes[sample_id]
        else:  # no mapping.json (an upload of CVAT's own zip): every box the sample holds was sent
            sent[sample_id] = tuple(detection.id for detection in _box_list(current[sample_id])
                                    if _field_of(detection, "decision") != "remove")
    _refuse_without_ids(source.label, matched, current, sent)
    known = {name for name in dataset.distinct(f"{label_field}.detections.label") if name is not None}
    planner = _BoxPlanner(result, problems, known=known | set(source.task_classes), label_field=label_field,
                          tool=tool, decision_source=decision_source)
    for sample_id in ids:
        planner.plan(sample_id, matched[sample_id], current[sample_id], sent[sample_id])
    result.problems, result.n_problems, result.problem_kinds = problems.listed, problems.total, problems.kinds
    if planner.clean and dataset.has_sample_field("decision"):
        decisions = dict(zip(planner.clean, dataset.select(planner.clean, ordered=True).values("decision")))
        result.reviewed = [sample_id for sample_id in planner.clean if decisions[sample_id] == "annotate"]
    if not dry_run and (planner.changes or result.reviewed):
        result.added_ids = _write_box_changes(dataset, source.label, planner.changes, result.reviewed,
                                              label_field=label_field, source=decision_source,
                                              reason=f"boxes reviewed in {tool}")
    logger.info("%s: %s", source.label, result.summary())
    return result


def _refuse_without_ids(label: str, matched: dict[str, _BoxAnnotation], current: dict, sent: dict) -> None:
    """Refuse a file in which no returned box carries the id of a box that was sent: the task's
    boxes never reached the tool (or lost their ids there), and reading it would delete them all."""
    n_sent = 0
    for sample_id, annotation in matched.items():
        held = {detection.id for detection in _box_list(current[sample_id])}
        ids = set(sent[sample_id]) & held
        n_sent += len(ids)
        returned = {box.object_id for box in annotation.boxes} | set(annotation.held)
        if ids & returned:
            return
    if n_sent:
        raise AnnotationFileError(
            f"{label}: none of the {len(matched)} returned image(s) holds a box with the id of one of the {n_sent} "
            f"box(es) sent; refused, since reading it would delete them all. In CVAT, upload the task's "
            f"annotations.xml (or task.zip) before annotating and keep the {OBJECT_ID_ATTRIBUTE!r} attribute; in "
            f"Label Studio, start each annotation from the prediction and export as JSON")


def _write_box_changes(dataset, label: str, changes: list, reviewed: list[str], *, label_field: str, source: str,
                       reason: str) -> list[str]:
    """Write the box changes, then mark the reviewed samples "keep" (they leave the annotation
    queue): one automatic snapshot before both."""
    from pymongo.errors import PyMongoError

    from curation.object_decisions import apply_object_changes
    from curation.snapshots import bulk_change

    n_samples = len({change.sample_id for change in changes} | set(reviewed))
    try:
        with bulk_change(dataset, f"importing {len(changes)} box corrections from {label}", n_samples):
            added = apply_object_changes(dataset, label_field, changes, source=source)
            if reviewed:
                record_decision(dataset, reviewed, "keep", reason=reason, source=source)
            return added
    except PyMongoError as error:
        why = f"{type(error).__name__}: {_short_text(str(error), 200)}"
        raise ImportInterruptedError(f"{label}: the database failed while writing {len(changes)} box correction(s) "
                                     f"on {n_samples} sample(s) ({why}); rerun the same import to finish: boxes "
                                     f"already written are recognised and left as they are") from error


# ---- applying


def import_annotations(
    dataset,
    path: str | os.PathLike,
    *,
    label_field: str,
    format: str | None = None,
    dry_run: bool = False,
) -> ImportResult:
    """Bring the labels people set in CVAT or Label Studio back into the dataset.

    Reads CVAT for images 1.1 (``annotations.xml``, a folder or a zip holding it; one
    image-level ``<tag>`` per image) or a Label Studio export (JSON: the latest annotation
    that was not cancelled; JSON-MIN: the ``label``/``choice`` key). A label that differs
    from the dataset's is applied with :func:`curation.decisions.apply_relabel` (the
    original stays in ``previous_label``); an unchanged one is recorded as "keep". Both name
    the tool and file in ``decision_source`` (``"cvat:annotations.xml"``,
    ``"labelstudio:export.json"``). Every item is checked before the first write; see the
    module docstring for what happens to bad items and hostile files.

    For a ``fo.Detections`` field the boxes are read instead (CVAT ``<box>``; Label Studio
    ``rectanglelabels`` regions of the latest annotation) and applied as object decisions;
    see the module docstring. An automatic snapshot is taken before a bulk change.

    Args:
        dataset: the FiftyOne dataset the task was exported from.
        path: the exported file, a zip, or a folder holding ``annotations.xml``.
        label_field: the ``fo.Classification`` field to update, or the ``fo.Detections`` field
            whose boxes were sent.
        format: ``"cvat"`` or ``"labelstudio"``; None detects it from the content.
        dry_run: compute the result without writing anything.

    Returns:
        An :class:`ImportResult`; items that could not be used (unknown image or sample id,
        no label, a label that is not a class name, several labels) are counted in
        ``n_problems``, the first of them listed in ``problems``, and skipped; the others
        are applied.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AnnotationFileError: the file is not readable as the format (empty, malformed or
            too deeply nested XML/JSON, a DTD, wrong top-level structure, too large, a
            broken zip), or, for boxes, no box in it carries the id of a box sent; the
            message names the file (and the zip member).
        CurationInputError: (a ValueError) unknown format, or no label field or one that
            is neither classification nor detections.
        ImportInterruptedError: the database failed while writing; run the import again.
    """
    if format is not None:
        _validate_format(format)
    kind = _validate_label_field(dataset, label_field)
    return _import(dataset, _source_from_path(Path(path)), label_field=label_field, kind=kind, format=format,
                   dry_run=dry_run)


def import_annotations_from_bytes(
    dataset,
    data: bytes,
    *,
    label_field: str,
    format: str | None = None,
    name_hint: str = "",
    dry_run: bool = False,
) -> ImportResult:
    """:func:`import_annotations` for a file held in memory, such as a browser upload.

    The format is detected from the content: a zip (CVAT's export, holding annotations.xml,
    or a zipped Label Studio JSON), XML (CVAT) or JSON (Label Studio). The bytes are parsed
    in memory and never written anywhere; ``name_hint`` (the uploaded file's name) is used
    only in messages and ``decision_source``, reduced to its last component, never as a path.
    A zip's ``mapping.json`` is used when present; there is no folder to look beside.

    Args:
        dataset: the FiftyOne dataset the task was exported from.
        data: the file's content.
        label_field: the ``fo.Classification`` or ``fo.Detections`` field to update.
        format: ``"cvat"`` or ``"labelstudio"``; None detects it from the content.
        name_hint: the file's name as the user gave it, e.g. ``"task_7.zip"``; default "upload".
        dry_run: compute the result without writing anything.

    Returns:
        An :class:`ImportResult`, as :func:`import_annotations`.

    Raises:
        AnnotationFileError, CurationInputError, ImportInterruptedError: as
            :func:`import_annotations`; CurationInputError also when ``data`` is not bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CurationInputError(f"import_annotations_from_bytes: expected the file's content as bytes, "
                                 f"got {type(data).__name__}")
    if format is not None:
        _validate_format(format)
    kind = _validate_label_field(dataset, label_field)
    return _import(dataset, _source_from_bytes(bytes(data), name_hint), label_field=label_field, kind=kind,
                   format=format, dry_run=dry_run)


def _match_samples(dataset, source: _Source, annotations: list, problems: _Problems) -> dict:
    """sample id -> the first item of the file that names it; the others become problems."""
    matcher = _SampleMatcher(dataset, source.mapping)
    matched = {}
    for annotation in annotations:
        sample_id, why_not = matcher.match(annotation)
        if sample_id is None:
            problems.add(annotation.item, *why_not)
        elif sample_id in matched:
            problems.add(annotation.item, "repeated sample", f"sample {sample_id} appears again (first in "
                                                             f"{matched[sample_id].item}); only the first is used")
        else:
            matched[sample_id] = annotation
    return matched


def _import(dataset, source: _Source, *, label_field: str, kind: str, format: str | None,
            dry_run: bool) -> ImportResult:
    chosen = format or _detect_format(source.label, source.content)
    problems = _Problems(source.label)
    if source.mapping_problem:
        problems.add_line("unreadable mapping.json", source.mapping_problem)
    if kind == DETECTIONS:
        return _import_boxes(dataset, source, chosen, problems, label_field=label_field, dry_run=dry_run)
    reader = _read_cvat if chosen == "cvat" else _read_labelstudio
    matched: dict[str, _Annotation] = _match_samples(dataset, source, reader(source.label, source.content, problems),
                                                     problems)

    tool = TOOL_NAMES[chosen]
    decision_source = f"{chosen}:{source.file_name}"
    result = ImportResult(format=chosen, dry_run=dry_run)
    relabels: dict[tuple[str, str], list[str]] = {}
    keeps: dict[str, list[str]] = {}
    for sample_id, (label, decision, earlier_source) in _current_state(dataset, list(matched), label_field).items():
        annotation = matched[sample_id]
        by = f" by {annotation.user}" if annotation.user else ""
        # A label with blanks around it comes back stripped; that is the same class.
        same = annotation.label == label or (label is not None and annotation.label == label.strip())
        if same and earlier_source == decision_source and decision in ("keep", "relabel"):
            result.already_applied.append(sample_id)
        elif same:
            result.confirmed.append(sample_id)
            keeps.setdefault(f"confirmed in {tool}{by}", []).append(sample_id)
        else:
            result.changed.append((sample_id, label, annotation.label))
            relabels.setdefault((annotation.label, f"corrected in {tool}{by}"), []).append(sample_id)
    known_classes = {value for value in dataset.distinct(f"{label_field}.label") if value is not None}
    result.new_classes = sorted({new for _, _, new in result.changed} - known_classes)
    result.problems, result.n_problems, result.problem_kinds = problems.listed, problems.total, problems.kinds

    if not dry_run:
        _write_decisions(dataset, source.label, relabels, keeps, label_field=label_field, source=decision_source)
    logger.info("%s: %s", source.label, result.summary())
    return result


def _current_state(dataset, ids: list[str], label_field: str) -> dict[str, tuple[str | None, str | None, str | None]]:
    """sample id -> (current label, decision, decision_source), in the order of ``ids``."""
    if not ids:
        return {}
    view = dataset.select(ids, ordered=True)
    labels = view.values(f"{label_field}.label")
    decisions = view.values("decision") if dataset.has_sample_field("decision") else [None] * len(ids)
    sources = view.values("decision_source") if dataset.has_sample_field("decision_source") else [None] * len(ids)
    return {sample_id: state for sample_id, *state in zip(view.values("id"), labels, decisions, sources)}


def _write_decisions(dataset, label: str, relabels: dict[tuple[str, str], list[str]], keeps: dict[str, list[str]],
                     *, label_field: str, source: str) -> None:
    """Write the checked decisions: one bulk update per (class, annotator) and per annotator."""
    from pymongo.errors import PyMongoError

    from curation.snapshots import bulk_change

    total = sum(map(len, relabels.values())) + sum(map(len, keeps.values()))
    written = 0
    try:
        with bulk_change(dataset, f"importing {total} corrected labels from {label}", total):
            for (new_label, reason), sample_ids in relabels.items():
                apply_relabel(dataset, sample_ids, new_label, label_field=label_field, reason=reason, source=source)
                written += len(sample_ids)
            for reason, sample_ids in keeps.items():
                record_decision(dataset, sample_ids, "keep", reason=reason, source=source)
                written += len(sample_ids)
    except PyMongoError as error:
        raise ImportInterruptedError(f"{label}: the database failed after {written} of {total} sample(s) were "
                                     f"written ({type(error).__name__}: {_short_text(str(error), 200)}); rerun the "
                                     f"same import to finish: samples already written are left as they are") from error
