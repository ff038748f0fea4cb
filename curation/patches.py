"""Per-object embeddings for detection datasets: each box cropped with a little context and
embedded with the same models as whole images (:mod:`curation.embeddings`).

Where they live: on each detection of the ``Detections`` field, as the attribute
``embedding`` (a FiftyOne ``VectorField``), so patch views see them
(``dataset.to_patches(field).values(f"{field}.embedding")``) and FiftyOne Brain can use them
(``fob.compute_similarity(dataset, patches_field=field, embeddings="embedding")``). Beside it,
``embedding_key`` is the detection's signature: a digest of the model and input settings,
of the box and of the image file's modification time and size. A run embeds only detections
whose signature changed (new, moved or resized boxes, replaced images, another model, input
size or context), so rerunning is free; it writes every few seconds like image embeddings, so
a killed run resumes where it stopped. ``embedding_error`` says why a detection has no
vector: a degenerate box (no size, not finite, outside the image, under ``min_side`` pixels)
or an unreadable image; neither stops the run, and neither is retried until the box or the
image changes (or ``retry_failed``). The run is recorded in
``dataset.info["curation"]["patch_embeddings"][field]``.

The crop: the visible part of the box, widened by ``context`` times its width and height on
each side and clipped to the image, then padded to a square with the ImageNet mean colour
(which normalises to about zero) so the model's resize-and-centre-crop keeps the whole
object; a tall person is not cut to their middle third. Each image is decoded once for all
its boxes, shrunk by a whole factor only as far as its smallest crop stays at least the
model's input size. Source images are only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from curation.datasets import curation_info, now_iso, update_curation_info
from curation.embeddings import (
    MAX_EMBED_PIXELS,
    SIZE_SAMPLE,
    WRITE_EVERY,
    WRITE_SECONDS,
    NoEmbeddingRecordError,
    ProgressCallback,
    default_batch_size,
    default_embedding_field,
    default_workers,
    recorded_spec,
    resolve_embedder,
    _encode_adaptive,
)
from curation.errors import CurationInputError, MissingFieldError
from curation.images import ImageLoadError, image_info, load_rgb
from curation.models import Embedder, ModelSpec, ModelUnavailableError, auto_image_size

logger = logging.getLogger(__name__)

EMBEDDING_ATTRIBUTE = "embedding"
KEY_ATTRIBUTE = "embedding_key"
ERROR_ATTRIBUTE = "embedding_error"
INFO_KEY = "patch_embeddings"
DEFAULT_CONTEXT = 0.1
MAX_CONTEXT = 1.0
DEFAULT_MIN_SIDE = 2
# ImageNet mean in 0..255: padding that the model's normalisation turns into about zero.
PAD_COLOUR = (124, 116, 104)
# Failures and skipped boxes kept in the run record (the counts are always whole).
RECORDED_PROBLEMS = 100
# Bumped when the crop itself changes (padding, rounding), so old vectors are re-embedded.
CROP_VERSION = 1
# Tolerance for float error when turning relative edges into pixel edges (0.6 * 100 px is
# 60.00000000000001): an edge that close to a pixel boundary is on it.
_EDGE_TOLERANCE = 1e-6


@dataclass
class PatchEmbeddingRun:
    """What one call of :func:`compute_patch_embeddings` did.

    ``already_done`` counts detections whose signature was current (embedded, or skipped or
    failed before for a reason that still holds); ``objects`` all detections, and
    ``objects_embedded`` those with a current vector after the run; ``skipped`` lists the degenerate boxes found
    in this run as (filepath, detection id, reason); ``failures`` the unreadable images as
    (filepath, reason), and ``failed`` the detections on them.
    """

    field: str
    model: str
    requested_model: str
    fallback_reason: str | None
    device: str
    dimension: int
    context: float
    min_side: int
    image_size: int | None = None
    crop: float | None = None
    flip_tta: bool = False
    input_reason: str = ""
    embedded: int = 0
    already_done: int = 0
    failed: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    objects: int = 0  # detections in the collection
    objects_embedded: int = 0  # of them, with a current vector after the run


# ---- boxes and crops -----------------------------------------------------------------------


def box_problem(box: Any) -> str | None:
    """Why a relative ``[x, y, width, height]`` box cannot be cropped, or None if it can.

    Checks what needs no image: four finite numbers, a positive size, some part inside the
    unit square. (Too few pixels, ``min_side``, is checked against the image.)
    """
    if box is None:
        return "no bounding box"
    try:
        values = [float(value) for value in box]
    except (TypeError, ValueError):
        return f"bounding box is not four numbers: {box!r}"
    if len(values) != 4:
        return f"bounding box has {len(values)} values, expected 4 [x, y, width, height]"
    shown = "[" + ", ".join(f"{value:.4g}" for value in values) + "]"
    if not all(math.isfinite(value) for value in values):
        return f"bounding box has a value that is not a finite number: {shown}"
    x, y, width, height = values
    if width <= 0 or height <= 0:
        return f"box has zero or negative size: {shown}"
    if x >= 1 or y >= 1 or x + width <= 0 or y + height <= 0:
        return f"box lies outside the image: {shown}"
    return None


def _visible_pixels(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the box's part inside a ``width`` x ``height`` image, in pixels."""
    x, y, w, h = (float(value) for value in box)
    return (max(0.0, x * width), max(0.0, y * height), min(float(width), (x + w) * width),
            min(float(height), (y + h) * height))


