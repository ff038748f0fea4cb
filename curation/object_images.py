"""What the Objects page shows of a detection dataset: box crops, whole images with their
boxes drawn, the object map, and the object review table.

Pictures are made on first use and cached as small JPEGs under
:func:`curation.paths.cache_dir` (``objects/``), keyed on the image file's resolved path,
modification time and size, the box(es) drawn and the output settings, so an edited image,
a moved box or a relabelled class gets a new picture. Source images are only read.

Class names come from the data and may be anything (thousands of characters, control
characters, right-to-left marks, emoji): :func:`display_label` makes them drawable, and a
font that cannot draw a name falls back to its escaped ASCII form; drawing never fails on
a name.

The map (:func:`object_map`) is a UMAP of the per-object embeddings of
:mod:`curation.patches`, cached on disk like the image map (:mod:`curation.projection`),
beside the columns it is coloured by: class, box area (share of the image and pixels),
issue, issue score and mislabel score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from curation.errors import CurationInputError
from curation.paths import cache_dir
from curation.projection import ProjectionConfig

logger = logging.getLogger(__name__)

CROP_SIZE = 160
CROP_CONTEXT = 0.15
IMAGE_SIZE = 720
MAX_LABEL_CHARS = 40
# Bumped when the pictures change (colours, layout), so old cached files are not reused.
RENDER_VERSION = 1
BOX_KINDS = ("annotation", "removed", "predicted")
HIGHLIGHT_COLOUR = (255, 0, 170)
REMOVED_COLOUR = (150, 150, 150)
# Class colours: none close to the highlight's magenta or the removed boxes' grey.
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (0, 128, 128), (188, 189, 34), (23, 190, 207), (0, 92, 49), (255, 204, 0), (0, 51, 128)]
_PAD_COLOUR = (240, 240, 240)
# Which score column says how strongly a box has its issue (degenerate boxes are certain).
ISSUE_SCORE_COLUMNS = {"mislabel": "mislabel_score", "duplicate": "duplicate_score", "missing": "missing_score",
                       "spurious": "spurious_score", "localization": "localization_score"}


@dataclass(frozen=True)
class DrawnBox:
    """One box to draw: its class name, relative ``[x, y, width, height]`` box and kind:
    ``annotation`` (solid, in the class's colour), ``removed`` (dashed grey) or
    ``predicted`` (dashed, in the class's colour: a model's box nobody annotated)."""

    label: str | None
    bounding_box: tuple[float, ...]
    kind: str = "annotation"


# ---------------------------------------------------------------------------------------------
# Names and colours


def display_label(label, max_chars: int = MAX_LABEL_CHARS) -> str:
    """``label`` as text safe to draw and show: control and format characters (newlines,
    NUL, bidi overrides, zero-width joiners) dropped, whitespace runs made one space, at
    most ``max_chars`` characters (an ellipsis marks a cut); ``(no label)`` when nothing is left."""
    text = "" if label is None else str(label)
    kept = "".join(" " if char.isspace() else char for char in text
                   if char.isspace() or not unicodedata.category(char).startswith("C"))
    kept = " ".join(kept.split())
    if len(kept) > max_chars:
        kept = kept[:max_chars - 1].rstrip() + "…"
    return kept or "(no label)"


def class_colour(label) -> tuple[int, int, int]:
    """A colour for a class that is the same in every picture and process (not Python's
    randomised ``hash``)."""
    digest = hashlib.sha1(("" if label is None else str(label)).encode("utf-8", "surrogatepass")).digest()
    return _PALETTE[digest[0] % len(_PALETTE)]


@lru_cache(maxsize=8)
def _font(size: int):
    """DejaVu Sans when the system has it (wide Unicode coverage), else Pillow's own font."""
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)  # Aileron, scalable, when Pillow has FreeType
    except (TypeError, OSError, ImportError):  # no FreeType (or Pillow < 10.1): the fixed-size bitmap font
        loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
        return loader()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _drawable_text(draw, text: str, font) -> str:
    """``text`` if the font can lay it out, else its escaped ASCII form (which any font can)."""
    try:
        _text_size(draw, text, font)
        return text
    except Exception:  # a font without a code path for these characters (bitmap fonts: UnicodeEncodeError)
        return ascii(text)[1:-1][:MAX_LABEL_CHARS]


