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

:func:`import_annotations` reads what the tool exports afterwards (CVAT's annotations.xml
or its zip; Label Studio's JSON or JSON-MIN export), matches every item back to a sample
(by the sample id in the image name or task data, else by file name through
``mapping.json`` or the dataset's own file names) and records the result with
:mod:`curation.decisions`: a changed label becomes a relabel (the original kept in
``previous_label``), an unchanged one a "keep". Items that cannot be used are reported in
:attr:`ImportResult.problems`, each naming the file and the item, and the rest is applied.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

import curation  # noqa: F401  (sets FiftyOne's environment before it is imported)
from curation.datasets import now_iso
from curation.decisions import apply_relabel, record_decision
from curation.errors import CurationError, CurationInputError

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


class AnnotationFileError(CurationError, ValueError):
    """An annotation file cannot be read at all; the message names the file and what is wrong."""


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
        problems: one line per item that was not applied, naming the file and the item.
        new_classes: labels that no sample of the dataset had before the import, sorted.
        format: the format read (``"cvat"`` or ``"labelstudio"``).
        dry_run: True when nothing was written.
    """

    changed: list[tuple[str, str | None, str]] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    format: str = ""
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        parts = [f"{verb} {len(self.changed)} label(s)", f"confirmed {len(self.confirmed)}"]
        if self.new_classes:
            parts.append(f"new classes: {', '.join(self.new_classes)}")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s)")
        return "; ".join(parts)


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


def _validate_label_field(dataset, label_field: str) -> None:
    import fiftyone as fo

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
        items.append(_TaskItem(sample_id, source, f"{sample_id}{source.suffix.lower()}", label, *size))
    if missing:
        raise FileNotFoundError(f"cannot export for annotation: image file(s) missing: {'; '.join(missing[:5])}"
                                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    if unreadable:
        raise CurationInputError(f"cannot export for annotation: expected readable images, could not read "
                         f"{'; '.join(unreadable[:5])}" + (f" (and {len(unreadable) - 5} more)" if len(unreadable) > 5 else ""))
    return items


def _task_classes(dataset, label_field: str, items: list[_TaskItem], classes: list[str] | None) -> list[str]:
    used = {item.label for item in items if item.label is not None}
    if classes is None:
        every = {label for label in dataset.distinct(f"{label_field}.label") if label is not None}
        return sorted(every | used)
    chosen = [str(name).strip() for name in classes]
    if any(not name for name in chosen):
        raise CurationInputError("classes: expected non-empty class names, got an empty one")
    not_listed = sorted(used - set(chosen))
    if not_listed:
        raise CurationInputError(f"classes: the exported samples carry label(s) {', '.join(not_listed)} that are not in "
                         f"the given class list; add them, or leave classes=None to offer every class of the dataset")
    return sorted(set(chosen))


def _write_mapping(folder: Path, dataset, label_field: str, format: str, items: list[_TaskItem]) -> Path:
    path = folder / MAPPING_FILE
    path.write_text(json.dumps({
        "dataset": dataset.name,
        "label_field": label_field,
        "format": format,
        "exported_at": now_iso(),
        "images": {item.image_name: {"sample_id": item.sample_id, "filepath": str(item.source), "label": item.label}
                   for item in items},
    }, indent=2))
    return path


def _cvat_annotations_xml(name: str, items: list[_TaskItem], classes: list[str]) -> ET.ElementTree:
    stamp = now_iso()
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    for tag, text in (("id", ""), ("name", name), ("size", str(len(items))), ("mode", "annotation"),
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
    readme.write_text(_CVAT_README.format(n=len(items), classes=", ".join(classes)))
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
    tasks_path.write_text(json.dumps(tasks, indent=2, ensure_ascii=False))
    config_path = folder / "label_config.xml"
    config_path.write_text(_label_config_xml(classes))
    readme = folder / "README.txt"
    readme.write_text(_LABEL_STUDIO_README.format(n=len(items), out_dir=final_dir.resolve(),
                                                  prefix=image_url_prefix))
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

    The folder is built in a temporary sibling and moved into place at the end, so a failed
    export leaves neither a half-written ``out_dir`` nor the temporary folder. Source images
    are copied (as ``images/<sample_id>.<ext>``), never changed.

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
        ValueError: unknown format, a field that is not a classification, unknown sample ids,
            no sample marked for annotation, or classes missing a current label.
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

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the images from a separate Label Studio user
        (staging / IMAGES_DIR).mkdir()
        for item in items:
            _copy_image(item.source, staging / IMAGES_DIR / item.image_name)
        written = [_write_mapping(staging, dataset, label_field, format, items)]
        if format == "cvat":
            written += _write_cvat(staging, dataset, items, task_classes)
        else:
            written += _write_labelstudio(staging, out_dir, items, task_classes, image_url_prefix)
        written += [staging / IMAGES_DIR / item.image_name for item in items]
        _move_into_place(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(out_dir / path.relative_to(staging) for path in written)
    logger.info("exported %d samples for %s to %s", len(items), TOOL_NAMES[format], out_dir)
    return TaskExport(out_dir=out_dir, format=format, n_samples=len(items), classes=task_classes, files=files)


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists() and not out_dir.is_symlink():
        os.replace(staging, out_dir)
        return
    if not overwrite:  # appeared while we were writing
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    # os.replace cannot replace a non-empty directory: move the old one aside first.
    old = out_dir.parent / f".{out_dir.name}.replaced-{uuid.uuid4().hex[:8]}"
    os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class _Annotation:
    """One item of an annotation file: which image, which label, who said so."""

    item: str  # how problems name it, e.g. "<image id=3 name=...>" or "task 17"
    sample_id: str | None  # when the file names it
    image_name: str | None
    label: str | None
    user: str | None = None


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

    def match(self, annotation: _Annotation) -> tuple[str | None, str | None]:
        """(sample id, None) or (None, why not)."""
        from bson import ObjectId

        if annotation.sample_id:
            if annotation.sample_id in self.ids:
                return annotation.sample_id, None
            return None, f"unknown sample id {annotation.sample_id!r} (not in this dataset)"
        if not annotation.image_name:
            return None, "no image name or sample id to match it to a sample"
        base = PurePosixPath(annotation.image_name.replace("\\", "/")).name
        stem = base.rsplit(".", 1)[0]
        if ObjectId.is_valid(stem):
            if stem in self.ids:
                return stem, None
            return None, f"unknown sample id {stem!r} from image name {annotation.image_name!r} (not in this dataset)"
        # Label Studio renames uploads to "<8 hex>-<original name>".
        candidates = [base] + ([base.split("-", 1)[1]] if "-" in base else [])
        for name in candidates:
            if name in self.mapping and self.mapping[name] in self.ids:
                return self.mapping[name], None
            owners = self.by_file_name.get(name, [])
            if len(owners) == 1:
                return owners[0], None
            if len(owners) > 1:
                return None, f"image name {base!r} matches {len(owners)} samples of the dataset; cannot tell which"
        return None, f"unknown image {annotation.image_name!r} (no sample with this id or file name)"


def _read_mapping(folder: Path, archive: zipfile.ZipFile | None = None) -> dict[str, str]:
    """image name -> sample id from a ``mapping.json`` beside the annotations, if any."""
    text = None
    if archive is not None:
        names = [name for name in archive.namelist() if PurePosixPath(name).name == MAPPING_FILE]
        if names:
            text = archive.read(names[0]).decode("utf-8", errors="replace")
    if text is None and (folder / MAPPING_FILE).is_file():
        text = (folder / MAPPING_FILE).read_text()
    if text is None:
        return {}
    try:
        images = json.loads(text).get("images", {})
        return {name: entry["sample_id"] for name, entry in images.items()}
    except (ValueError, AttributeError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s in %s", MAPPING_FILE, folder)
        return {}


def _load_source(path: Path) -> tuple[str, str, bytes, dict[str, str]]:
    """For a file, a folder or a zip: (how messages name the file, the file name that
    ``decision_source`` records, the content, the image-name mapping)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        for name in ("annotations.xml", "result.json", "tasks.json"):
            if (path / name).is_file():
                return str(path / name), name, (path / name).read_bytes(), _read_mapping(path)
        raise AnnotationFileError(f"{path}: expected annotations.xml (CVAT) or a Label Studio JSON export in this "
                                  f"folder, found {', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [name for name in archive.namelist() if not name.endswith("/")]
            xml = [name for name in members if PurePosixPath(name).name == "annotations.xml"]
            json_files = [name for name in members if name.lower().endswith(".json")
                          and PurePosixPath(name).name != MAPPING_FILE]
            chosen = (xml or json_files or [None])[0]
            if chosen is None:
                raise AnnotationFileError(f"{path}: expected a zip holding annotations.xml (CVAT for images 1.1) "
                                          f"or a JSON export; it holds {', '.join(members[:10]) or 'nothing'}")
            return f"{path} ({chosen})", path.name, archive.read(chosen), _read_mapping(path.parent, archive)
    return str(path), path.name, path.read_bytes(), _read_mapping(path.parent)


def _detect_format(label: str, content: bytes) -> str:
    head = content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]  # a UTF-8 byte-order mark and blanks may come first
    if head == b"<":
        return "cvat"
    if head in (b"[", b"{"):
        return "labelstudio"
    raise AnnotationFileError(f"{label}: cannot tell the format: expected CVAT XML (starting with '<') or "
                              f"Label Studio JSON (starting with '['), got {content[:20]!r}")


# ---- CVAT


def _cvat_user(root: ET.Element) -> str | None:
    """The annotator CVAT names in <meta>: the job's or task's assignee, else its owner."""
    meta = root.find("meta")
    if meta is None:
        return None
    for kind in ("job", "task", "project"):
        node = meta.find(kind)
        if node is None:
            continue
        for who in ("assignee", "owner"):
            username = node.findtext(f"{who}/username")
            if username and username.strip():
                return username.strip()
    return None


def _read_cvat(label: str, content: bytes) -> tuple[list[_Annotation], list[str]]:
    try:
        root = ET.fromstring(content)
    except ET.ParseError as error:
        raise AnnotationFileError(f"{label}: malformed XML ({error}); expected a CVAT for images 1.1 "
                                  f"annotations.xml") from error
    if root.tag != "annotations":
        raise AnnotationFileError(f"{label}: expected a CVAT for images 1.1 file with <annotations> at the top, "
                                  f"got <{root.tag}>")
    images = root.findall("image")
    if not images and root.findall("track"):
        raise AnnotationFileError(f"{label}: this is a 'CVAT for video' export (tracks); export the task as "
                                  f"'CVAT for images 1.1' instead")
    user = _cvat_user(root)
    annotations, problems = [], []
    for image in images:
        name = image.get("name")
        item = f"<image id={image.get('id', '?')} name={name!r}>"
        if not name:
            problems.append(f"{label}: {item}: expected a name attribute, found none")
            continue
        tags = image.findall("tag")
        labels = list(dict.fromkeys(tag.get("label") for tag in tags))
        if not tags:
            others = sorted({child.tag for child in image})
            found = f" (found {', '.join('<' + tag + '>' for tag in others)}; only image-level <tag> is read)" if others else ""
            problems.append(f"{label}: {item}: no label given{found}")
            continue
        if None in labels or any(not value.strip() for value in labels if value is not None):
            problems.append(f"{label}: {item}: expected <tag label=\"...\"> with a class name, got a tag without one")
            continue
        if len(labels) > 1:
            problems.append(f"{label}: {item}: expected one class tag, found {len(labels)}: {', '.join(labels)}")
            continue
        annotations.append(_Annotation(item=item, sample_id=None, image_name=name, label=labels[0].strip(), user=user))
    return annotations, problems


# ---- Label Studio


def _parse_time(value) -> dt.datetime:
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
        except ValueError:
            pass
    return dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def _labelstudio_user(value) -> str | None:
    if isinstance(value, dict):
        for key in ("email", "username", "id"):
            if value.get(key):
                return str(value[key])
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"user {value}"
    return None


def _choices_of(value) -> list[str] | None:
    """The chosen classes from a result value, a JSON-MIN cell or a plain string."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and isinstance(value.get("choices"), list):
        return [str(choice) for choice in value["choices"]]
    if isinstance(value, list) and all(isinstance(choice, str) for choice in value):
        return list(value)
    return None


def _image_of(data: dict) -> str | None:
    url = data.get("image") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        return None
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d")
    return unquote(local[0]) if local else unquote(parsed.path)


def _label_studio_item(task: dict, index: int) -> str:
    task_id = task.get("id") if isinstance(task, dict) else None
    return f"task {task_id}" if task_id is not None else f"item {index}"


def _read_labelstudio(label: str, content: bytes) -> tuple[list[_Annotation], list[str]]:
    try:
        tasks = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationFileError(f"{label}: malformed JSON ({error}); expected a Label Studio JSON export") from error
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise AnnotationFileError(f"{label}: expected a Label Studio JSON export (a list of tasks), "
                                  f"got a JSON {type(tasks).__name__}")
    annotations, problems = [], []
    for index, task in enumerate(tasks):
        item = _label_studio_item(task, index)
        if not isinstance(task, dict):
            problems.append(f"{label}: {item}: expected a task object, got a JSON {type(task).__name__}")
            continue
        if "annotations" in task or "data" in task:
            found = _labelstudio_full_task(task)
        else:
            found = _labelstudio_min_task(task)
        if isinstance(found, str):
            problems.append(f"{label}: {item}: {found}")
        else:
            annotations.append(_Annotation(item=item, **found))
    return annotations, problems


def _labelstudio_full_task(task: dict) -> dict | str:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    sample_id = data.get("sample_id")
    where = {"sample_id": str(sample_id) if sample_id else None, "image_name": _image_of(data)}
    entries = task.get("annotations") or []
    if not isinstance(entries, list):
        return f"expected 'annotations' to be a list, got {type(entries).__name__}"
    usable = [entry for entry in entries if isinstance(entry, dict) and not entry.get("was_cancelled")]
    if not usable:
        return ("no label given (every annotation was cancelled/skipped)" if entries
                else "no label given (not annotated)")
    latest = max(enumerate(usable), key=lambda pair: (_parse_time(pair[1].get("updated_at") or pair[1].get("created_at")),
                                                      pair[0]))[1]
    results = latest.get("result") or []
    if not isinstance(results, list):
        return f"expected the annotation's 'result' to be a list, got {type(results).__name__}"
    choice_results = [result for result in results if isinstance(result, dict) and result.get("type") == "choices"]
    named = [result for result in choice_results if result.get("from_name") == LABEL_STUDIO_FROM_NAME]
    chosen = named or choice_results
    if not chosen:
        return "no label given (the latest annotation has no 'choices' result)"
    choices = _choices_of(chosen[0].get("value"))
    if not choices:
        return f"expected value.choices with one class, got {chosen[0].get('value')!r}"
    if len(set(choices)) != 1:
        return f"expected one class, got {len(choices)}: {', '.join(choices)}"
    return {**where, "label": choices[0].strip(), "user": _labelstudio_user(latest.get("completed_by"))}


def _labelstudio_min_task(task: dict) -> dict | str:
    sample_id = task.get("sample_id")
    where = {"sample_id": str(sample_id) if sample_id else None, "image_name": _image_of(task)}
    for key in (LABEL_STUDIO_FROM_NAME, "choice", "choices"):
        if key in task:
            choices = _choices_of(task[key])
            if not choices:
                return f"expected {key!r} to hold one class, got {task[key]!r}"
            if len(set(choices)) != 1:
                return f"expected one class, got {len(choices)}: {', '.join(choices)}"
            return {**where, "label": choices[0].strip(), "user": _labelstudio_user(task.get("annotator"))}
    return "no label given (expected a 'label' or 'choice' key, or 'annotations')"


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
    ``"labelstudio:export.json"``).

    Args:
        dataset: the FiftyOne dataset the task was exported from.
        path: the exported file, a zip, or a folder holding ``annotations.xml``.
        label_field: the ``fo.Classification`` field to update.
        format: ``"cvat"`` or ``"labelstudio"``; None detects it from the content.
        dry_run: compute the result without writing anything.

    Returns:
        An :class:`ImportResult`; items that could not be used (unknown image or sample id,
        no label, several labels) are listed in ``problems`` and the others applied.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AnnotationFileError: the file is not readable as the format (malformed XML/JSON,
            wrong top-level structure); the message names the file.
        ValueError: unknown format, or a label field that is not a classification.
    """
    if format is not None:
        _validate_format(format)
    _validate_label_field(dataset, label_field)
    label, file_name, content, mapping = _load_source(Path(path))
    chosen = format or _detect_format(label, content)
    reader = _read_cvat if chosen == "cvat" else _read_labelstudio
    annotations, problems = reader(label, content)
    result = ImportResult(problems=problems, format=chosen, dry_run=dry_run)

    matcher = _SampleMatcher(dataset, mapping)
    matched: dict[str, _Annotation] = {}
    for annotation in annotations:
        sample_id, why_not = matcher.match(annotation)
        if sample_id is None:
            result.problems.append(f"{label}: {annotation.item}: {why_not}")
        elif sample_id in matched:
            result.problems.append(f"{label}: {annotation.item}: sample {sample_id} appears again (first in "
                                   f"{matched[sample_id].item}); only the first is used")
        else:
            matched[sample_id] = annotation

    ids = list(matched)
    current = dict(zip(ids, dataset.select(ids, ordered=True).values(f"{label_field}.label"))) if ids else {}
    known_classes = {value for value in dataset.distinct(f"{label_field}.label") if value is not None}
    tool = TOOL_NAMES[chosen]
    source = f"{chosen}:{file_name}"
    relabels: dict[tuple[str, str], list[str]] = {}
    keeps: dict[str, list[str]] = {}
    for sample_id, annotation in matched.items():
        by = f" by {annotation.user}" if annotation.user else ""
        if annotation.label == current[sample_id]:
            result.confirmed.append(sample_id)
            keeps.setdefault(f"confirmed in {tool}{by}", []).append(sample_id)
        else:
            result.changed.append((sample_id, current[sample_id], annotation.label))
            relabels.setdefault((annotation.label, f"corrected in {tool}{by}"), []).append(sample_id)
    result.new_classes = sorted({new for _, _, new in result.changed} - known_classes)

    if not dry_run:
        for (new_label, reason), sample_ids in relabels.items():
            apply_relabel(dataset, sample_ids, new_label, label_field=label_field, reason=reason, source=source)
        for reason, sample_ids in keeps.items():
            record_decision(dataset, sample_ids, "keep", reason=reason, source=source)
    logger.info("%s: %s", label, result.summary())
    return result