def patch_region(box: Sequence[float], width: int, height: int, context: float = DEFAULT_CONTEXT
                 ) -> tuple[int, int, int, int] | None:
    """The pixel rectangle ``(left, top, right, bottom)`` cropped for ``box`` (PIL's convention:
    right and bottom exclusive).

    Args:
        box: relative ``[x, y, width, height]`` (FiftyOne's convention), values in [0, 1].
        width, height: the image's size in pixels.
        context: margin on each side as a fraction of the visible box's width (left and
            right) and height (top and bottom); 0.1 makes the crop 1.2 times the box.

    The visible part of the box is widened by the margin, rounded outwards to whole pixels
    and clipped to the image. None when no part of the box is inside the image.
    """
    left, top, right, bottom = _visible_pixels(box, width, height)
    if not (right > left and bottom > top):
        return None
    margin_x, margin_y = context * (right - left), context * (bottom - top)
    left = max(0, math.floor(left - margin_x + _EDGE_TOLERANCE))
    top = max(0, math.floor(top - margin_y + _EDGE_TOLERANCE))
    right = min(width, max(left + 1, math.ceil(right + margin_x - _EDGE_TOLERANCE)))
    bottom = min(height, max(top + 1, math.ceil(bottom + margin_y - _EDGE_TOLERANCE)))
    return left, top, right, bottom


def crop_patch(image, box: Sequence[float], context: float = DEFAULT_CONTEXT):
    """The crop of ``box`` (relative ``[x, y, width, height]``) with its context, from a PIL image.

    Raises:
        CurationInputError: no part of the box is inside the image.
    """
    region = patch_region(box, image.width, image.height, context)
    if region is None:
        raise CurationInputError(f"box {list(box)!r} has no part inside the {image.width} x {image.height} image")
    return image.crop(region)


def square_patch(crop):
    """``crop`` centred on a square of its longer side, padded with ``PAD_COLOUR``.

    The model's preprocess resizes the shorter side and cuts the centre square; on a square
    input that keeps the whole object whatever its shape.
    """
    from PIL import Image

    side = max(crop.width, crop.height)
    if crop.width == crop.height:
        return crop
    square = Image.new("RGB", (side, side), PAD_COLOUR)
    square.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return square