# ---------------------------------------------------------------------------------------------
# Cache files


def _file_stamp(path: Path) -> str | None:
    """resolved path, mtime and size: what makes a cached picture of ``path`` current."""
    try:
        status = path.stat()
        return f"{path.resolve()}|{status.st_mtime_ns}|{status.st_size}"
    except OSError:
        return None


def _cache_target(kind: str, parts: object) -> Path:
    key = hashlib.sha1(json.dumps([RENDER_VERSION, kind, parts], sort_keys=True, default=str,
                                  ensure_ascii=True).encode()).hexdigest()
    return cache_dir() / "objects" / kind / key[:2] / f"{key}.jpg"


def _save(image, target: Path) -> Path:
    from curation.files import atomic_file

    with atomic_file(target, make_parents=True, clean_stale=False) as partial:
        image.save(partial, format="JPEG", quality=90)
    return target


def _box_values(box) -> tuple[float, float, float, float] | None:
    """Four finite floats, or None."""
    try:
        values = tuple(float(value) for value in box)
    except (TypeError, ValueError):
        return None
    if len(values) != 4 or not all(math.isfinite(value) for value in values):
        return None
    return values  # type: ignore[return-value]


def _scaled(image, longer_side: int):
    """``image`` resized so its longer side is ``longer_side`` (whole-pixel look when enlarged a lot)."""
    from PIL import Image

    scale = longer_side / max(image.width, image.height)
    if abs(scale - 1) < 1e-3:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    method = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    return image.resize(size, method)


# ---------------------------------------------------------------------------------------------
# A crop of one box


