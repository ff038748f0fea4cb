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
    """

    out_dir: Path
    format: str
    n_samples: int
    classes: list[str]
    files: list[Path]


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

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        parts = [f"{verb} {len(self.changed)} label(s)", f"confirmed {len(self.confirmed)}"]
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
class _TaskItem:
    sample_id: str
    source: Path
    image_name: str
    label: str | None
    width: int
    height: int


def _validate_format(format: str) -> None:
    if format not in EXPORT_FORMATS:
        raise CurationInputError(f"unknown annotation format {format!r}. Available: {', '.join(EXPORT_FORMATS)}")


def _validate_label_field(dataset, label_field: str | None) -> None:
    import fiftyone as fo

    if not isinstance(label_field, str) or not label_field:
        raise CurationInputError(f"dataset {dataset.name!r} has no classification label field to relabel "
                                 f"(got label_field={label_field!r}); expected a field of fo.Classification: "
                                 f"pass its name (on the command line: --label-field)")
    if not dataset.has_sample_field(label_field):
        raise CurationInputError(f"dataset {dataset.name!r} has no field {label_field!r}; "
                         f"expected a field of fo.Classification")
    field_ = dataset.get_field(label_field)
    document_type = getattr(field_, "document_type", None)
    if document_type is not fo.Classification:
        found = document_type.__name__ if document_type is not None else type(field_).__name__
        raise CurationInputError(f"field {label_field!r} of dataset {dataset.name!r}: expected fo.Classification, got {found}")


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


def _task_items(dataset, ids: list[str], label_field: str) -> list[_TaskItem]:
    from curation.images import image_info

    view = dataset.select(ids, ordered=True)
    filepaths = view.values("filepath")
    labels = view.values(f"{label_field}.label")
    items, missing, unreadable = [], [], []
    for sample_id, filepath, label in zip(ids, filepaths, labels):
        source = Path(filepath)
        if not source.is_file():
            missing.append(f"{source} (sample {sample_id})")
            continue
        size = image_info(source)
        if size is None:
            unreadable.append(f"{source} (sample {sample_id})")
            continue
        items.append(_TaskItem(sample_id, source, f"{sample_id}{_image_suffix(source)}", label, *size))
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


def _task_classes(dataset, label_field: str, items: list[_TaskItem], classes: list[str] | None) -> list[str]:
    used = {item.label for item in items if item.label is not None}
    if classes is None:
        every = {label for label in dataset.distinct(f"{label_field}.label") if label is not None}
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


def _write_mapping(folder: Path, dataset, label_field: str, format: str, items: list[_TaskItem]) -> Path:
    path = folder / MAPPING_FILE
    path.write_text(json.dumps({
        "dataset": dataset.name,
        "label_field": label_field,
        "format": format,
        "exported_at": now_iso(),
        "images": {item.image_name: {"sample_id": item.sample_id, "filepath": str(item.source), "label": item.label}
                   for item in items},
    }, indent=2), encoding="utf-8")
    return path


def _cvat_annotations_xml(name: str, items: list[_TaskItem], classes: list[str]) -> ET.ElementTree:
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
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")
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
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return tree


def _write_cvat(folder: Path, dataset, items: list[_TaskItem], classes: list[str]) -> list[Path]:
    xml_path = folder / "annotations.xml"
    _cvat_annotations_xml(dataset.name, items, classes).write(xml_path, encoding="utf-8", xml_declaration=True)
    zip_path = folder / "task.zip"
    # Images are already compressed; storing them keeps the zip fast to write.
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(xml_path, "annotations.xml")
        for item in items:
            archive.write(folder / IMAGES_DIR / item.image_name, f"{IMAGES_DIR}/{item.image_name}",
                          compress_type=zipfile.ZIP_STORED)
    readme = folder / "README.txt"
    readme.write_text(_CVAT_README.format(n=len(items), classes=", ".join(classes)), encoding="utf-8")
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


def _label_config_xml(classes: list[str]) -> str:
    view = ET.Element("View")
    ET.SubElement(view, "Image", {"name": LABEL_STUDIO_TO_NAME, "value": "$image"})
    choices = ET.SubElement(view, "Choices", {"name": LABEL_STUDIO_FROM_NAME, "toName": LABEL_STUDIO_TO_NAME,
                                              "choice": "single-radio", "showInline": "true"})
    for class_name in classes:
        ET.SubElement(choices, "Choice", {"value": class_name})
    ET.indent(view, space="  ")
    return ET.tostring(view, encoding="unicode") + "\n"


def _write_labelstudio(folder: Path, final_dir: Path, items: list[_TaskItem], classes: list[str],
                       image_url_prefix: str) -> list[Path]:
    tasks = []
    for item in items:
        task = {"data": {"image": f"{image_url_prefix}{item.image_name}", "sample_id": item.sample_id}}
        if item.label is not None:
            task["predictions"] = [{"model_version": MODEL_VERSION, "result": [{
                "from_name": LABEL_STUDIO_FROM_NAME, "to_name": LABEL_STUDIO_TO_NAME, "type": "choices",
                "value": {"choices": [item.label]}}]}]
        else:
            task["predictions"] = []
        tasks.append(task)
    tasks_path = folder / "tasks.json"
    tasks_path.write_text(json.dumps(tasks, indent=2, ensure_ascii=False), encoding="utf-8")
    config_path = folder / "label_config.xml"
    config_path.write_text(_label_config_xml(classes), encoding="utf-8")
    readme = folder / "README.txt"
    readme.write_text(_LABEL_STUDIO_README.format(n=len(items), out_dir=final_dir.resolve(),
                                                  prefix=image_url_prefix), encoding="utf-8")
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
        label_field: the ``fo.Classification`` field holding the labels.
        sample_ids: the samples to export; None exports those with ``decision == "annotate"``.
        classes: the classes annotators may choose; None offers every label of the dataset.
            Must include the current labels of the exported samples.
        overwrite: replace an existing ``out_dir``.
        image_url_prefix: Label Studio only: prepended to each image name to form its URL.
            The default suits Label Studio's local-file serving (see the README it writes).

    Returns:
        A :class:`TaskExport`.

    Raises:
        CurationInputError: (a ValueError) unknown format, no or a non-classification label
            field, unknown sample ids, no sample marked for annotation, classes missing a
            current label, or a class name with a control character XML cannot carry.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        FileNotFoundError: a sample's image file is missing.
    """
    _validate_format(format)
    _validate_label_field(dataset, label_field)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    ids = _select_samples(dataset, sample_ids)
    items = _task_items(dataset, ids, label_field)
    task_classes = _task_classes(dataset, label_field, items, classes)

    # 0o755: the images must stay readable to a Label Studio running as another user.
    with atomic_directory(out_dir, overwrite=overwrite, mode=0o755) as staging:
        (staging / IMAGES_DIR).mkdir()
        for item in items:
            _copy_image(item.source, staging / IMAGES_DIR / item.image_name)
        written = [_write_mapping(staging, dataset, label_field, format, items)]
        if format == "cvat":
            written += _write_cvat(staging, dataset, items, task_classes)
        else:
            written += _write_labelstudio(staging, out_dir, items, task_classes, image_url_prefix)
        written += [staging / IMAGES_DIR / item.image_name for item in items]
        relative = [path.relative_to(staging) for path in written]
    files = sorted(out_dir / path for path in relative)
    logger.info("exported %d samples for %s to %s", len(items), TOOL_NAMES[format], out_dir)
    return TaskExport(out_dir=out_dir, format=format, n_samples=len(items), classes=task_classes, files=files)



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