def _decode_max_side(full_size: tuple[int, int], regions: list[tuple[int, int, int, int]], input_size: int) -> int | None:
    """``max_side`` for :func:`load_rgb` that shrinks the image as far as its smallest crop
    (longer side) stays at least ``input_size`` px; None for a full-size decode."""
    smallest = min(max(right - left, bottom - top) for left, top, right, bottom in regions)
    factor = int(smallest // max(1, input_size))
    if factor < 2:
        return None
    return math.ceil(min(full_size) / factor)


def _sample_crops(path: str, boxes: list[tuple[int, Sequence[float]]], context: float, min_side: int,
                  input_size: int) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """Decode ``path`` once and cut its boxes: ([(slot, square crop)], [(slot, too-small reason)]).

    Raises:
        ImageLoadError: the image cannot be decoded (the message is the reason).
    """
    image = None
    full = image_info(path)
    if full is None:  # an unreadable header: the full decode says why (or succeeds)
        image = load_rgb(path, max_pixels=MAX_EMBED_PIXELS)
        full = image.size
    width, height = full
    kept, small = [], []
    for slot, box in boxes:
        left, top, right, bottom = _visible_pixels(box, width, height)
        if min(right - left, bottom - top) < min_side:
            small.append((slot, f"box is {max(0.0, right - left):.1f} x {max(0.0, bottom - top):.1f} px in the "
                                f"{width} x {height} image, under min_side={min_side}"))
        else:
            kept.append((slot, box))
    if not kept:
        return [], small
    if image is None:
        regions = [patch_region(box, width, height, context) for _, box in kept]
        image = load_rgb(path, max_side=_decode_max_side(full, regions, input_size), max_pixels=MAX_EMBED_PIXELS)
    return [(slot, square_patch(crop_patch(image, box, context))) for slot, box in kept], small


class _PatchGroups:
    """Map-style torch dataset: one item is a group of images with about a batch of boxes;
    decoding, cropping and preprocessing run in DataLoader workers."""

    def __init__(self, groups: list[list[tuple[int, str, list]]], preprocess, context: float, min_side: int,
                 input_size: int):
        self.groups = groups  # [[(job, filepath, [(slot, box), ...]), ...], ...]
        self.preprocess = preprocess
        self.context = context
        self.min_side = min_side
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int):
        import torch

        refs, tensors, small, failed = [], [], [], []
        for job, path, boxes in self.groups[index]:
            try:
                crops, too_small = _sample_crops(path, boxes, self.context, self.min_side, self.input_size)
            except ImageLoadError as error:
                failed.append((job, None, str(error)))
                continue
            except Exception as error:  # one odd file must not end the run
                failed.append((job, None, f"cannot crop image: {type(error).__name__}: {error}"))
                continue
            small.extend((job, slot, reason) for slot, reason in too_small)
            for slot, crop in crops:
                try:
                    tensors.append(self.preprocess(crop))
                except Exception as error:
                    failed.append((job, slot, f"cannot preprocess crop: {type(error).__name__}: {error}"))
                    continue
                refs.append((job, slot))
        return refs, (torch.stack(tensors) if tensors else None), small, failed


def _identity(item):
    return item


# ---- signatures, fields and records --------------------------------------------------------


