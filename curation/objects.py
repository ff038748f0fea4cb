"""Object-level findings for detection datasets: one row per annotated box.

A detection dataset holds a ``fo.Detections`` field per sample (relative ``[x, y, w, h]``
boxes, FiftyOne's convention). :func:`analyze_objects` scores every box:

- **mislabel** (wrong class): the image mislabel finder (:func:`curation.finders.mislabels.
  find_mislabels`: out-of-fold classifier chosen per dataset, neighbour votes, cleanlab) run on
  the per-object embeddings of :mod:`curation.patches`. With a predictions field, the class
  evidence of the prediction matched to each box (IoU >= ``match_iou``) joins it
  (:func:`combine_prediction_classes`): its class probabilities (the softmax of a ``logits``
  attribute over ``dataset.classes[predictions]``, else its ``confidence`` for its label and the
  rest spread evenly), averaged with the embedding finder's label quality at a weight chosen
  per dataset by the out-of-sample log loss of the given labels, as the image finder weighs its
  signals. cleanlab's swap score (the model sees another class there) is kept as a column.
- **duplicate**: the same object annotated twice in one image: another box of the image with an
  IoU of at least ``duplicate_iou`` (any class); the later box is the duplicate of the earlier.
- **degenerate**: zero or negative size, NaN, or (mostly) outside the image.
- with a predictions field (a model's detections, with confidences): **missing** (a prediction
  no annotation matches: ``confidence x (1 - best IoU / match_iou)``, a row with an empty
  ``object_id`` and the predicted box), **spurious** (an annotation no prediction supports:
  ``1 - best IoU / match_iou``), **localization** (cleanlab's badly-located score,
  ``cleanlab.object_detection.rank``, where a prediction does overlap), cleanlab's swap score
  and its label-quality score per image. (cleanlab's own overlooked score only judges
  predictions above 0.95 confidence and does not weigh the confidence; spurious boxes get a
  badly-located score of 1, "fine", when no prediction of their class overlaps them.)

Scores are in [0, 1], higher meaning more likely an issue; ``issue`` names the strongest flagged
one (mislabel, duplicate, missing, spurious, localization, degenerate; empty when none).
:func:`write_object_findings` stores the per-box results as attributes of the detections (so
the FiftyOne App and patch views show and filter them), the missing boxes in a Detections field
``<field>_missing`` and the image score in ``object_label_quality``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from curation.errors import CurationInputError

logger = logging.getLogger(__name__)

ISSUES = ("mislabel", "duplicate", "missing", "spurious", "localization", "degenerate")
COLUMNS = ("object_id", "sample_id", "filepath", "label", "bounding_box", "mislabel_score", "suggested_label",
           "swap_score", "duplicate_of", "duplicate_score", "missing_score", "spurious_score", "localization_score",
           "degenerate_reason", "issue", "issue_score", "confidence", "embedding_mislabel_score",
           "prediction_mislabel_score", "predicted_label")
ATTRIBUTES = ("mislabel_score", "suggested_label", "duplicate_of", "duplicate_score", "spurious_score",
              "localization_score", "issue")
INFO_KEY = "object_analysis"
IMAGE_SCORE_FIELD = "object_label_quality"
AUTO = "auto"
# The prediction's share of the wrong-class evidence, tried in this order (ties keep the earlier:
# an even mix first); below MIN_WEIGHT_BOXES boxes with both signals the fixed share is used.
PREDICTION_WEIGHT_GRID = (0.5, 0.25, 0.75, 0.0, 1.0)
FALLBACK_PREDICTION_WEIGHT = 0.5
MIN_WEIGHT_BOXES = 200


@dataclass(frozen=True)
class ObjectConfig:
    """Settings of :func:`analyze_objects`.

    Attributes:
        duplicate_iou: two boxes of one image overlapping at least this much (IoU) are the same
            object drawn twice (two distinct objects rarely overlap this much).
        mislabel_threshold: ``mislabel_score`` at or above which a box is flagged (as images).
        min_prediction_confidence: predictions below this are ignored by the prediction-based
            scores (cleanlab's own default pruning is applied as well).
        missing_threshold, spurious_threshold, localization_threshold: flag cut-offs of those scores.
        match_iou: a prediction overlapping an annotation at least this much supports it; below
            ``spurious_iou`` nothing does (a spurious box, not a badly located one).
        min_side_px: boxes smaller than this many pixels on a side are degenerate.
        prediction_weight: the matched prediction's share of the wrong-class evidence (with a
            predictions field): ``"auto"`` (chosen per dataset among
            :data:`PREDICTION_WEIGHT_GRID` by the out-of-sample log loss of the given labels;
            0.5 below :data:`MIN_WEIGHT_BOXES` boxes with both signals), or a number in [0, 1]
            (0: the embeddings alone, 1: the predictions alone where a box has one).
    """

    duplicate_iou: float = 0.8
    mislabel_threshold: float = 0.9
    min_prediction_confidence: float = 0.1
    missing_threshold: float = 0.5
    spurious_threshold: float = 0.9
    localization_threshold: float = 0.9
    match_iou: float = 0.5
    spurious_iou: float = 0.1
    min_side_px: float = 1.0
    prediction_weight: float | str = AUTO

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "prediction_weight" and value == AUTO:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                also = " or 'auto'" if name == "prediction_weight" else ""
                raise CurationInputError(f"{name}: expected a number{also}, got {value!r}")
            if name != "min_side_px" and not 0 <= value <= 1:
                raise CurationInputError(f"{name}: expected a number in [0, 1], got {value!r}")
        if self.min_side_px < 0:
            raise CurationInputError(f"min_side_px: expected a number >= 0, got {self.min_side_px!r}")


# ---------------------------------------------------------------------------------------------
# Reading boxes


def check_detections_field(dataset, field: str, what: str = "--patches") -> None:
    """Raise a clear error unless ``field`` is a ``fo.Detections`` field of ``dataset``."""
    import fiftyone as fo

    if not isinstance(field, str) or not field:
        raise CurationInputError(f"{what}: expected the name of a Detections field, got {field!r}")
    if not dataset.has_sample_field(field):
        detections = [name for name, kind in dataset.get_field_schema(embedded_doc_type=fo.Detections).items()]
        raise CurationInputError(f"{what}: dataset {dataset.name!r} has no field {field!r}; its Detections fields: "
                                 + (", ".join(sorted(detections)) or "none"))
    kind = getattr(dataset.get_field(field), "document_type", None)
    if kind is None or not issubclass(kind, fo.Detections):
        shown = kind.__name__ if kind is not None else type(dataset.get_field(field)).__name__
        raise CurationInputError(f"{what}: field {field!r} holds {shown}, expected Detections (boxes)")


def _image_sizes(dataset) -> dict[str, tuple[int, int]]:
    """(width, height) per sample id, from FiftyOne metadata or the image headers."""
    from curation.images import image_info

    ids, paths = dataset.values(["id", "filepath"])
    widths = dataset.values("metadata.width") if dataset.has_sample_field("metadata") else [None] * len(ids)
    heights = dataset.values("metadata.height") if dataset.has_sample_field("metadata") else [None] * len(ids)
    sizes = {}
    for sample_id, path, width, height in zip(ids, paths, widths, heights):
        if not width or not height:
            info = image_info(path)
            width, height = info if info else (None, None)
        sizes[sample_id] = (width, height)
    return sizes


def object_table(dataset, field: str) -> pd.DataFrame:
    """One row per detection of ``field``: object_id, sample_id, filepath, label, bounding_box
    (relative [x, y, w, h]), confidence, image width and height (pixels, None if unknown)."""
    check_detections_field(dataset, field)
    ids, paths, detections = dataset.values(["id", "filepath", f"{field}.detections"])
    sizes = _image_sizes(dataset)
    rows = []
    for sample_id, path, boxes in zip(ids, paths, detections):
        width, height = sizes.get(sample_id, (None, None))
        for detection in boxes or []:
            rows.append({"object_id": detection.id, "sample_id": sample_id, "filepath": path, "label": detection.label,
                         "bounding_box": list(detection.bounding_box or []), "confidence": detection.confidence,
                         "image_width": width, "image_height": height})
    columns = ["object_id", "sample_id", "filepath", "label", "bounding_box", "confidence", "image_width", "image_height"]
    return pd.DataFrame(rows, columns=columns)


def _boxes(values) -> np.ndarray:
    """(N, 4) float relative [x, y, w, h]; NaN rows for malformed boxes."""
    out = np.full((len(values), 4), np.nan)
    for index, box in enumerate(values):
        try:
            row = np.asarray(box, dtype=float)
        except (TypeError, ValueError):
            continue
        if row.shape == (4,):
            out[index] = row
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), [x, y, w, h] boxes in one
    coordinate system; 0 where a box is malformed or has no area."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    width = np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0][:, None], b[:, 0][None])
    height = np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1][:, None], b[:, 1][None])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = np.clip(a[:, 2], 0, None) * np.clip(a[:, 3], 0, None)
    area_b = np.clip(b[:, 2], 0, None) * np.clip(b[:, 3], 0, None)
    union = area_a[:, None] + area_b[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(union > 0, inter / union, 0.0)
    return np.nan_to_num(result, nan=0.0)


# ---------------------------------------------------------------------------------------------
# Finders that need only the boxes


def find_degenerate(table: pd.DataFrame, config: ObjectConfig = ObjectConfig()) -> pd.Series:
    """The reason a box cannot be right (None where it can): malformed, zero or negative size,
    smaller than ``min_side_px`` pixels, or mostly outside the image."""
    boxes = _boxes(table["bounding_box"])
    reasons: list[str | None] = []
    for (x, y, w, h), width, height in zip(boxes, table["image_width"], table["image_height"]):
        if not np.isfinite([x, y, w, h]).all():
            reasons.append("malformed box (not four finite numbers)")
        elif w <= 0 or h <= 0:
            reasons.append(f"no area (width {w:.3g}, height {h:.3g})")
        elif width and height and (w * width < config.min_side_px or h * height < config.min_side_px):
            reasons.append(f"smaller than {config.min_side_px:g} px ({w * width:.2g} x {h * height:.2g} px)")
        else:
            inside_w = max(0.0, min(x + w, 1.0) - max(x, 0.0))
            inside_h = max(0.0, min(y + h, 1.0) - max(y, 0.0))
            inside = inside_w * inside_h / (w * h)
            reasons.append(None if inside >= 0.5 else f"{1 - inside:.0%} outside the image")
    return pd.Series(reasons, index=table.index, dtype=object)


def find_duplicate_boxes(table: pd.DataFrame, config: ObjectConfig = ObjectConfig()) -> pd.DataFrame:
    """Per box: ``duplicate_score`` (its highest IoU with another box of the image) and
    ``duplicate_of`` (the earlier box it repeats, when the IoU reaches ``duplicate_iou``)."""
    score = np.zeros(len(table))
    duplicate_of: list[str | None] = [None] * len(table)
    positions = {index: position for position, index in enumerate(table.index)}
    for _, group in table.groupby("sample_id", sort=False):
        if len(group) < 2:
            continue
        boxes = _boxes(group["bounding_box"])
        overlap = iou_matrix(boxes, boxes)
        np.fill_diagonal(overlap, 0.0)
        rows = [positions[index] for index in group.index]
        ids = list(group["object_id"])
        for i, row in enumerate(rows):
            score[row] = overlap[i].max()
            earlier = np.flatnonzero(overlap[i, :i] >= config.duplicate_iou)
            if len(earlier):
                duplicate_of[row] = ids[int(earlier[np.argmax(overlap[i, earlier])])]
    return pd.DataFrame({"duplicate_score": score, "duplicate_of": duplicate_of}, index=table.index)


# ---------------------------------------------------------------------------------------------
# Wrong classes from the object embeddings


def find_object_mislabels(dataset, field: str, table: pd.DataFrame, *, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """``mislabel_score`` and ``suggested_label`` per box from the per-object embeddings (the
    image finder on objects), or NaN with the reason in ``info["skipped"]``."""
    from curation.finders.base import FinderContext
    from curation.finders.mislabels import MislabelConfig, find_mislabels
    from curation.neighbors import compute_neighbors

    empty = pd.DataFrame({"mislabel_score": np.nan, "suggested_label": None, "suggested_confidence": np.nan},
                         index=table.index)
    from curation.embeddings import NoEmbeddingRecordError
    from curation.patches import load_patch_embeddings

    try:
        _, detection_ids, _, _, matrix = load_patch_embeddings(dataset, field)
    except NoEmbeddingRecordError as error:
        return empty, {"skipped": str(error)}
    if matrix is None or not len(detection_ids):
        return empty, {"skipped": f"no per-object embeddings for {field!r}: run `curation embed --dataset "
                                  f"{dataset.name} --patches {field}`"}
    row_of = {object_id: row for row, object_id in enumerate(detection_ids)}
    present = table["object_id"].map(row_of)
    keep = present.notna().to_numpy()
    if keep.sum() < 10:
        return empty, {"skipped": f"only {int(keep.sum())} boxes have embeddings; at least 10 are needed"}
    rows = present[keep].astype(int).to_numpy()
    vectors = np.asarray(matrix, dtype=np.float32)[rows]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    labels = np.array([None if label is None else str(label) for label in table.loc[keep, "label"]], dtype=object)
    graph = compute_neighbors(vectors, k=min(15, max(1, len(vectors) - 1)))
    context = FinderContext(ids=table.loc[keep, "object_id"].to_numpy(dtype=object), embeddings=vectors,
                            filepaths=table.loc[keep, "filepath"].to_numpy(dtype=object),
                            neighbor_indices=graph.indices, neighbor_similarities=graph.similarities, labels=labels,
                            embedding_field=f"{field}.embedding", label_field=f"{field}.label")
    # The pixel model reads whole images; objects are crops of them: leave it out.
    context._pixel_cache["side"] = (None, "objects: the pixel model reads whole images, not the crops")
    result = find_mislabels(context, MislabelConfig(seed=seed, zero_shot=False))
    scored = result.table
    out = empty.copy()
    index = table.index[keep]
    out.loc[index, "mislabel_score"] = scored["score"].to_numpy(dtype=float)
    out.loc[index, "suggested_label"] = scored["suggested_label"].to_numpy(dtype=object)
    out.loc[index, "suggested_confidence"] = scored["suggested_confidence"].to_numpy(dtype=float)
    return out, {"summary": result.summary, "settings": _jsonable(result.info)}


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=lambda item: item.tolist() if hasattr(item, "tolist") else str(item)))


# ---------------------------------------------------------------------------------------------
# With a model's predictions: cleanlab's object-detection scores


def _to_pixels(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Relative [x, y, w, h] -> pixel [x1, y1, x2, y2] (cleanlab's format)."""
    out = np.empty((len(boxes), 4))
    out[:, 0] = boxes[:, 0] * width
    out[:, 1] = boxes[:, 1] * height
    out[:, 2] = (boxes[:, 0] + boxes[:, 2]) * width
    out[:, 3] = (boxes[:, 1] + boxes[:, 3]) * height
    return out