def _parse_mapping(content: bytes, label: str) -> tuple[dict[str, str], str | None]:
    """(image name -> sample id, None), or ({}, why the mapping is ignored)."""
    ignored = "; matching by sample id and file name only"
    try:
        data = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        return {}, f"{label}: ignored: not readable JSON ({_short_text(str(error), 200)}){ignored}"
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, dict) or not all(isinstance(entry, dict) and isinstance(entry.get("sample_id"), str)
                                               for entry in images.values()):
        return {}, f'{label}: ignored: expected {{"images": {{image name: {{"sample_id": ...}}}}}}{ignored}'
    return {name: entry["sample_id"] for name, entry in images.items()}, None


def _mapping_beside(folder: Path) -> tuple[dict[str, str], str | None]:
    path = folder / MAPPING_FILE
    if not path.is_file():
        return {}, None
    try:
        return _parse_mapping(_read_file(path, str(path)), str(path))
    except AnnotationFileError as error:
        return {}, f"{error}; ignored"


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
            mapping, mapping_problem = _parse_mapping(_read_member(archive, inside[0], mapping_label), mapping_label)
        except AnnotationFileError as error:
            mapping, mapping_problem = {}, f"{error}; ignored"
    elif folder is not None:
        mapping, mapping_problem = _mapping_beside(folder)
    else:
        mapping, mapping_problem = {}, None
    return _Source(label, file_name, content, mapping, mapping_problem)


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


class _CvatImage:
    __slots__ = ("id", "name", "labels", "n_tags", "others")

    def __init__(self, attributes: dict[str, str]):
        self.id = attributes.get("id", "?")
        self.name = attributes.get("name")
        self.labels: dict[str | None, None] = {}  # distinct tag labels, in order
        self.n_tags = 0
        self.others: set[str] = set()  # other child elements (<box>, <polygon>, ...)