def _digest(text: str, length: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def _box_digest(box: Any) -> str:
    try:
        text = ",".join(f"{float(value):.6f}" for value in box)
    except (TypeError, ValueError):
        text = repr(box)
    return _digest(text)


def _file_digest(path: str) -> str:
    try:
        status = os.stat(path)
    except OSError as error:
        return _digest(f"unreadable:{type(error).__name__}")
    return _digest(f"{status.st_mtime_ns}:{status.st_size}")


def _settings_digest(embedder: Embedder, context: float) -> str:
    settings = {"model": embedder.spec.name, "checkpoint": embedder.spec.checkpoint, "context": round(context, 6),
                "crop_version": CROP_VERSION, **embedder.input_config()}
    return _digest(json.dumps(settings, sort_keys=True))


def _small_suffix(min_side: int) -> str:
    # Boxes skipped as too small carry min_side in their signature: another min_side retries
    # them, while vectors (which do not depend on it) stay current.
    return f"-min{min_side}"


def _root(dataset):
    return dataset._root_dataset if hasattr(dataset, "_root_dataset") else dataset


def check_detections_field(dataset, field_name: Any) -> None:
    """Raise unless ``field_name`` is a ``Detections`` field of ``dataset``.

    Raises:
        MissingFieldError: no such field (the message lists the Detections fields).
        CurationInputError: another kind of field (the message names its type).
    """
    import fiftyone as fo

    schema = dataset.get_field_schema()
    candidates = sorted(name for name, kind in schema.items()
                        if isinstance(kind, fo.EmbeddedDocumentField) and issubclass(kind.document_type, fo.Detections))
    listed = ", ".join(candidates) or "none"
    name = _root(dataset).name
    if not isinstance(field_name, str) or not field_name:
        raise CurationInputError(f"field: expected the name of a Detections field, got {field_name!r} "
                                 f"(Detections fields of {name!r}: {listed})")
    if field_name not in schema:
        raise MissingFieldError(f"dataset {name!r} has no field {field_name!r}; its Detections fields: {listed}")
    kind = schema[field_name]
    if not (isinstance(kind, fo.EmbeddedDocumentField) and issubclass(kind.document_type, fo.Detections)):
        what = kind.document_type.__name__ if isinstance(kind, fo.EmbeddedDocumentField) else type(kind).__name__
        raise CurationInputError(f"field {field_name!r} of dataset {name!r} is a {what} field, not Detections: "
                                 f"object embeddings need boxes. Its Detections fields: {listed}")


def _check_context(context: Any) -> float:
    if isinstance(context, bool) or not isinstance(context, (int, float, np.floating, np.integer)) \
            or not math.isfinite(context) or not 0 <= context <= MAX_CONTEXT:
        raise CurationInputError(f"context: expected a fraction of the box in [0, {MAX_CONTEXT:g}], got {context!r}")
    return float(context)


def _check_min_side(min_side: Any) -> int:
    if isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < 1:
        raise CurationInputError(f"min_side: expected a whole number of pixels >= 1, got {min_side!r}")
    return int(min_side)


def _declare_attributes(root, field_name: str) -> None:
    import fiftyone as fo

    for attribute, kind in ((EMBEDDING_ATTRIBUTE, fo.VectorField), (KEY_ATTRIBUTE, fo.StringField),
                            (ERROR_ATTRIBUTE, fo.StringField)):
        path = f"{field_name}.detections.{attribute}"
        existing = root.get_field(path)
        if existing is None:
            root.add_sample_field(path, kind)
        elif not isinstance(existing, kind):
            raise CurationInputError(
                f"{path} already holds {type(existing).__name__} values, not the {kind.__name__} that object "
                f"embeddings store there; rename or delete that attribute first")


def patch_record(dataset, field_name: str) -> dict | None:
    """The run record of ``field_name``'s object embeddings, or None."""
    return curation_info(_root(dataset)).get(INFO_KEY, {}).get(field_name)


def _record_run(root, run: PatchEmbeddingRun, used: ModelSpec, requested: ModelSpec, settings: str,
                complete: bool) -> None:
    runs = dict(curation_info(root).get(INFO_KEY, {}))
    runs[run.field] = {
        "model": used.name,
        "model_spec": used.to_dict(),
        "requested_model": requested.name,
        "fallback_reason": run.fallback_reason,
        "device": run.device,
        "dimension": run.dimension,
        "image_size": run.image_size,
        "crop": run.crop,
        "flip_tta": run.flip_tta,
        "input_reason": run.input_reason,
        "context": run.context,
        "min_side": run.min_side,
        "settings_key": settings,
        "attribute": EMBEDDING_ATTRIBUTE,
        "embedded": run.embedded,
        "already_done": run.already_done,
        "skipped": len(run.skipped),
        "failed": run.failed,
        "objects": run.objects,
        "objects_embedded": run.objects_embedded,
        "failures": [list(item) for item in run.failures[:RECORDED_PROBLEMS]],
        "skipped_boxes": [list(item) for item in run.skipped[:RECORDED_PROBLEMS]],
        "complete": complete,
        "updated_at": now_iso(),
    }
    update_curation_info(root, **{INFO_KEY: runs})


# ---- model and input -----------------------------------------------------------------------


def _patch_embedder(root, field_name: str, record: dict | None, model, checkpoint, embedder, device: str,
                    allow_fallback: bool) -> tuple[ModelSpec, Embedder]:
    """The model asked for and the embedder: by default the field's own earlier model, else the
    dataset's image embeddings' model (so objects and images share a space), else the default."""
    if model is not None or embedder is not None or checkpoint is not None:
        return resolve_embedder(model, checkpoint, embedder, device=device, allow_fallback=allow_fallback)
    if record and "model_spec" in record:
        spec = recorded_spec(record, f"the objects of {field_name!r}")
        try:
            return resolve_embedder(spec, None, None, device=device, allow_fallback=False)
        except ModelUnavailableError as error:
            raise ModelUnavailableError(
                f"the objects of {field_name!r} were embedded with {spec.name}, which cannot be loaded here ({error}); "
                f"name another model to re-embed them all with it") from error
    image_field = default_embedding_field(root)
    image_record = curation_info(root).get("embeddings", {}).get(image_field) if image_field else None
    if image_record and "model_spec" in image_record:
        spec = recorded_spec(image_record, image_field)
        return resolve_embedder(spec, None, None, device=device, allow_fallback=allow_fallback)
    return resolve_embedder(None, checkpoint, None, device=device, allow_fallback=allow_fallback)


def _typical_crop_side(paths: list[str], boxes: list, context: float, seed: int = 0) -> tuple[float | None, int]:
    """Median longer side (px) of the crops on up to ``SIZE_SAMPLE`` images (headers only)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(SIZE_SAMPLE, len(paths)), replace=False) if paths else []
    sides, images = [], 0
    for index in sorted(chosen):
        size = image_info(paths[index])
        if not size:
            continue
        images += 1
        for box in boxes[index]:
            if box_problem(box) is None:
                region = patch_region(box, *size, context)
                sides.append(max(region[2] - region[0], region[3] - region[1]))
    return (float(np.median(sides)), images) if sides else (None, images)


def _choose_patch_input(record: dict | None, embedder: Embedder, image_size, flip_tta: bool | None,
                        paths: list[str], boxes: list, context: float) -> tuple[int | None, float | None, bool, str]:
    """(image_size, crop, flip_tta, reason): the field's earlier choice for the same model, else from the crops."""
    name = embedder.spec.name
    if not (image_size == "auto" or embedder.resizable or image_size == embedder.image_size):
        raise CurationInputError(f"image_size: {name} takes a fixed {embedder.image_size} px input "
                                 f"(its own preprocess); got {image_size!r} (use 'auto')")
    if image_size != "auto":
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
            raise CurationInputError(f"image_size: expected a whole number of pixels or 'auto', got {image_size!r}")
        image_size = int(image_size)
    same_model = bool(record) and record.get("model") == name and "image_size" in record
    if same_model and image_size == "auto":
        flip = bool(record.get("flip_tta", False)) if flip_tta is None else bool(flip_tta)
        return record["image_size"], record.get("crop"), flip, "the field's earlier run"
    flip = embedder.flip_tta if flip_tta is None else bool(flip_tta)
    if not embedder.resizable:
        return embedder.image_size, embedder.crop, flip, "fixed by the model"
    if image_size != "auto":
        return image_size, embedder.crop, flip, "asked for"
    typical, images = _typical_crop_side(paths, boxes, context)
    size = auto_image_size(embedder.native_size, typical)
    if typical is None:
        return size, embedder.crop, flip, "auto: no readable box; the model's native size"
    return size, embedder.crop, flip, f"auto: median longer side of the crops {typical:g} px on {images} images"


# ---- the run -------------------------------------------------------------------------------


def compute_patch_embeddings(
    dataset,
    field: str,
    *,
    model: str | ModelSpec | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
    context: float = DEFAULT_CONTEXT,
    min_side: int = DEFAULT_MIN_SIDE,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
    image_size: int | str = "auto",
    flip_tta: bool | None = None,
    embedder: Embedder | None = None,
    allow_fallback: bool = True,
    retry_failed: bool = False,
) -> PatchEmbeddingRun:
    """Embed every detection of ``field`` whose embedding is missing or out of date.

    Args:
        dataset: a FiftyOne dataset or view (only its samples, and only the detections it
            shows, are embedded).
        field: a ``Detections`` field (boxes relative ``[x, y, width, height]``).
        model: registry name or spec. Default: the model the field's objects were embedded
            with before; else the model of the dataset's image embeddings (objects and images
            then share one space); else ``DEFAULT_MODEL``. Another model than the field's
            earlier one re-embeds every detection.
        checkpoint: local weights file for ``model``.
        device: ``auto`` (cuda, then cpu), ``cpu`` or ``cuda[:N]``.
        context: margin around each box, as a fraction of its width and height on each side
            (0.1: the crop is 1.2 times the box), clipped to the image; in [0, 1]. 0.1 to
            0.2 keep the object's outline and a little surrounding.
        min_side: boxes with a visible side under this many pixels (of the image file) are
            skipped with a reason; 1 or more.
        batch_size: crops per forward pass; default 256 on GPU (halved on OOM), 32 on CPU.
        num_workers: decode-and-crop workers; default all cores (GPU) or 1 (CPU).
        progress: called with (detections done, detections to do) after each batch.
        image_size: model input side for models that take any size, or ``"auto"``: the
            field's earlier size for the same model, else :func:`curation.models.auto_image_size`
            of the median longer side of the crops (28 px objects -> 160 px).
        flip_tta: embed each crop with its mirror (2x the cost); None: as before, else off.
        embedder: an already loaded model (skips loading).
        allow_fallback: use the offline model when CLIP's weights cannot be had.
        retry_failed: also retry detections skipped or failed before whose signature holds.

    Returns:
        A :class:`PatchEmbeddingRun`: counts, the model and input used, skipped boxes and
        unreadable images with reasons.

    Raises:
        MissingFieldError: no field ``field`` (the message lists the Detections fields).
        CurationInputError: ``field`` is not a Detections field (the message names its
            type), or a setting out of range.
        ModelUnavailableError: the model cannot be loaded.
    """
    import torch
    from torch.utils.data import DataLoader

    check_detections_field(dataset, field)
    context = _check_context(context)
    min_side = _check_min_side(min_side)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise CurationInputError(f"batch_size: expected a whole number >= 1, got {batch_size!r}")
    root = _root(dataset)
    record = patch_record(root, field)
    spec, embedder = _patch_embedder(root, field, record, model, checkpoint, embedder, device, allow_fallback)
    used = embedder.spec

    paths_of = f"{field}.detections"
    sample_ids, filepaths, detection_ids, boxes, keys, errors = dataset.values(
        ["id", "filepath", f"{paths_of}.id", f"{paths_of}.bounding_box", f"{paths_of}.{KEY_ATTRIBUTE}",
         f"{paths_of}.{ERROR_ATTRIBUTE}"])
    with_boxes = [index for index, ids in enumerate(detection_ids) if ids]
    size, crop, flip, input_reason = _choose_patch_input(
        record, embedder, image_size, flip_tta, [filepaths[index] for index in with_boxes],
        [boxes[index] for index in with_boxes], context)
    embedder = embedder.with_input(image_size=size, crop=crop, flip_tta=flip)
    settings = _settings_digest(embedder, context)
    run = PatchEmbeddingRun(field, used.name, spec.name, embedder.fallback_reason, embedder.device, embedder.dimension,
                            context, min_side, image_size=embedder.image_size, crop=embedder.crop,
                            flip_tta=embedder.flip_tta, input_reason=input_reason)
    _declare_attributes(root, field)

    # Which detections need work; relative-box problems are settled here, without decoding.
    jobs: list[tuple[str, str, list[tuple[str, str]]]] = []  # (sample id, filepath, [(detection id, key)])
    work: list[tuple[int, str, list[tuple[int, Any]]]] = []  # (job, filepath, [(slot, box)])
    writes: list[tuple[str, str, np.ndarray | None, str, str | None]] = []  # (sample, detection, vector, key, error)
    suffix = _small_suffix(min_side)
    for index in with_boxes:
        sample_id, path = sample_ids[index], filepaths[index]
        stamp = _file_digest(path)
        sample_keys = keys[index] or [None] * len(detection_ids[index])
        sample_errors = errors[index] or [None] * len(detection_ids[index])
        pending_boxes, pending_refs = [], []
        for detection_id, box, key, error in zip(detection_ids[index], boxes[index], sample_keys, sample_errors):
            current = f"{settings}-{_box_digest(box)}-{stamp}"
            run.objects += 1
            if key in (current, current + suffix) and not (retry_failed and error):
                run.already_done += 1
                run.objects_embedded += error is None
                continue
            problem = box_problem(box)
            if problem:
                run.skipped.append((path, detection_id, problem))
                writes.append((sample_id, detection_id, None, current, problem))
                continue
            pending_boxes.append((len(pending_refs), box))
            pending_refs.append((detection_id, current))
        if pending_refs:
            work.append((len(jobs), path, pending_boxes))
            jobs.append((sample_id, path, pending_refs))

    total = sum(len(boxes_) for _, _, boxes_ in work) + len(writes)
    done = len(writes)
    _record_run(root, run, used, spec, settings, complete=False)
    last_write = time.monotonic()

    def flush() -> None:
        nonlocal last_write
        if writes:
            _write_detections(root, field, writes)
            writes.clear()
        last_write = time.monotonic()

    try:
        if work:
            batch_size = batch_size or default_batch_size(embedder.device)
            workers = default_workers(embedder.device) if num_workers is None else num_workers
            groups = _group(work, batch_size)
            loader = DataLoader(_PatchGroups(groups, embedder.preprocess, context, min_side, embedder.image_size),
                                batch_size=None, num_workers=workers, collate_fn=_identity,
                                pin_memory=embedder.device.startswith("cuda"), persistent_workers=False)
            if not embedder.device.startswith("cuda"):
                torch.set_num_threads(max(1, (os.cpu_count() or 1)))
            for refs, batch, small, failed in loader:
                for job, slot, reason in small:
                    sample_id, path, pending = jobs[job]
                    detection_id, key = pending[slot]
                    run.skipped.append((path, detection_id, reason))
                    writes.append((sample_id, detection_id, None, key + suffix, reason))
                for job, slot, reason in failed:
                    # slot None: the image failed, and with it every box of it still to do.
                    sample_id, path, pending = jobs[job]
                    affected = pending if slot is None else [pending[slot]]
                    run.failures.append((path, reason if slot is None else f"detection {pending[slot][0]}: {reason}"))
                    run.failed += len(affected)
                    writes.extend((sample_id, detection_id, None, key, reason) for detection_id, key in affected)
                    done += len(affected)
                if batch is not None:
                    for start in range(0, len(refs), batch_size):
                        encoded = _encode_adaptive(embedder, batch[start:start + batch_size])
                        for (job, slot), vector in zip(refs[start:start + batch_size], encoded):
                            sample_id, _, pending = jobs[job]
                            detection_id, key = pending[slot]
                            writes.append((sample_id, detection_id, vector, key, None))
                    run.embedded += len(refs)
                    run.objects_embedded += len(refs)
                done += len(refs) + len(small)
                if len(writes) >= WRITE_EVERY or time.monotonic() - last_write >= WRITE_SECONDS:
                    flush()
                if progress:
                    progress(done, total)
        elif progress and total:
            progress(done, total)
    except BaseException:
        # Interrupted (Ctrl-C, a failing batch): keep what is already computed, then stop.
        try:
            flush()
        except Exception:
            logger.exception("could not save the object embeddings computed before the interruption")
        raise
    flush()
    _record_run(root, run, used, spec, settings, complete=True)
    return run


def _write_detections(root, field_name: str, writes: list[tuple[str, str, np.ndarray | None, str, str | None]]) -> None:
    """Set the vector, signature and error of each (sample id, detection id, ...) in ``writes``.

    One update per detection for all three attributes, as FiftyOne's own
    ``set_label_values`` builds them (an array filter on the detection's id, the sample's
    ``last_modified_at``), through the same bulk write; three ``set_label_values`` calls
    would send three updates per detection, and measured 2,900 detections/s against 8,900
    for this, which a GPU outruns. A detection deleted meanwhile matches nothing; one edited
    meanwhile gets the signature of the box that was cropped, so the next run redoes it.
    """
    import datetime

    from bson import ObjectId
    from pymongo import UpdateOne

    vector_field = root.get_field(f"{field_name}.detections.{EMBEDDING_ATTRIBUTE}")
    prefix = f"{field_name}.detections.$[label]."
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # FiftyOne stores naive UTC
    operations, sample_ids = [], []
    for sample_id, detection_id, vector, key, error in writes:
        sample_ids.append(ObjectId(sample_id))
        operations.append(UpdateOne(
            {"_id": sample_ids[-1]},
            {"$set": {prefix + EMBEDDING_ATTRIBUTE: None if vector is None else vector_field.to_mongo(vector),
                      prefix + KEY_ATTRIBUTE: key, prefix + ERROR_ATTRIBUTE: error, "last_modified_at": now}},
            array_filters=[{"label._id": ObjectId(detection_id)}]))
    root._bulk_write(operations, ids=list(dict.fromkeys(sample_ids)))


def _group(work: list[tuple[int, str, list]], batch_size: int) -> list[list[tuple[int, str, list]]]:
    """Consecutive images in groups of at most ``batch_size`` boxes (an image with more is a group alone)."""
    groups: list[list] = []
    current: list = []
    count = 0
    for item in work:
        boxes = len(item[2])
        if current and count + boxes > batch_size:
            groups.append(current)
            current, count = [], 0
        current.append(item)
        count += boxes
    if current:
        groups.append(current)
    return groups


# ---- reading -------------------------------------------------------------------------------


def load_patch_embeddings(dataset, field: str) -> tuple[list[str], list[str], list[str | None], np.ndarray, np.ndarray]:
    """The object embeddings of ``field``, for the object finders.

    Only detections whose vector is current are returned: made with the field's recorded
    model, input and context, for the box as it is now (a box edited since is left out until
    :func:`compute_patch_embeddings` runs again; so are skipped boxes and unreadable images).
    Order: the collection's sample order, then each sample's detection order; stable between
    calls on unchanged data.

    Returns:
        ``(sample_ids, detection_ids, labels, boxes, matrix)``: one entry per detection;
        ``labels`` the detections' labels (None where unset), ``boxes`` a (N, 4) float64
        array of relative ``[x, y, width, height]``, ``matrix`` (N, D) float32, L2-normalised
        rows. With no current vector: empty lists, a (0, 4) array and a (0, D) matrix.

    Raises:
        MissingFieldError, CurationInputError: ``field`` is missing or not Detections.
        NoEmbeddingRecordError: the field's objects were never embedded (the message says how).
    """
    check_detections_field(dataset, field)
    root = _root(dataset)
    record = patch_record(root, field)
    if not record or "settings_key" not in record:
        raise NoEmbeddingRecordError(f"the objects of {field!r} in dataset {root.name!r} have no embeddings yet; run "
                                     f"`curation embed --dataset {root.name} --patches {field}`")
    settings, dimension = record["settings_key"], int(record.get("dimension") or 0)
    prefix = f"{field}.detections"
    sample_ids, detection_ids, labels, boxes, vectors, keys = dataset.values(
        ["id", f"{prefix}.id", f"{prefix}.label", f"{prefix}.bounding_box", f"{prefix}.{EMBEDDING_ATTRIBUTE}",
         f"{prefix}.{KEY_ATTRIBUTE}"])
    out_samples, out_detections, out_labels, out_boxes, out_vectors = [], [], [], [], []
    for sample_id, ids, sample_labels, sample_boxes, sample_vectors, sample_keys in zip(
            sample_ids, detection_ids, labels, boxes, vectors, keys):
        for detection_id, label, box, vector, key in zip(ids or [], sample_labels or [], sample_boxes or [],
                                                         sample_vectors or [], sample_keys or []):
            if vector is None or not key:
                continue
            parts = key.split("-")
            if parts[0] != settings or len(parts) < 3 or parts[1] != _box_digest(box):
                continue
            out_samples.append(sample_id)
            out_detections.append(detection_id)
            out_labels.append(label)
            out_boxes.append([float(value) for value in box])
            out_vectors.append(vector)
    if not out_vectors:
        return [], [], [], np.zeros((0, 4), dtype=np.float64), np.zeros((0, dimension), dtype=np.float32)
    return (out_samples, out_detections, out_labels, np.asarray(out_boxes, dtype=np.float64),
            np.stack(out_vectors).astype(np.float32, copy=False))


def patch_embedding_failures(dataset, field: str) -> list[tuple[str, str, str]]:
    """(filepath, detection id, reason) for every detection of ``field`` that has no vector
    because its box is degenerate or its image unreadable."""
    check_detections_field(dataset, field)
    prefix = f"{field}.detections"
    if _root(dataset).get_field(f"{prefix}.{ERROR_ATTRIBUTE}") is None:
        return []
    paths, ids, reasons = dataset.values(["filepath", f"{prefix}.id", f"{prefix}.{ERROR_ATTRIBUTE}"])
    return [(path, detection_id, reason)
            for path, sample_ids, sample_reasons in zip(paths, ids, reasons)
            for detection_id, reason in zip(sample_ids or [], sample_reasons or []) if reason]