def find_prediction_issues(dataset, field: str, predictions_field: str, table: pd.DataFrame,
                           config: ObjectConfig = ObjectConfig()) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """(per-box scores: swap_score, spurious_score, localization_score; rows of predicted boxes
    that no annotation matches, with ``missing_score``; image label quality by sample id; info)."""
    from cleanlab.object_detection.rank import compute_badloc_box_scores, compute_swap_box_scores, get_label_quality_scores

    check_detections_field(dataset, predictions_field, "--predictions")
    if predictions_field == field:
        raise CurationInputError("--predictions: expected a field of the model's detections, different from the "
                                 f"annotations ({field!r})")
    ids, paths, predicted = dataset.values(["id", "filepath", f"{predictions_field}.detections"])
    sizes = _image_sizes(dataset)
    classes = sorted({str(label) for label in table["label"].dropna()}
                     | {str(d.label) for ds in predicted for d in (ds or []) if d.label is not None})
    class_index = {name: i for i, name in enumerate(classes)}
    by_sample = {sample_id: group for sample_id, group in table.groupby("sample_id", sort=False)}
    labels, predictions, order, kept_predictions = [], [], [], []
    for sample_id, path, detections in zip(ids, paths, predicted):
        width, height = sizes.get(sample_id, (None, None))
        if not width or not height:
            continue
        group = by_sample.get(sample_id)
        boxes = _boxes(group["bounding_box"]) if group is not None else np.zeros((0, 4))
        valid = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0) if len(boxes) else np.zeros(0, bool)
        label_codes = (np.array([class_index.get(str(v), -1) for v in group["label"]]) if group is not None
                       else np.zeros(0, int))
        valid &= label_codes >= 0
        labels.append({"bboxes": _to_pixels(boxes[valid], width, height).reshape(-1, 4),
                       "labels": label_codes[valid].astype(int)})
        per_class: list[list] = [[] for _ in classes]
        kept = []
        for detection in detections or []:
            confidence = detection.confidence
            box = np.asarray(detection.bounding_box or [np.nan] * 4, dtype=float)
            if (detection.label is None or confidence is None or not np.isfinite(box).all()
                    or confidence < config.min_prediction_confidence):
                continue
            pixel = _to_pixels(box[None], width, height)[0]
            per_class[class_index[str(detection.label)]].append([*pixel, float(confidence)])
            kept.append((class_index[str(detection.label)], detection))
        predictions.append([np.array(rows, dtype=float).reshape(-1, 5) for rows in per_class])
        order.append((sample_id, path, group.index[valid] if group is not None else pd.Index([]), width, height))
        kept_predictions.append(kept)
    per_box = pd.DataFrame({"swap_score": np.nan, "spurious_score": np.nan, "localization_score": np.nan},
                           index=table.index)
    missing_rows: list[dict] = []
    image_quality: dict[str, float] = {}
    if not labels:
        return per_box, pd.DataFrame(columns=COLUMNS), image_quality, {"skipped": "no image has a known size"}
    swap = compute_swap_box_scores(labels=labels, predictions=predictions)
    badloc = compute_badloc_box_scores(labels=labels, predictions=predictions)
    quality = get_label_quality_scores(labels, predictions)
    for image, (sample_id, path, index, width, height) in enumerate(order):
        image_quality[sample_id] = float(quality[image])
        if len(index):
            per_box.loc[index, "swap_score"] = 1 - np.asarray(swap[image], dtype=float)
            # spurious: nothing predicted overlaps it at all; badly located: the best match is poor
            predicted_boxes = np.concatenate([p[:, :4] for p in predictions[image]]) if predictions[image] else np.zeros((0, 4))
            mine = labels[image]["bboxes"]
            best = (_pixel_iou(mine, predicted_boxes).max(axis=1) if len(predicted_boxes)
                    else np.zeros(len(mine)))
            bad = 1 - np.asarray(badloc[image], dtype=float)
            per_box.loc[index, "spurious_score"] = np.clip(1 - best / config.match_iou, 0, 1)
            per_box.loc[index, "localization_score"] = np.where(best >= config.spurious_iou, bad, 0.0)
        flat = [(c, row) for c in range(len(classes)) for row in predictions[image][c]]
        annotated = labels[image]["bboxes"]
        annotated_classes = labels[image]["labels"]
        for class_code, row in flat:
            overlap = _pixel_iou(np.asarray(row[None, :4]), annotated)[0] if len(annotated) else np.zeros(0)
            best = overlap.max() if len(overlap) else 0.0
            if best >= config.match_iou:
                continue  # an annotation covers it (perhaps with another class: a swap, scored on that box)
            same = overlap[annotated_classes == class_code]
            if len(same) and same.max() >= config.spurious_iou:
                continue  # a box of its class overlaps it, badly: a localization issue, scored on that box
            score = float(row[4]) * (1 - best / config.match_iou)
            box = [row[0] / width, row[1] / height, (row[2] - row[0]) / width, (row[3] - row[1]) / height]
            missing_rows.append({"object_id": None, "sample_id": sample_id, "filepath": path,
                                 "label": classes[class_code], "bounding_box": [float(v) for v in box],
                                 "missing_score": float(score), "confidence": float(row[4])})
    missing = pd.DataFrame(missing_rows)
    info = {"classes": classes, "images_scored": len(order), "predictions_field": predictions_field,
            "method": "cleanlab.object_detection.rank: swap and badloc box scores (1 - score), "
                      "get_label_quality_scores per image; missing = confidence x (1 - best IoU / match_iou) of "
                      "predictions no annotation matches; spurious = 1 - best IoU / match_iou of annotations"}
    return per_box, missing, image_quality, info