def crop_thumbnail_path(filepath: str | os.PathLike, box: Sequence[float], *, context: float = CROP_CONTEXT,
                        size: int = CROP_SIZE) -> Path | None:
    """A cached JPEG of ``box`` (relative ``[x, y, width, height]``) with ``context`` (a
    fraction of the box on each side, clipped to the image) around it, the box outlined,
    scaled to ``size`` px on its longer side and centred on a light square.

    Returns None when the image cannot be decoded or no part of the box is inside it (a
    degenerate box: show the whole image instead).
    """
    from PIL import Image, ImageDraw

    from curation.images import ImageLoadError, image_info, load_rgb
    from curation.patches import box_problem, patch_region

    path = Path(filepath)
    stamp = _file_stamp(path)
    values = _box_values(box)
    if stamp is None or values is None or box_problem(values):
        return None
    target = _cache_target("crops", [stamp, [round(v, 6) for v in values], round(float(context), 6), int(size)])
    if target.exists():
        return target
    full = image_info(path)
    if full is None:
        return None
    region = patch_region(values, full[0], full[1], context)
    if region is None:
        return None
    # Decode only as large as the crop needs: a small box on a 40-megapixel photo must not
    # cost a full decode, and a tiny box keeps every pixel it has.
    longer = max(region[2] - region[0], region[3] - region[1])
    factor = int(longer // max(1, size))
    try:
        image = load_rgb(path, max_side=math.ceil(min(full) / factor) if factor >= 2 else None)
    except ImageLoadError:
        return None
    region = patch_region(values, image.width, image.height, context)
    if region is None:
        return None
    crop = image.crop(region)
    scale = size / max(crop.width, crop.height)
    crop = _scaled(crop, size)
    # The box itself, inside its context.
    x, y, w, h = values
    left = (max(0.0, x) * image.width - region[0]) * scale
    top = (max(0.0, y) * image.height - region[1]) * scale
    right = (min(1.0, x + w) * image.width - region[0]) * scale
    bottom = (min(1.0, y + h) * image.height - region[1]) * scale
    outline = [min(max(value, 0.0), limit - 1) for value, limit in
               ((left, crop.width), (top, crop.height), (right, crop.width), (bottom, crop.height))]
    ImageDraw.Draw(crop).rectangle([min(outline[0], outline[2]), min(outline[1], outline[3]),
                                    max(outline[0], outline[2]), max(outline[1], outline[3])],
                                   outline=HIGHLIGHT_COLOUR, width=max(1, size // 80))
    square = Image.new("RGB", (size, size), _PAD_COLOUR)
    square.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return _save(square, target)


# ---------------------------------------------------------------------------------------------
# The whole image with its boxes


def _pixel_rectangle(box: tuple[float, float, float, float], width: int, height: int
                     ) -> tuple[float, float, float, float] | None:
    """The box in pixels of a ``width`` x ``height`` picture, ordered and clipped to it (a box
    with no size is drawn as a line), or None when it lies wholly outside."""
    x, y, w, h = box
    x0, x1 = sorted((x * width, (x + w) * width))
    y0, y1 = sorted((y * height, (y + h) * height))
    if x1 < 0 or y1 < 0 or x0 > width or y0 > height:
        return None
    return (min(max(x0, 0), width - 1), min(max(y0, 0), height - 1),
            min(max(x1, 0), width - 1), min(max(y1, 0), height - 1))


def _dashed_rectangle(draw, rectangle, colour, width: int, dash: int) -> None:
    x0, y0, x1, y1 = rectangle
    for start, end in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = math.hypot(end[0] - start[0], end[1] - start[1])
        steps = max(1, int(length // dash))
        for step in range(0, steps, 2):
            a, b = step / steps, min(1.0, (step + 1) / steps)
            draw.line([(start[0] + (end[0] - start[0]) * a, start[1] + (end[1] - start[1]) * a),
                       (start[0] + (end[0] - start[0]) * b, start[1] + (end[1] - start[1]) * b)],
                      fill=colour, width=width)


def _label_chip(draw, rectangle, text: str, colour, font, picture_size: tuple[int, int]) -> None:
    """``text`` on a chip of ``colour`` at the box's top-left corner (inside it at the top edge)."""
    text = _drawable_text(draw, text, font)
    text_width, text_height = _text_size(draw, text, font)
    pad = max(2, text_height // 4)
    chip_width, chip_height = text_width + 2 * pad, text_height + 2 * pad
    left = min(max(0, rectangle[0]), max(0, picture_size[0] - chip_width))
    top = rectangle[1] - chip_height if rectangle[1] - chip_height >= 0 else rectangle[1]
    top = min(max(0, top), max(0, picture_size[1] - chip_height))
    draw.rectangle([left, top, left + chip_width, top + chip_height], fill=colour)
    ink = (0, 0, 0) if sum(colour) > 450 else (255, 255, 255)
    try:
        draw.text((left + pad, top + pad), text, fill=ink, font=font, anchor="lt")
    except Exception:  # the chip stays; a name no font can draw is not worth a failed picture
        logger.debug("could not draw the class name %r", text, exc_info=True)


def boxes_image_path(filepath: str | os.PathLike, boxes: Sequence[DrawnBox], highlight: int | None = None, *,
                     size: int = IMAGE_SIZE) -> Path | None:
    """A cached JPEG of the whole image, ``size`` px on its longer side (small images are
    enlarged), with every box of ``boxes`` drawn and named, and ``boxes[highlight]`` (if
    given) thick in magenta with the rest of the picture dimmed around it.

    Boxes that are not four finite numbers are left out; boxes partly outside the image are
    clipped to it; boxes with no size are drawn as lines. Returns None when the image
    cannot be decoded.

    Raises:
        CurationInputError: ``highlight`` is not an index of ``boxes``, or a box's kind is unknown.
    """
    from PIL import Image, ImageDraw

    from curation.images import ImageLoadError, load_rgb

    boxes = list(boxes)
    if highlight is not None and not (isinstance(highlight, (int, np.integer)) and 0 <= highlight < len(boxes)):
        raise CurationInputError(f"highlight: expected an index of the {len(boxes)} boxes, got {highlight!r}")
    for box in boxes:
        if box.kind not in BOX_KINDS:
            raise CurationInputError(f"box kind: expected one of {', '.join(BOX_KINDS)}, got {box.kind!r}")
    path = Path(filepath)
    stamp = _file_stamp(path)
    if stamp is None:
        return None
    described = [[None if box.label is None else str(box.label), [None if v is None else round(v, 6) for v in
                                                                   (_box_values(box.bounding_box) or [None] * 4)],
                  box.kind] for box in boxes]
    target = _cache_target("images", [stamp, described, highlight, int(size)])
    if target.exists():
        return target
    try:
        image = load_rgb(path, max_side=size)
    except ImageLoadError:
        return None
    picture = _scaled(image, size).convert("RGB")
    width, height = picture.size
    line = max(2, round(size / 320))
    font = _font(max(10, round(size / 48)))
    rectangles = [(_pixel_rectangle(values, width, height) if (values := _box_values(box.bounding_box)) else None)
                  for box in boxes]
    if highlight is not None and rectangles[highlight] is not None:
        # Dim everything but the box in question, so it stands out among many.
        dimmed = Image.blend(picture, Image.new("RGB", picture.size, (0, 0, 0)), 0.45)
        x0, y0, x1, y1 = (round(v) for v in rectangles[highlight])
        dimmed.paste(picture.crop((x0, y0, x1 + 1, y1 + 1)), (x0, y0))
        picture = dimmed
    draw = ImageDraw.Draw(picture)
    order = [index for index in range(len(boxes)) if index != highlight] + ([highlight] if highlight is not None else [])
    for index in order:
        rectangle = rectangles[index]
        if rectangle is None:
            continue
        box = boxes[index]
        colour = REMOVED_COLOUR if box.kind == "removed" else class_colour(box.label)
        text = display_label(box.label) + {"removed": " (removed)", "predicted": " (predicted)"}.get(box.kind, "")
        if index == highlight:
            draw.rectangle(rectangle, outline=(255, 255, 255), width=line * 3 + 2)  # a halo on any background
            if box.kind == "annotation":
                draw.rectangle(rectangle, outline=HIGHLIGHT_COLOUR, width=line * 3)
            else:
                _dashed_rectangle(draw, rectangle, HIGHLIGHT_COLOUR, line * 3, dash=line * 5)
            _label_chip(draw, rectangle, text, HIGHLIGHT_COLOUR, font, picture.size)
        else:
            if box.kind == "annotation":
                draw.rectangle(rectangle, outline=colour, width=line)
            else:
                _dashed_rectangle(draw, rectangle, colour, line, dash=line * 4)
            _label_chip(draw, rectangle, text, colour, font, picture.size)
    return _save(picture, target)


def image_with_boxes(dataset, field: str, sample_id: str, *, highlight_id: str | None = None,
                     size: int = IMAGE_SIZE) -> Path | None:
    """:func:`boxes_image_path` for a sample: every box of ``field`` (removed ones dashed grey)
    and, when ``highlight_id`` names a box of ``<field>_missing`` (a model's box nobody
    annotated), that box dashed; ``highlight_id`` (a box of either field) is highlighted.

    Raises:
        CurationInputError: ``field`` is not a Detections field, or ``highlight_id`` is not a
            box of this sample.
    """
    from curation.patches import check_detections_field

    check_detections_field(dataset, field)
    sample = dataset.select([sample_id]).first() if sample_id else None
    if sample is None:
        raise CurationInputError(f"no sample with id {sample_id!r} in dataset {dataset.name!r}")
    drawn: list[DrawnBox] = []
    highlight = None
    for detection in (sample[field].detections if sample[field] is not None else []):
        decision = detection.get_field("decision") if detection.has_field("decision") else None
        if detection.id == highlight_id:
            highlight = len(drawn)
        drawn.append(DrawnBox(detection.label, tuple(detection.bounding_box or ()),
                              "removed" if decision == "remove" else "annotation"))
    missing_field = f"{field}_missing"
    if highlight_id is not None and highlight is None and dataset.has_sample_field(missing_field) \
            and sample[missing_field] is not None:
        for detection in sample[missing_field].detections:
            if detection.id == highlight_id:
                highlight = len(drawn)
                drawn.append(DrawnBox(detection.label, tuple(detection.bounding_box or ()), "predicted"))
    if highlight_id is not None and highlight is None:
        raise CurationInputError(f"sample {sample_id} has no box with id {highlight_id!r} in {field!r}")
    return boxes_image_path(sample.filepath, drawn, highlight, size=size)


# ---------------------------------------------------------------------------------------------
# Tables


def detections_fields(dataset) -> list[str]:
    """The dataset's ``Detections`` fields, sorted, without the ``<field>_missing`` fields
    that ``analyze --patches`` writes beside a field."""
    import fiftyone as fo

    schema = dataset.get_field_schema()
    fields = sorted(name for name, kind in schema.items()
                    if isinstance(kind, fo.EmbeddedDocumentField) and issubclass(kind.document_type, fo.Detections))
    return [name for name in fields if not (name.endswith("_missing") and name[:-len("_missing")] in fields)]


def object_analysis_record(dataset, field: str) -> dict | None:
    """The record of the last ``analyze --patches`` run on ``field`` (summary, time), or None."""
    from curation.datasets import curation_info
    from curation.objects import INFO_KEY

    return (curation_info(dataset).get(INFO_KEY) or {}).get(field)


def _image_sizes(dataset) -> dict[str, tuple[int | None, int | None]]:
    from curation.images import image_info

    ids, paths = dataset.values(["id", "filepath"])
    has_metadata = dataset.has_sample_field("metadata")
    widths = dataset.values("metadata.width") if has_metadata else [None] * len(ids)
    heights = dataset.values("metadata.height") if has_metadata else [None] * len(ids)
    sizes = {}
    for sample_id, path, width, height in zip(ids, paths, widths, heights):
        if not width or not height:
            width, height = image_info(path) or (None, None)
        sizes[sample_id] = (width, height)
    return sizes


def _attribute(detection, name: str):
    return detection.get_field(name) if detection.has_field(name) else None


REVIEW_COLUMNS = ("object_id", "missing_id", "sample_id", "filepath", "label", "suggested_label", "bounding_box",
                  "issue", "issue_score", "mislabel_score", "duplicate_of", "duplicate_score", "missing_score",
                  "spurious_score", "localization_score", "confidence", "decision", "previous_label", "added_id",
                  "tags", "area", "area_px")


def object_review_table(dataset, field: str) -> pd.DataFrame:
    """Every box of ``field`` and every predicted-but-missing box of ``<field>_missing``, with
    what the review queue and the map need (:data:`REVIEW_COLUMNS`).

    Columns beyond :func:`curation.objects.object_findings`: ``missing_id`` (the id of a
    missing box in ``<field>_missing``; empty for annotated boxes), ``issue_score`` (the score
    of the box's issue, 1 for a degenerate box, 0 with no issue), ``decision`` and
    ``previous_label`` (from :mod:`curation.object_decisions`; a missing box accepted into the
    field reads ``added``, and ``added_id`` is the new box's id; a decision stored on the
    missing box itself reads as that decision), ``tags`` (the box's label
    tags, a sorted list), ``area`` (share of the image, in [0, 1] for boxes inside it) and
    ``area_px`` (pixels; NaN when the image size is unknown).
    """
    from curation.errors import CurationError
    from curation.objects import object_findings

    findings = object_findings(dataset, field).reset_index(drop=True)
    ids, detections = dataset.values(["id", f"{field}.detections"])
    extras: dict[str, dict] = {}
    added_from: dict[str, str] = {}
    for sample_detections in detections:
        for detection in sample_detections or []:
            decision = _attribute(detection, "decision")
            extras[detection.id] = {"decision": decision, "previous_label": _attribute(detection, "previous_label"),
                                    "tags": sorted(detection.tags or [])}
            source = _attribute(detection, "accepted_from")
            if source and decision == "added":
                added_from[str(source)] = detection.id
    missing_field = f"{field}_missing"
    missing_ids: list[tuple[str, str]] = []
    missing_decisions: dict[str, str | None] = {}
    if dataset.has_sample_field(missing_field):
        for sample_id, sample_missing in zip(ids, dataset.values(f"{missing_field}.detections")):
            for detection in sample_missing or []:
                missing_ids.append((sample_id, detection.id))
                missing_decisions[detection.id] = _attribute(detection, "decision")
    is_missing = findings["object_id"].isna().to_numpy()
    if int(is_missing.sum()) != len(missing_ids) or \
            list(findings.loc[is_missing, "sample_id"]) != [sample_id for sample_id, _ in missing_ids]:
        raise CurationError(f"the boxes of {field!r} changed while they were read; reload the page")
    table = findings.copy()
    table["missing_id"] = None
    table.loc[is_missing, "missing_id"] = [missing_id for _, missing_id in missing_ids]
    table["object_id"] = table["object_id"].astype(object).where(~is_missing, None)
    extra_rows = [extras.get(object_id, {}) if isinstance(object_id, str) else {} for object_id in table["object_id"]]
    # A missing box's own decision (one taken on ``<field>_missing``), unless it was added.
    table["decision"] = [row.get("decision") if isinstance(object_id, str) else missing_decisions.get(missing_id)
                         for row, object_id, missing_id in zip(extra_rows, table["object_id"], table["missing_id"])]
    table["previous_label"] = [row.get("previous_label") for row in extra_rows]
    table["tags"] = [row.get("tags", []) for row in extra_rows]
    table["added_id"] = [added_from.get(missing_id) if isinstance(missing_id, str) else None
                         for missing_id in table["missing_id"]]
    table.loc[table["added_id"].notna(), "decision"] = "added"
    for column in ("mislabel_score", "duplicate_score", "missing_score", "spurious_score", "localization_score",
                   "confidence"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    scores = np.zeros(len(table))
    for position, issue in enumerate(table["issue"]):
        if issue == "degenerate":
            scores[position] = 1.0
        elif issue in ISSUE_SCORE_COLUMNS:
            value = table[ISSUE_SCORE_COLUMNS[issue]].iat[position]
            scores[position] = float(value) if np.isfinite(value) else 0.0
    table["issue_score"] = np.clip(scores, 0.0, 1.0)
    sizes = _image_sizes(dataset)
    areas, pixels = [], []
    for box, sample_id in zip(table["bounding_box"], table["sample_id"]):
        values = _box_values(box)
        area = max(0.0, values[2]) * max(0.0, values[3]) if values else float("nan")
        width, height = sizes.get(sample_id, (None, None))
        areas.append(area)
        pixels.append(area * width * height if width and height else float("nan"))
    table["area"] = np.asarray(areas, dtype=float)
    table["area_px"] = np.asarray(pixels, dtype=float)
    table = table.reindex(columns=list(REVIEW_COLUMNS))
    for column in _TEXT_COLUMNS:  # None, not NaN, for "none" (pandas 3 infers string columns with NaN)
        values = table[column].astype(object)
        table[column] = values.where(values.notna(), None)
    return table


_TEXT_COLUMNS = ("object_id", "missing_id", "sample_id", "filepath", "label", "suggested_label", "issue",
                 "duplicate_of", "decision", "previous_label", "added_id")


def object_queue(table: pd.DataFrame, *, issues: Sequence[str] = (), classes: Sequence[str] = (),
                 object_ids: Sequence[str] = (), min_score: float = 0.0, include_decided: bool = False
                 ) -> pd.DataFrame:
    """The flagged rows of ``table`` (:func:`object_review_table`: a box or missing box with an
    issue), highest ``issue_score`` first, narrowed by what is given: ``issues``, ``classes``
    (the box's class or the suggested one), ``object_ids`` (boxes; a missing box matches by
    the box it was accepted as), ``min_score``; decided rows only with ``include_decided``."""
    flagged = table[table["issue"].map(lambda issue: isinstance(issue, str) and bool(issue))]
    keep = flagged["issue_score"].astype(float) >= float(min_score)
    if issues:
        keep &= flagged["issue"].isin(list(issues))
    if classes:
        wanted = list(classes)
        keep &= flagged["label"].isin(wanted) | flagged["suggested_label"].isin(wanted)
    if object_ids:
        wanted = list(object_ids)
        keep &= flagged["object_id"].isin(wanted) | flagged["added_id"].isin(wanted)
    if not include_decided:
        keep &= flagged["decision"].isna()
    queue = flagged[keep]
    order = np.lexsort((queue["sample_id"].astype(str).to_numpy(), -queue["issue_score"].astype(float).to_numpy()))
    return queue.iloc[order].reset_index(drop=True)


def annotation_reason(field: str, rows: pd.DataFrame) -> str:
    """The reason stored with an image sent to annotation: which boxes of ``field`` to fix and
    why, one clause per row of ``rows`` (rows of :func:`object_review_table`, one image)."""
    parts = []
    for row in rows.itertuples(index=False):
        what = f"{display_label(row.label)} box"
        if isinstance(row.object_id, str):
            what += f" {row.object_id}"
        issue = row.issue if isinstance(row.issue, str) else "no issue"
        if issue == "missing":
            confidence = f", model confidence {row.confidence:.2f}" if np.isfinite(row.confidence) else ""
            why = f"missing: predicted at [{', '.join(f'{v:.3f}' for v in row.bounding_box)}]{confidence}"
        elif issue == "mislabel" and isinstance(row.suggested_label, str):
            why = f"mislabel, maybe {display_label(row.suggested_label)}"
        elif issue == "duplicate" and isinstance(row.duplicate_of, str):
            why = f"duplicate of {row.duplicate_of}"
        else:
            why = issue
        parts.append(f"{what} ({why})")
    return f"fix boxes of {field}: " + "; ".join(parts)


def object_projection_frame(dataset, field: str, config: ProjectionConfig = ProjectionConfig()) -> pd.DataFrame:
    """Map coordinates of every box with a current embedding: ``object_id``, ``x``, ``y``.

    The UMAP is disk-cached by :func:`curation.projection.cached_projection` under the key
    ``<field>.detections.embedding``, with its own neighbour graph, so it never mixes with the
    image map.

    Raises:
        NoEmbeddingRecordError: the boxes were never embedded (the message says how).
    """
    from curation.patches import EMBEDDING_ATTRIBUTE, load_patch_embeddings
    from curation.projection import cached_projection

    _, detection_ids, _, _, matrix = load_patch_embeddings(dataset, field)
    if not detection_ids:
        return pd.DataFrame({"object_id": pd.Series(dtype=object), "x": pd.Series(dtype=np.float32),
                             "y": pd.Series(dtype=np.float32)})
    coords = cached_projection(dataset.name, f"{field}.detections.{EMBEDDING_ATTRIBUTE}", list(detection_ids), matrix,
                               config)
    return pd.DataFrame({"object_id": list(detection_ids), "x": coords[:, 0], "y": coords[:, 1]})


def with_object_attributes(coordinates: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``coordinates`` (``object_id``, ``x``, ``y``) joined with the rows of ``table``
    (:func:`object_review_table`) of the same boxes; boxes no longer in the table are left out."""
    boxes = table[table["object_id"].notna()].drop_duplicates("object_id")
    merged = coordinates.merge(boxes, on="object_id", how="inner")
    return merged.reset_index(drop=True)


def object_map(dataset, field: str, config: ProjectionConfig = ProjectionConfig()) -> pd.DataFrame:
    """One row per embedded box: ``object_id``, ``x``, ``y`` (UMAP of the object embeddings)
    and the columns of :func:`object_review_table` to colour and filter by (``label``,
    ``area``, ``area_px``, ``issue``, ``issue_score``, ``mislabel_score``, ``tags``, ...)."""
    return with_object_attributes(object_projection_frame(dataset, field, config), object_review_table(dataset, field))


# ---------------------------------------------------------------------------------------------
# Tags on boxes


def _label_view(dataset, field: str, object_ids: Iterable[str]):
    from curation.patches import check_detections_field

    check_detections_field(dataset, field)
    ids = [str(object_id) for object_id in object_ids]
    return ids, dataset.select_labels(ids=ids, fields=field)


def tag_objects(dataset, field: str, object_ids: Iterable[str], tag: str) -> int:
    """Add ``tag`` to the label tags of the boxes (FiftyOne's label tags: the App shows and
    filters them); returns how many boxes were tagged."""
    tag = tag.strip() if isinstance(tag, str) else ""
    if not tag:
        raise CurationInputError("tag: expected a non-empty string, got an empty one")
    ids, view = _label_view(dataset, field, object_ids)
    if not ids:
        return 0
    from curation.snapshots import snapshot_before

    snapshot_before(dataset, f"tagging {len(ids)} boxes {tag!r}", len(view))
    count = view.count(f"{field}.detections")
    view.tag_labels(tag, label_fields=field)
    return count


def untag_objects(dataset, field: str, object_ids: Iterable[str], tag: str) -> int:
    """Remove ``tag`` from the label tags of the boxes; returns how many boxes had it."""
    tag = tag.strip() if isinstance(tag, str) else ""
    ids, view = _label_view(dataset, field, object_ids)
    if not ids or not tag:
        return 0
    from curation.snapshots import snapshot_before

    had = int(sum(tag in (tags or []) for sample_tags in view.values(f"{field}.detections.tags")
                  for tags in (sample_tags or [])))
    snapshot_before(dataset, f"removing the tag {tag!r} from {len(ids)} boxes", len(view))
    view.untag_labels(tag, label_fields=field)
    return had