class _CvatStream:
    """Reads a CVAT for images 1.1 file with expat, keeping only what the import uses: each
    top-level <image> (its id, name, tag labels and the names of other children), how many
    <track>s, and the usernames in <meta>. A DTD is refused outright: nothing in a CVAT export
    needs one, and entity declarations are how "billion laughs" and external-entity attacks work.
    """

    _USER_PATHS = {("meta", kind, who, "username") for kind in ("job", "task", "project") for who in ("assignee", "owner")}

    def __init__(self, label: str):
        self.label = label
        self.path: list[str] = []
        self.images: list[_CvatImage] = []
        self.current: _CvatImage | None = None
        self.n_tracks = 0
        self.users: dict[tuple[str, str], str] = {}
        self.text: list[str] | None = None

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
            elif len(self.current.others) < 20:
                self.current.others.add(name)
        elif depth == 5 and tuple(self.path[1:]) + (name,) in self._USER_PATHS:
            self.text = []
        self.path.append(name)

    def _end(self, name: str) -> None:
        self.path.pop()
        depth = len(self.path) + 1
        if depth == 2 and name == "image" and self.current is not None:
            self.images.append(self.current)
            self.current = None
        elif depth == 5 and self.text is not None:
            self.users.setdefault((self.path[2], self.path[3]), "".join(self.text).strip())
            self.text = None

    def _data(self, text: str) -> None:
        if self.text is not None and sum(map(len, self.text)) < 1000:
            self.text.append(text)

    def user(self) -> str | None:
        """The annotator CVAT names in <meta>: the job's or task's assignee, else its owner."""
        for kind in ("job", "task", "project"):
            for who in ("assignee", "owner"):
                if self.users.get((kind, who)):
                    return _short_text(self.users[(kind, who)], 200)
        return None


def _read_cvat(label: str, content: bytes, problems: _Problems) -> list[_Annotation]:
    stream = _CvatStream(label)
    stream.parse(content)
    if not stream.images and stream.n_tracks:
        raise AnnotationFileError(f"{label}: this is a 'CVAT for video' export (tracks); export the task as "
                                  f"'CVAT for images 1.1' instead")
    user = stream.user()
    annotations = []
    for image in stream.images:
        item = f"<image id={_short_text(image.id, 40)} name={_shown(image.name)}>"
        if not image.name:
            problems.add(item, "no image name", "expected a name attribute, found none")
            continue
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


def _read_labelstudio(label: str, content: bytes, problems: _Problems) -> list[_Annotation]:
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


def _labelstudio_full_task(task: dict) -> dict | tuple[str, str]:
    """The fields of an _Annotation, or (kind of problem, why not)."""
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    sample_id, problem = _sample_id_of(data, "data.sample_id")
    if problem:
        return problem
    where = {"sample_id": sample_id, "image_name": _image_of(data)}
    entries = task.get("annotations") or []
    if not isinstance(entries, list):
        return "malformed task", f"expected 'annotations' to be a list, got a JSON {_json_type(entries)}"
    usable = [entry for entry in entries if isinstance(entry, dict) and not entry.get("was_cancelled")]
    if not usable:
        return "no label", ("no label given (every annotation was cancelled/skipped)" if entries
                            else "no label given (not annotated)")
    latest = max(enumerate(usable), key=lambda pair: (_parse_time(pair[1].get("updated_at") or pair[1].get("created_at")),
                                                      pair[0]))[1]
    results = latest.get("result") or []
    if not isinstance(results, list):
        return "malformed task", f"expected the annotation's 'result' to be a list, got a JSON {_json_type(results)}"
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

    Args:
        dataset: the FiftyOne dataset the task was exported from.
        path: the exported file, a zip, or a folder holding ``annotations.xml``.
        label_field: the ``fo.Classification`` field to update.
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
            broken zip); the message names the file (and the zip member).
        CurationInputError: (a ValueError) unknown format, or no or a non-classification
            label field.
        ImportInterruptedError: the database failed while writing; run the import again.
    """
    if format is not None:
        _validate_format(format)
    _validate_label_field(dataset, label_field)
    return _import(dataset, _source_from_path(Path(path)), label_field=label_field, format=format, dry_run=dry_run)


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
        label_field: the ``fo.Classification`` field to update.
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
    _validate_label_field(dataset, label_field)
    return _import(dataset, _source_from_bytes(bytes(data), name_hint), label_field=label_field, format=format,
                   dry_run=dry_run)


def _import(dataset, source: _Source, *, label_field: str, format: str | None, dry_run: bool) -> ImportResult:
    chosen = format or _detect_format(source.label, source.content)
    problems = _Problems(source.label)
    if source.mapping_problem:
        problems.add_line("unreadable mapping.json", source.mapping_problem)
    reader = _read_cvat if chosen == "cvat" else _read_labelstudio
    annotations = reader(source.label, source.content, problems)

    matcher = _SampleMatcher(dataset, source.mapping)
    matched: dict[str, _Annotation] = {}
    for annotation in annotations:
        sample_id, why_not = matcher.match(annotation)
        if sample_id is None:
            problems.add(annotation.item, *why_not)
        elif sample_id in matched:
            problems.add(annotation.item, "repeated sample", f"sample {sample_id} appears again (first in "
                                                             f"{matched[sample_id].item}); only the first is used")
        else:
            matched[sample_id] = annotation

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