def _pixel_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of [x1, y1, x2, y2] boxes."""
    return iou_matrix(np.column_stack([a[:, 0], a[:, 1], a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]]),
                      np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]))


# ---------------------------------------------------------------------------------------------
# Wrong classes: the embeddings' evidence joined by the predictions'


def prediction_class_probabilities(dataset, predictions_field: str, table: pd.DataFrame,
                                   config: ObjectConfig = ObjectConfig()) -> tuple[np.ndarray, list[str], dict]:
    """The class distribution of the prediction matched to each box of ``table``.

    A box's match is the prediction of its image (any class, confidence at least
    ``min_prediction_confidence``) that overlaps it most, when that IoU reaches ``match_iou``.
    Its distribution: the softmax of its ``logits`` attribute when that has one value per class
    of ``dataset.classes[predictions_field]`` (else ``dataset.default_classes``), FiftyOne's
    convention; otherwise ``confidence`` for its label and the rest spread evenly over the other
    classes (a detector's confidence also holds its doubt that an object is there at all).

    Returns:
        ``(probabilities, classes, info)``: (N, C) rows summing to 1, NaN rows for boxes no
        prediction matches; the C class names (the annotations', the predictions' and the
        logits' classes); how many boxes matched and where the distributions came from.
    """
    ids, predicted = dataset.values(["id", f"{predictions_field}.detections"])
    logit_classes = [str(name) for name in (dataset.classes.get(predictions_field) or dataset.default_classes or [])]
    classes = sorted({str(label) for label in table["label"].dropna()}
                     | {str(d.label) for ds in predicted for d in (ds or []) if d.label is not None}
                     | set(logit_classes))
    column = {name: index for index, name in enumerate(classes)}
    logit_columns = np.array([column[name] for name in logit_classes], dtype=int)
    out = np.full((len(table), len(classes)), np.nan)
    positions = {index: position for position, index in enumerate(table.index)}
    by_sample = {sample_id: group for sample_id, group in table.groupby("sample_id", sort=False)}
    counts = {"logits": 0, "confidence": 0}
    wrong_length = 0
    for sample_id, detections in zip(ids, predicted):
        group = by_sample.get(sample_id)
        usable = [d for d in detections or [] if d.label is not None and d.confidence is not None
                  and math.isfinite(d.confidence) and d.confidence >= config.min_prediction_confidence]
        if group is None or not usable:
            continue
        overlap = iou_matrix(_boxes(group["bounding_box"]), _boxes([d.bounding_box for d in usable]))
        for row, index in zip(overlap, group.index):
            best = int(np.argmax(row))
            if row[best] < config.match_iou:
                continue
            detection = usable[best]
            logits = detection.get_field("logits") if detection.has_field("logits") else None
            distribution = np.zeros(len(classes))
            values = np.asarray(logits, dtype=float).ravel() if logits is not None else np.zeros(0)
            if len(values) and len(values) == len(logit_columns) and np.isfinite(values).all():
                exp = np.exp(values - values.max())
                distribution[logit_columns] = exp / exp.sum()
                counts["logits"] += 1
            else:
                wrong_length += logits is not None
                confidence = float(np.clip(detection.confidence, 0.0, 1.0))
                others = len(classes) - 1
                distribution[:] = (1.0 - confidence) / others if others else 0.0
                distribution[column[str(detection.label)]] = confidence if others else 1.0
                counts["confidence"] += 1
            out[positions[index]] = distribution
    info = {"boxes_matched": counts["logits"] + counts["confidence"], "from_logits": counts["logits"],
            "from_confidence": counts["confidence"], "logit_classes": logit_classes or None}
    if wrong_length:
        info["logits_ignored"] = (f"{wrong_length} predictions have logits whose length is not the "
                                  f"{len(logit_classes)} classes of dataset.classes[{predictions_field!r}] "
                                  f"(or default_classes): their label and confidence were used; set the class list "
                                  f"to use them")
    return out, classes, info


def choose_prediction_weight(embedding_quality: np.ndarray, prediction_quality: np.ndarray) -> dict:
    """The prediction's share of the wrong-class evidence that best predicts the given labels.

    Both qualities are out of sample (the embedding classifier is cross-validated, neighbours
    never vote for themselves, and a detector did not see these annotations, or should not
    have), so, as :func:`curation.finders.mislabels.choose_signal_weights` does for images, the
    share of :data:`PREDICTION_WEIGHT_GRID` whose mix gives the lowest mean log loss of the
    given labels, over the boxes that have both, wins: most labels are right, and the mix that
    predicts them best is the one whose low values best mark the ones that are not. Fewer than
    :data:`MIN_WEIGHT_BOXES` such boxes keep :data:`FALLBACK_PREDICTION_WEIGHT`.

    Args:
        embedding_quality, prediction_quality: (N,) support for the given label in [0, 1],
            NaN where that signal has none.

    Returns ``{"prediction_weight", "chosen_by", "log_loss_by_prediction_weight"}``.
    """
    both = np.isfinite(embedding_quality) & np.isfinite(prediction_quality)
    if both.sum() < MIN_WEIGHT_BOXES:
        return {"prediction_weight": FALLBACK_PREDICTION_WEIGHT,
                "chosen_by": f"fixed: {int(both.sum())} boxes have both signals, fewer than {MIN_WEIGHT_BOXES} "
                             f"to choose on"}
    losses = {}
    for weight in PREDICTION_WEIGHT_GRID:
        quality = weight * prediction_quality[both] + (1.0 - weight) * embedding_quality[both]
        losses[weight] = float(-np.mean(np.log(np.clip(quality, 1e-6, 1.0))))
    best = min(PREDICTION_WEIGHT_GRID, key=lambda weight: (losses[weight], PREDICTION_WEIGHT_GRID.index(weight)))
    return {"prediction_weight": best, "chosen_by": "lowest out-of-sample log loss of the given labels",
            "log_loss_by_prediction_weight": {str(weight): round(value, 5) for weight, value in losses.items()}}


def combine_prediction_classes(dataset, predictions_field: str, table: pd.DataFrame,
                               config: ObjectConfig = ObjectConfig()) -> tuple[pd.DataFrame, dict]:
    """The wrong-class score of every box of ``table`` (which holds the embedding finder's
    ``mislabel_score`` and ``suggested_label``) with the matched prediction's class evidence.

    Per box, the label quality (support for the given label) is the weighted mean of the
    embedding finder's (``1 - mislabel_score``) and the prediction's (its probability of the
    given label), renormalised over the signals the box has; ``mislabel_score`` is 1 minus it.
    ``suggested_label`` is the most probable class under the same mix, counting for the
    embedding side the two classes it reports (the given one and its suggestion).

    Returns:
        (a frame aligned with ``table``: ``mislabel_score``, ``suggested_label``,
        ``embedding_mislabel_score``, ``prediction_mislabel_score`` (1 - the prediction's
        probability of the given label; NaN without a match), ``predicted_label``; info).
    """
    probabilities, classes, info = prediction_class_probabilities(dataset, predictions_field, table, config)
    column = {name: index for index, name in enumerate(classes)}
    labels = table["label"].astype(object).to_numpy()
    given = np.array([column.get(str(label), -1) if label is not None else -1 for label in labels])
    matched = np.isfinite(probabilities).all(axis=1) & (given >= 0)
    prediction_quality = np.full(len(table), np.nan)
    prediction_quality[matched] = probabilities[matched, given[matched]]
    embedding_score = pd.to_numeric(table["mislabel_score"], errors="coerce").to_numpy(dtype=float)
    embedding_quality = 1.0 - embedding_score
    if config.prediction_weight == AUTO:
        chosen = choose_prediction_weight(embedding_quality, prediction_quality)
    else:
        chosen = {"prediction_weight": float(config.prediction_weight), "chosen_by": "given"}
    weight = chosen["prediction_weight"]
    has_embedding, has_prediction = np.isfinite(embedding_quality), np.isfinite(prediction_quality)
    share_prediction = np.where(has_prediction, weight, 0.0)
    share_embedding = np.where(has_embedding, 1.0 - weight, 0.0)
    total = share_prediction + share_embedding
    # A box with one signal takes it whole (the weights renormalised over what it has).
    share_prediction = np.where(total > 0, share_prediction / np.where(total > 0, total, 1.0),
                                has_prediction.astype(float))
    share_embedding = np.where(total > 0, share_embedding / np.where(total > 0, total, 1.0),
                               (has_embedding & ~has_prediction).astype(float))
    quality = (share_prediction * np.nan_to_num(prediction_quality) + share_embedding * np.nan_to_num(embedding_quality))
    score = np.where(has_embedding | has_prediction, np.clip(1.0 - quality, 0.0, 1.0), np.nan)

    suggested = table["suggested_label"].astype(object).to_numpy().copy()
    predicted_label = np.array([None] * len(table), dtype=object)
    embedding_suggestion = table["suggested_label"].astype(object).to_numpy()
    suggested_confidence = (pd.to_numeric(table["suggested_confidence"], errors="coerce").to_numpy(dtype=float)
                            if "suggested_confidence" in table else np.full(len(table), np.nan))
    for row in np.flatnonzero(has_prediction):
        mix = share_prediction[row] * probabilities[row]
        predicted_label[row] = classes[int(np.argmax(probabilities[row]))]
        if has_embedding[row]:
            mix = mix.copy()
            mix[given[row]] += share_embedding[row] * embedding_quality[row]
            other = embedding_suggestion[row]
            if other is not None and str(other) in column and column[str(other)] != given[row]:
                # its probability of its suggestion; without it, all the given label lacks
                known = (suggested_confidence[row] if np.isfinite(suggested_confidence[row])
                         else 1.0 - embedding_quality[row])
                mix[column[str(other)]] += share_embedding[row] * known
        suggested[row] = classes[int(np.argmax(mix))]
    out = pd.DataFrame({"mislabel_score": score, "suggested_label": suggested,
                        "embedding_mislabel_score": embedding_score,
                        "prediction_mislabel_score": 1.0 - prediction_quality, "predicted_label": predicted_label},
                       index=table.index)
    info.update(chosen)
    info["method"] = ("label quality = weighted mean of the embedding finder's (1 - its score) and the matched "
                      "prediction's probability of the given label, renormalised over the signals a box has")
    return out, info


# ---------------------------------------------------------------------------------------------
# Everything together


@dataclass
class ObjectAnalysis:
    table: pd.DataFrame  # one row per box, then one per predicted-but-missing box (COLUMNS)
    image_quality: dict[str, float]
    info: dict

    def counts(self) -> dict[str, int]:
        return {issue: int((self.table["issue"] == issue).sum()) for issue in ISSUES}

    def summary(self) -> str:
        boxes = int(self.table["object_id"].notna().sum())
        parts = [f"{count} {issue}" for issue, count in self.counts().items() if count]
        return f"{boxes} boxes: " + (", ".join(parts) if parts else "no issue flagged")


def analyze_objects(dataset, field: str, predictions_field: str | None = None, *,
                    config: ObjectConfig = ObjectConfig(), seed: int = 0) -> ObjectAnalysis:
    """Score every box of ``field`` (see the module doc); nothing is written (see
    :func:`write_object_findings`)."""
    table = object_table(dataset, field)
    info: dict[str, Any] = {"field": field, "config": asdict(config)}
    if table.empty:
        raise CurationInputError(f"--patches: field {field!r} of dataset {dataset.name!r} holds no boxes")
    table["degenerate_reason"] = find_degenerate(table, config)
    table = table.join(find_duplicate_boxes(table, config))
    mislabels, info["mislabels"] = find_object_mislabels(dataset, field, table, seed=seed)
    table = table.join(mislabels)
    table["embedding_mislabel_score"] = table["mislabel_score"]
    image_quality: dict[str, float] = {}
    missing = pd.DataFrame(columns=COLUMNS)
    if predictions_field:
        per_box, missing, image_quality, info["predictions"] = find_prediction_issues(
            dataset, field, predictions_field, table, config)
        table = table.join(per_box)
        if config.prediction_weight == 0:
            info["mislabel_predictions"] = {"prediction_weight": 0.0, "chosen_by": "given: the embeddings alone"}
        else:
            combined, info["mislabel_predictions"] = combine_prediction_classes(dataset, predictions_field, table, config)
            table = table.drop(columns=["mislabel_score", "suggested_label", "embedding_mislabel_score"]).join(combined)
            matched = info["mislabel_predictions"].get("boxes_matched", 0)
            if info["mislabels"].get("skipped") and matched:
                info["mislabels"]["skipped"] += (f"; only the predictions' classes judged the {matched} boxes a "
                                                 f"prediction matches")
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan if column.endswith("_score") else None
    flags = {
        "degenerate": table["degenerate_reason"].notna().to_numpy(),
        "duplicate": table["duplicate_of"].notna().to_numpy(),
        "mislabel": ((table["mislabel_score"].fillna(0).to_numpy() >= config.mislabel_threshold)
                     & (table["suggested_label"].astype(object) != table["label"].astype(object)).to_numpy()),
        "spurious": table["spurious_score"].fillna(0).to_numpy() >= config.spurious_threshold,
        "localization": table["localization_score"].fillna(0).to_numpy() >= config.localization_threshold,
    }
    strength = {"degenerate": np.ones(len(table)), "duplicate": table["duplicate_score"].fillna(0).to_numpy(),
                "mislabel": table["mislabel_score"].fillna(0).to_numpy(),
                "spurious": table["spurious_score"].fillna(0).to_numpy(),
                "localization": table["localization_score"].fillna(0).to_numpy()}
    issue = np.array([None] * len(table), dtype=object)
    issue_score = np.zeros(len(table))
    for name in ("degenerate", "duplicate", "mislabel", "spurious", "localization"):  # first flagged wins
        take = flags[name] & (issue == None)  # noqa: E711
        issue[take] = name
        issue_score[take] = strength[name][take]
    table["issue"] = issue
    table["issue_score"] = issue_score
    if not missing.empty:
        missing = missing.copy()
        flagged = missing["missing_score"].to_numpy() >= config.missing_threshold
        missing["issue"] = np.where(flagged, "missing", None)
        missing["issue_score"] = missing["missing_score"]
        for column in COLUMNS:
            if column not in missing:
                missing[column] = np.nan if column.endswith("_score") else None
        table = pd.concat([table[list(COLUMNS)], missing[list(COLUMNS)]], ignore_index=True)
    else:
        table = table[list(COLUMNS)].reset_index(drop=True)
    analysis = ObjectAnalysis(table=table, image_quality=image_quality, info=info)
    info["counts"] = analysis.counts()
    return analysis


def write_object_findings(dataset, field: str, analysis: ObjectAnalysis) -> None:
    """Store the results: attributes of each detection (:data:`ATTRIBUTES`), the predicted
    boxes flagged missing in ``<field>_missing``, the image score in ``object_label_quality``
    and a record in ``dataset.info["curation"]["object_analysis"][field]``."""
    import fiftyone as fo

    from curation.datasets import curation_info, now_iso, update_curation_info

    boxes = analysis.table[analysis.table["object_id"].notna()].set_index("object_id")
    ids, detections = dataset.values(["id", f"{field}.detections"])
    values = {name: [] for name in ATTRIBUTES}
    for sample_detections in detections:
        for name in ATTRIBUTES:
            values[name].append([_stored(boxes[name].get(d.id)) if d.id in boxes.index else None
                                 for d in (sample_detections or [])])
    for name in ATTRIBUTES:
        dataset.set_values(f"{field}.detections.{name}", values[name])
    missing = analysis.table[analysis.table["issue"] == "missing"]
    missing_field = f"{field}_missing"
    by_sample: dict[str, list] = {}
    for row in missing.itertuples(index=False):
        by_sample.setdefault(row.sample_id, []).append(
            fo.Detection(label=row.label, bounding_box=list(row.bounding_box), confidence=row.confidence,
                         missing_score=float(row.missing_score)))
    dataset.set_values(missing_field, {sample_id: fo.Detections(detections=by_sample.get(sample_id, []))
                                       for sample_id in ids}, key_field="id")
    if analysis.image_quality:
        dataset.set_values(IMAGE_SCORE_FIELD, {sample_id: analysis.image_quality.get(sample_id) for sample_id in ids},
                           key_field="id")
    records = dict(curation_info(dataset).get(INFO_KEY, {}) or {})
    records[field] = {"updated_at": now_iso(), "summary": analysis.summary(), **_jsonable(analysis.info)}
    update_curation_info(dataset, **{INFO_KEY: records})


def _stored(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (np.floating, float)):
        return float(value)
    return value


def object_findings(dataset, field: str) -> pd.DataFrame:
    """The stored per-object findings as a table (the columns of the findings CSV), the
    missing boxes last with an empty ``object_id``."""
    check_detections_field(dataset, field)
    ids, paths, detections = dataset.values(["id", "filepath", f"{field}.detections"])
    missing_field = f"{field}_missing"
    missing = dataset.values(f"{missing_field}.detections") if dataset.has_sample_field(missing_field) else [None] * len(ids)
    rows = []
    for sample_id, path, boxes in zip(ids, paths, detections):
        for d in boxes or []:
            rows.append({"object_id": d.id, "sample_id": sample_id, "filepath": path, "label": d.label,
                         "bounding_box": list(d.bounding_box or []), "confidence": d.confidence,
                         **{name: d.get_field(name) if d.has_field(name) else None for name in ATTRIBUTES}})
    for sample_id, path, boxes in zip(ids, paths, missing):
        for d in boxes or []:
            rows.append({"object_id": None, "sample_id": sample_id, "filepath": path, "label": d.label,
                         "bounding_box": list(d.bounding_box or []), "confidence": d.confidence,
                         "missing_score": d.get_field("missing_score") if d.has_field("missing_score") else None,
                         "issue": "missing"})
    columns = ["object_id", "sample_id", "filepath", "label", "bounding_box", "mislabel_score", "suggested_label",
               "duplicate_of", "duplicate_score", "missing_score", "spurious_score", "localization_score", "issue",
               "confidence"]
    return pd.DataFrame(rows).reindex(columns=columns)
