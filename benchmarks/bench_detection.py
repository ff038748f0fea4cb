"""Object-level error finding on the synthetic detection set: cleanlab, FiftyOne Brain, ours.

The set and the simulated predictions come from :mod:`detection_set` (same folder; read its
docstring for what is real and what is simulated): canvases of MNIST digits with exact boxes,
the annotations (``ground_truth``) with known injected errors, and a ``predictions`` field of
jittered boxes whose classes and confidences come from a real out-of-fold CNN.

Every method gets the same annotations and predictions:

- **cleanlab** (``cleanlab.object_detection``): ``find_label_issues`` (images),
  ``get_label_quality_scores`` (images) and the per-box scores of
  ``cleanlab.object_detection.rank``: ``compute_swap_box_scores`` (wrong class),
  ``compute_badloc_box_scores`` (bad location), ``compute_overlooked_box_scores`` (one per
  predicted box: an object nobody annotated). Per-box flags use cleanlab's own rule inside
  ``find_label_issues`` (a box is an issue when its score is at most 0.8 x its class's AP
  x 0.25), reproduced with its private helpers. Labels and predictions are given in pixels;
  each predicted box once, under its most probable class, with its confidence (cleanlab only
  reads predictions above 0.5 or 0.95, which are the most probable class anyway).
- **FiftyOne** (``fiftyone.brain.compute_mistakenness(dataset, "predictions",
  label_field="ground_truth")``, default: confidences, not logits), on a FiftyOne dataset
  imported with the product's COCO importer (``curation.importers.import_dataset``) into a
  private mongod: ``mistakenness`` (matched boxes whose class disagrees), ``mistakenness_loc``,
  ``possible_spurious`` on annotations and ``possible_missing`` on predictions. Its flags:
  ``mistakenness > 0.5`` and ``mistakenness_loc > 0.5`` (the point where the formula says the
  prediction disagrees), and its two booleans.
- **ours**: ``curation.objects.analyze_objects(dataset, "ground_truth", "predictions")`` when
  that function exists (skipped with the reason otherwise), through :func:`score_ours`; its
  flags are its ``issue`` column. The boxes are embedded first and the embeddings cached beside
  the set (:func:`save_patch_embeddings`), so a rerun skips the 23-minute embedding. Two
  wrong-class variants follow (:func:`wrong_class_variants`): the box embeddings alone and the
  predictions' class probabilities alone (the benchmark declares ``dataset.classes`` for the
  predictions' ``logits``).

Scoring per error type (the truth table of ``truth.json``):

- **wrong class, spurious, localization** (shifted boxes): one candidate per annotation; the
  positives are the annotations with that injected error. AP is the step-wise average
  precision of the method's score over the annotations it scores (a box a method leaves
  unscored is never proposed: it counts against recall, never against precision; ties share
  one threshold, as in scikit-learn); precision and recall are those of its flagged set.
- **duplicate**: a box drawn twice cannot say which copy came second, so each duplicated pair
  is one unit (scored by the higher score of its two boxes, flagged if either is) and every
  other annotation one unit of its own.
- **missing** (dropped boxes): candidates are the method's proposed boxes (cleanlab's scored
  predictions, FiftyOne's ``possible_missing`` predictions, our rows without an
  ``object_id``); in score order, a proposal is a hit when its IoU with a dropped, not yet
  found true box of its image is at least 0.5. AP and recall are over all dropped boxes, so
  the 5 % the simulated detector misses cannot be found by anyone (the "reachable" column).

cleanlab has no score for spurious boxes or duplicates, FiftyOne none for duplicates; their
closest score is used and named in the table ("score" column), so a low figure there means
"not what this method looks for", not a bug.

    .venv/bin/python benchmarks/bench_detection.py --json benchmarks/results/bench_detection.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import detection_set as ds  # noqa: E402  (same folder; adds the project root to sys.path)

REPORT_TYPES = ("wrong_class", "missing", "spurious", "localization", "duplicate")
ANNOTATION_ERROR = {"wrong_class": "wrong_class", "spurious": "spurious", "localization": "shifted",
                    "duplicate": "duplicate"}
OUR_ISSUES = {"wrong_class": ("mislabel", "wrong_class"), "spurious": ("spurious",), "localization": ("localization",),
              "duplicate": ("duplicate",), "missing": ("missing",)}
MATCH_IOU = 0.5
FIELD = "ground_truth"
PREDICTIONS_FIELD = "predictions"

logger = logging.getLogger("bench_detection")


# ----------------------------------------------------------------------------------------
# What every method returns
# ----------------------------------------------------------------------------------------

@dataclass
class MethodScores:
    """One method's answer, aligned with the truth's annotations.

    Attributes:
        name: the method.
        annotation_scores: per type in ``ANNOTATION_ERROR``: (n_annotations,) float, higher =
            more likely that error; NaN = not scored.
        annotation_flags: per type: (n_annotations,) bool, the method's flagged set (absent
            when it has no rule).
        missing: proposed missing boxes: dicts ``image_id``, ``bbox`` (pixels ``[x, y, w, h]``),
            ``score``, ``flagged``.
        sources: per type, which score was used.
        image_scores, image_flags: (n_images,) per image (higher = worse), when the method has them.
        seconds: wall time of the method itself.
    """

    name: str
    annotation_scores: dict[str, np.ndarray] = field(default_factory=dict)
    annotation_flags: dict[str, np.ndarray] = field(default_factory=dict)
    missing: list[dict] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    image_scores: np.ndarray | None = None
    image_flags: np.ndarray | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    report_types: tuple[str, ...] = REPORT_TYPES


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------

def average_precision(scores: np.ndarray, hits: np.ndarray, n_positives: int) -> float | None:
    """Step-wise average precision: sum over score thresholds of (recall gain) x precision.

    Args:
        scores: (n,) candidate scores, higher first; NaN candidates are left out.
        hits: (n,) bool, the candidate is a true positive (at most one per positive).
        n_positives: all positives, including those no candidate reaches.

    Ties share one threshold (scikit-learn's ``average_precision_score`` when every positive
    is a candidate). None when there are no positives.
    """
    if n_positives <= 0:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    keep = ~np.isnan(scores)
    scores, hits = scores[keep], hits[keep]
    if not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    true_positives = np.cumsum(hits)
    last_of_threshold = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = true_positives[last_of_threshold]
    precision = tp / (last_of_threshold + 1)
    recall = tp / n_positives
    gains = np.diff(np.r_[0.0, recall])
    return float(np.sum(gains * precision))


def flag_metrics(flags: np.ndarray | None, hits: np.ndarray, n_positives: int) -> dict:
    if flags is None:
        return {"flagged": None, "true_positives": None, "precision": None, "recall": None}
    flags = np.asarray(flags, dtype=bool)
    true_positives = int((flags & np.asarray(hits, dtype=bool)).sum())
    flagged = int(flags.sum())
    return {"flagged": flagged, "true_positives": true_positives,
            "precision": true_positives / flagged if flagged else None,
            "recall": true_positives / n_positives if n_positives else None}


def duplicate_units(annotations: list[dict]) -> np.ndarray:
    """(n_annotations,) unit per annotation: a duplicated pair shares its original's unit."""
    position = {record["id"]: index for index, record in enumerate(annotations)}
    units = np.arange(len(annotations))
    for index, record in enumerate(annotations):
        if record.get("duplicate_of") is not None:
            units[index] = position[record["duplicate_of"]]
    return units


def pooled(values: np.ndarray, units: np.ndarray, how: str) -> np.ndarray:
    """Per unit (in ``np.unique(units)`` order): the max score (NaN when all NaN) or any flag."""
    unique, inverse = np.unique(units, return_inverse=True)
    if how == "any":
        out = np.zeros(len(unique), dtype=bool)
        np.logical_or.at(out, inverse, np.asarray(values, dtype=bool))
        return out
    out = np.full(len(unique), -np.inf)
    filled = np.where(np.isnan(values), -np.inf, values)
    np.maximum.at(out, inverse, filled)
    out[np.isneginf(out)] = np.nan
    return out


def match_missing(proposals: list[dict], missing: list[dict], iou: float = MATCH_IOU) -> np.ndarray:
    """(len(proposals),) bool: in descending score order, each proposal hits at most one
    dropped box of its image (IoU >= ``iou``), each dropped box is hit at most once."""
    by_image: dict[int, list[int]] = {}
    for index, obj in enumerate(missing):
        by_image.setdefault(obj["image_id"], []).append(index)
    used = np.zeros(len(missing), dtype=bool)
    hits = np.zeros(len(proposals), dtype=bool)
    scores = np.array([p["score"] for p in proposals], dtype=np.float64)
    for position in np.argsort(-np.where(np.isnan(scores), -np.inf, scores), kind="stable"):
        proposal = proposals[position]
        candidates = [i for i in by_image.get(proposal["image_id"], []) if not used[i]]
        if not candidates:
            continue
        overlaps = ds.iou_matrix(np.array([proposal["bbox"]]), np.array([missing[i]["bbox"] for i in candidates]))[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            used[candidates[best]] = True
            hits[position] = True
    return hits


def evaluate(method: MethodScores, truth: dict) -> list[dict]:
    """One row per error type: positives, flagged, precision, recall, AP."""
    annotations = truth["annotations"]
    errors = np.array([record["error"] for record in annotations])
    rows = []
    for kind in method.report_types:
        row: dict[str, Any] = {"method": method.name, "error": kind, "score": method.sources.get(kind)}
        if kind == "missing":
            missing = [obj for obj in truth["objects"] if obj["status"] == "missing"]
            proposals = method.missing
            if row["score"] is None:
                rows.append({**row, "positives": len(missing), "candidates": None, "ap": None,
                             **flag_metrics(None, np.zeros(0), len(missing))})
                continue
            hits = match_missing(proposals, missing)
            flagged = [p for p in proposals if p["flagged"]]
            flagged_hits = match_missing(flagged, missing)
            row.update(positives=len(missing), candidates=len(proposals),
                       ap=average_precision(np.array([p["score"] for p in proposals]), hits, len(missing)),
                       flagged=len(flagged), true_positives=int(flagged_hits.sum()),
                       precision=float(flagged_hits.mean()) if flagged else None,
                       recall=float(flagged_hits.sum()) / len(missing) if missing else None)
            rows.append(row)
            continue
        scores = method.annotation_scores.get(kind)
        flags = method.annotation_flags.get(kind)
        positives = errors == ANNOTATION_ERROR[kind]
        if scores is None:
            rows.append({**row, "positives": int(positives.sum()), "candidates": None, "ap": None,
                         **flag_metrics(None, positives, int(positives.sum()))})
            continue
        scores = np.asarray(scores, dtype=np.float64)
        if kind == "duplicate":
            units = duplicate_units(annotations)
            positives = pooled(positives, units, "any")
            scores = pooled(scores, units, "max")
            flags = pooled(flags, units, "any") if flags is not None else None
        n_positives = int(positives.sum())
        row.update(positives=n_positives, candidates=int((~np.isnan(scores)).sum()),
                   ap=average_precision(scores, positives, n_positives), **flag_metrics(flags, positives, n_positives))
        rows.append(row)
    return rows


def evaluate_images(method: MethodScores, truth: dict) -> dict | None:
    """Images with any injected error vs the method's image flags and scores."""
    if method.image_flags is None and method.image_scores is None:
        return None
    bad = {record["image_id"] for record in truth["annotations"] if record["error"] != "none"}
    bad |= {obj["image_id"] for obj in truth["objects"] if obj["status"] == "missing"}
    positives = np.array([image["id"] in bad for image in truth["images"]])
    out = {"method": method.name, "images": len(positives), "positives": int(positives.sum())}
    out.update(flag_metrics(method.image_flags, positives, int(positives.sum())))
    out["ap"] = (average_precision(method.image_scores, positives, int(positives.sum()))
                 if method.image_scores is not None else None)
    return out


def reachable(truth: dict, predictions: dict) -> dict:
    """What the predictions allow at best: dropped boxes a prediction covers (IoU >= 0.5),
    wrong-class boxes whose object was predicted with its true class."""
    classes_by_object: dict[int, list[tuple[int, float]]] = {}
    for image in predictions["images"]:
        for detection in image["detections"]:
            if detection["object"] is not None and detection["iou_to_object"] >= MATCH_IOU:
                classes_by_object.setdefault(detection["object"], []).append(detection["label"])
    missing = [obj for obj in truth["objects"] if obj["status"] == "missing"]
    wrong = [record for record in truth["annotations"] if record["error"] == "wrong_class"]
    return {
        "missing_covered": sum(obj["id"] in classes_by_object for obj in missing) / max(1, len(missing)),
        "wrong_class_predicted_true_class": sum(record["true_label"] in classes_by_object.get(record["object"], [])
                                                for record in wrong) / max(1, len(wrong)),
    }


# ----------------------------------------------------------------------------------------
# Inputs in pixels, for cleanlab
# ----------------------------------------------------------------------------------------

def _xyxy(box) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def grouped_annotations(truth: dict) -> tuple[list[int], dict[int, list[int]]]:
    """(image ids in order, annotation positions per image id in file order)."""
    image_ids = [image["id"] for image in truth["images"]]
    positions: dict[int, list[int]] = {image_id: [] for image_id in image_ids}
    for index, record in enumerate(truth["annotations"]):
        positions[record["image_id"]].append(index)
    return image_ids, positions


def cleanlab_inputs(truth: dict, predictions: dict, n_classes: int):
    """cleanlab's ``labels`` and ``predictions`` lists, the annotation positions per image and,
    per image, the prediction index of each row of cleanlab's class-major concatenation."""
    image_ids, positions = grouped_annotations(truth)
    annotations = truth["annotations"]
    predicted = {image["image_id"]: image["detections"] for image in predictions["images"]}
    labels, preds, prediction_order = [], [], []
    for image, image_id in zip(truth["images"], image_ids):
        rows = positions[image_id]
        labels.append({"bboxes": np.array([_xyxy(annotations[i]["bbox"]) for i in rows], dtype=np.float64).reshape(-1, 4),
                       "labels": np.array([annotations[i]["label"] for i in rows], dtype=np.int64),
                       "image_name": image["file_name"]})
        per_class: list[list] = [[] for _ in range(n_classes)]
        order: list[list[int]] = [[] for _ in range(n_classes)]
        for index, detection in enumerate(predicted.get(image_id, [])):
            per_class[detection["label"]].append(_xyxy(detection["bbox"]) + [detection["confidence"]])
            order[detection["label"]].append(index)
        preds.append([np.array(rows_, dtype=np.float64).reshape(-1, 5) for rows_ in per_class])
        prediction_order.append([index for class_rows in order for index in class_rows])
    return labels, preds, positions, prediction_order


def run_cleanlab(truth: dict, predictions: dict) -> MethodScores:
    import cleanlab.object_detection.filter as od_filter
    from cleanlab.internal import constants
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import (compute_badloc_box_scores, compute_overlooked_box_scores,
                                                compute_swap_box_scores, get_label_quality_scores)

    n_classes = len(truth["classes"])
    labels, preds, positions, prediction_order = cleanlab_inputs(truth, predictions, n_classes)
    started = time.perf_counter()
    image_flags = np.asarray(find_label_issues(labels, preds), dtype=bool)
    quality = np.asarray(get_label_quality_scores(labels, preds, verbose=False), dtype=np.float64)
    swap = compute_swap_box_scores(labels=labels, predictions=preds)
    badloc = compute_badloc_box_scores(labels=labels, predictions=preds)
    overlooked = compute_overlooked_box_scores(labels=labels, predictions=preds)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    flags_note = "cleanlab's rule in find_label_issues (score <= 0.8 x class AP x 0.25), via its private helpers"
    try:  # the per-box rule find_label_issues applies before pooling per image
        per_class_ap = od_filter._get_per_class_ap(labels, preds)
        label_thresholds = od_filter._process_class_list([label["labels"] for label in labels], per_class_ap)
        prediction_thresholds = od_filter._process_class_list(
            [od_filter._separate_prediction(pred)[1] for pred in preds], per_class_ap)
        swap_flags = od_filter._find_label_issues_per_box([s.copy() for s in swap], label_thresholds,
                                                          constants.SWAP_THRESHOLD_FACTOR)
        badloc_flags = od_filter._find_label_issues_per_box([s.copy() for s in badloc], label_thresholds,
                                                            constants.BADLOC_THRESHOLD_FACTOR)
        overlooked_flags = od_filter._find_label_issues_per_box([s.copy() for s in overlooked], prediction_thresholds,
                                                                constants.OVERLOOKED_THRESHOLD_FACTOR)
    except Exception as error:  # private API: report, keep the scores
        logger.warning("cleanlab per-box flags unavailable: %s", error)
        swap_flags = badloc_flags = overlooked_flags = None
        flags_note = f"unavailable: {type(error).__name__}: {error}"
    flag_seconds = time.perf_counter() - started  # recomputes the per-class AP find_label_issues computed

    n = len(truth["annotations"])
    swap_score, badloc_score = np.full(n, np.nan), np.full(n, np.nan)
    swap_flag, badloc_flag = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    missing = []
    predicted = {image["image_id"]: image["detections"] for image in predictions["images"]}
    for image_number, image in enumerate(truth["images"]):
        rows = positions[image["id"]]
        if rows:
            swap_score[rows] = 1.0 - np.asarray(swap[image_number], dtype=np.float64)
            badloc_score[rows] = 1.0 - np.asarray(badloc[image_number], dtype=np.float64)
            if swap_flags is not None:
                swap_flag[rows] = np.asarray(swap_flags[image_number], dtype=bool)[:len(rows)]
                badloc_flag[rows] = np.asarray(badloc_flags[image_number], dtype=bool)[:len(rows)]
        scores = np.asarray(overlooked[image_number], dtype=np.float64)
        for position, index in enumerate(prediction_order[image_number]):
            if np.isnan(scores[position]):
                continue  # below 0.95 confidence or overlapping an annotation: not a candidate for cleanlab
            flagged = bool(overlooked_flags[image_number][position]) if overlooked_flags is not None else False
            missing.append({"image_id": image["id"], "bbox": predicted[image["id"]][index]["bbox"],
                            "score": 1.0 - float(scores[position]), "flagged": flagged})
    any_score = np.fmax(swap_score, badloc_score)
    result = MethodScores(
        name="cleanlab",
        annotation_scores={"wrong_class": swap_score, "localization": badloc_score, "spurious": badloc_score,
                           "duplicate": any_score},
        annotation_flags={} if swap_flags is None else {
            "wrong_class": swap_flag, "localization": badloc_flag, "spurious": badloc_flag,
            "duplicate": swap_flag | badloc_flag},
        missing=missing,
        sources={"wrong_class": "1 - swap", "localization": "1 - badloc", "spurious": "1 - badloc (no spurious score)",
                 "duplicate": "1 - min(swap, badloc) (no duplicate score)", "missing": "1 - overlooked"},
        image_scores=1.0 - quality, image_flags=image_flags, seconds=seconds,
        info={"flags": flags_note, "flag_rule_seconds": round(flag_seconds, 1), "version": _version("cleanlab")},
    )
    return result


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


# ----------------------------------------------------------------------------------------
# The FiftyOne dataset
# ----------------------------------------------------------------------------------------

@dataclass
class FiftyOneSet:
    dataset: Any
    annotation_of_detection: dict[str, int]  # FiftyOne detection id -> position in truth["annotations"]
    prediction_of_detection: dict[str, tuple[int, int]]  # detection id -> (image id, index in predictions)
    image_of_sample: dict[str, int]  # sample id -> image id
    seconds: float


def build_fiftyone_set(detection_set: ds.DetectionSet, predictions: dict, name: str) -> FiftyOneSet:
    """Import ``labels.json`` with the product's COCO importer, add the predictions, and map
    every detection id to the truth (by image and box: the importer keeps COCO's boxes exactly)."""
    import fiftyone as fo

    from curation.importers import import_dataset

    started = time.perf_counter()
    report = import_dataset(detection_set.root, name, format="coco", label_field=FIELD, overwrite=True)
    dataset = fo.load_dataset(name)
    field_name = report.label_field or FIELD
    if field_name != FIELD:
        dataset.rename_sample_field(field_name, FIELD)
    truth = detection_set.truth
    classes = detection_set.classes
    sizes = {image["id"]: (image["width"], image["height"]) for image in truth["images"]}
    image_of_name = {image["file_name"]: image["id"] for image in truth["images"]}
    sample_ids, filepaths = dataset.values(["id", "filepath"])
    image_ids = [image_of_name[Path(path).name] for path in filepaths]
    predicted = {image["image_id"]: image["detections"] for image in predictions["images"]}
    values = []
    for image_id in image_ids:
        width, height = sizes[image_id]
        values.append(fo.Detections(detections=[
            fo.Detection(label=classes[d["label"]],
                         bounding_box=[d["bbox"][0] / width, d["bbox"][1] / height, d["bbox"][2] / width, d["bbox"][3] / height],
                         confidence=d["confidence"],
                         logits=[float(np.log(max(p, 1e-12))) for p in d["probabilities"]])
            for d in predicted.get(image_id, [])]))
    dataset.set_values(PREDICTIONS_FIELD, values)
    # FiftyOne's convention: logits are over dataset.classes[field] (ours reads them there)
    dataset.classes = {**dataset.classes, PREDICTIONS_FIELD: list(classes)}
    _, positions = grouped_annotations(truth)
    annotation_of_detection: dict[str, int] = {}
    unmatched = 0
    for image_id, detections in zip(image_ids, dataset.values(f"{FIELD}.detections")):
        width, height = sizes[image_id]
        free = list(positions[image_id])
        for detection in detections or []:
            box = np.array(detection.bounding_box) * [width, height, width, height]
            found = None
            for index in free:
                record = truth["annotations"][index]
                if np.allclose(box, record["bbox"], atol=1e-3) and detection.label == classes[record["label"]]:
                    found = index
                    break
            if found is None:
                unmatched += 1
                continue
            free.remove(found)
            annotation_of_detection[detection.id] = found
    if unmatched or len(annotation_of_detection) != len(truth["annotations"]):
        raise RuntimeError(f"COCO import: {unmatched} detections match no annotation; "
                           f"{len(annotation_of_detection)} of {len(truth['annotations'])} mapped")
    prediction_of_detection = {}
    for image_id, ids in zip(image_ids, dataset.values(f"{PREDICTIONS_FIELD}.detections.id")):
        for index, detection_id in enumerate(ids or []):
            prediction_of_detection[detection_id] = (image_id, index)
    return FiftyOneSet(dataset, annotation_of_detection, prediction_of_detection, dict(zip(sample_ids, image_ids)),
                       time.perf_counter() - started)


def run_fiftyone(fiftyone_set: FiftyOneSet, truth: dict, predictions: dict) -> MethodScores:
    import fiftyone.brain as fob

    dataset = fiftyone_set.dataset
    started = time.perf_counter()
    fob.compute_mistakenness(dataset, PREDICTIONS_FIELD, label_field=FIELD, progress=False)
    seconds = time.perf_counter() - started
    n = len(truth["annotations"])
    mistakenness, localization, spurious = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n)
    ids, class_values, loc_values, spurious_values = dataset.values(
        [f"{FIELD}.detections.id", f"{FIELD}.detections.mistakenness", f"{FIELD}.detections.mistakenness_loc",
         f"{FIELD}.detections.possible_spurious"], unwind=True)
    for detection_id, value, loc, is_spurious in zip(ids, class_values, loc_values, spurious_values):
        index = fiftyone_set.annotation_of_detection[detection_id]
        mistakenness[index] = np.nan if value is None else value
        localization[index] = np.nan if loc is None else loc
        spurious[index] = 1.0 if is_spurious else 0.0
    predicted = {image["image_id"]: image["detections"] for image in predictions["images"]}
    missing = []
    prediction_ids, flags = dataset.values([f"{PREDICTIONS_FIELD}.detections.id",
                                            f"{PREDICTIONS_FIELD}.detections.possible_missing"], unwind=True)
    for detection_id, flag in zip(prediction_ids, flags):
        if not flag:
            continue
        image_id, index = fiftyone_set.prediction_of_detection[detection_id]
        detection = predicted[image_id][index]
        missing.append({"image_id": image_id, "bbox": detection["bbox"], "score": detection["confidence"],
                        "flagged": True})
    sample_ids, sample_mistakenness, sample_missing, sample_spurious = dataset.values(
        ["id", "mistakenness", "possible_missing", "possible_spurious"])
    image_position = {image["id"]: i for i, image in enumerate(truth["images"])}
    image_flags = np.zeros(len(truth["images"]), dtype=bool)
    annotation_image = np.array([image_position[record["image_id"]] for record in truth["annotations"]])
    for sample_id, value, n_missing, n_spurious in zip(sample_ids, sample_mistakenness, sample_missing, sample_spurious):
        position = image_position[fiftyone_set.image_of_sample[sample_id]]
        image_flags[position] = bool((value or 0) > 0.5 or (n_missing or 0) > 0 or (n_spurious or 0) > 0)
    loc_flags = np.nan_to_num(localization) > 0.5
    image_flags[annotation_image[loc_flags]] = True
    return MethodScores(
        name="fiftyone",
        annotation_scores={"wrong_class": mistakenness, "localization": localization, "spurious": spurious,
                           "duplicate": spurious},
        annotation_flags={"wrong_class": np.nan_to_num(mistakenness) > 0.5, "localization": loc_flags,
                          "spurious": spurious > 0, "duplicate": spurious > 0},
        missing=missing,
        sources={"wrong_class": "mistakenness", "localization": "mistakenness_loc", "spurious": "possible_spurious (0/1)",
                 "duplicate": "possible_spurious (0/1) (no duplicate score)",
                 "missing": "possible_missing, ranked by confidence"},
        image_flags=image_flags, seconds=seconds,
        info={"version": _version("fiftyone-brain"), "image_flag_rule": "any box flagged (the per-type rules)"},
    )


# ----------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------

OUR_COLUMNS = ("object_id", "sample_id", "bounding_box", "issue")


def save_patch_embeddings(dataset: Any, field_name: str, path: Path, annotation_of_detection: dict[str, int]) -> None:
    """Keep the boxes' embeddings (vector, signature, error per annotation) and the run record
    in ``path``, so a rerun on the same set does not embed 12k boxes again (23 min on 2 cores).
    The signatures hold the image files' mtime and size: the cached set's files keep them."""
    from curation.patches import EMBEDDING_ATTRIBUTE, ERROR_ATTRIBUTE, KEY_ATTRIBUTE, patch_record

    record = patch_record(dataset, field_name)
    if not record:
        return
    prefix = f"{field_name}.detections"
    ids, vectors, keys, errors = dataset.values(
        [f"{prefix}.id", f"{prefix}.{EMBEDDING_ATTRIBUTE}", f"{prefix}.{KEY_ATTRIBUTE}", f"{prefix}.{ERROR_ATTRIBUTE}"],
        unwind=True)
    n = len(annotation_of_detection)
    dimension = int(record.get("dimension") or 0)
    matrix = np.full((n, dimension), np.nan, dtype=np.float32)
    key_of, error_of = [""] * n, [""] * n
    for detection_id, vector, key, error in zip(ids, vectors, keys, errors):
        row = annotation_of_detection.get(detection_id)
        if row is None:
            continue
        if vector is not None:
            matrix[row] = np.asarray(vector, dtype=np.float32)
        key_of[row], error_of[row] = key or "", error or ""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, matrix=matrix, keys=np.array(key_of), errors=np.array(error_of),
             record=np.array(json.dumps(record, default=str)))
    temporary.replace(path)


def restore_patch_embeddings(dataset: Any, field_name: str, path: Path, annotation_of_detection: dict[str, int]) -> str:
    """Write the embeddings saved by :func:`save_patch_embeddings` back onto the detections;
    returns what happened (for the results' info)."""
    from curation.datasets import curation_info, update_curation_info
    from curation.patches import (EMBEDDING_ATTRIBUTE, ERROR_ATTRIBUTE, INFO_KEY, KEY_ATTRIBUTE,
                                  _declare_attributes)

    if not path.exists():
        return f"no cache at {path}"
    saved = np.load(path)
    matrix, keys, errors = saved["matrix"], saved["keys"], saved["errors"]
    if len(matrix) != len(annotation_of_detection):
        return f"cache at {path} holds {len(matrix)} boxes, the set {len(annotation_of_detection)}: not used"
    _declare_attributes(dataset, field_name)
    prefix = f"{field_name}.detections"
    per_sample = dataset.values(f"{prefix}.id")
    vectors, signatures, reasons = [], [], []
    for ids in per_sample:
        rows = [annotation_of_detection[detection_id] for detection_id in ids or []]
        vectors.append([None if np.isnan(matrix[row]).any() else matrix[row] for row in rows])
        signatures.append([str(keys[row]) or None for row in rows])
        reasons.append([str(errors[row]) or None for row in rows])
    dataset.set_values(f"{prefix}.{EMBEDDING_ATTRIBUTE}", vectors)
    dataset.set_values(f"{prefix}.{KEY_ATTRIBUTE}", signatures)
    dataset.set_values(f"{prefix}.{ERROR_ATTRIBUTE}", reasons)
    runs = dict(curation_info(dataset).get(INFO_KEY, {}) or {})
    runs[field_name] = json.loads(str(saved["record"]))
    update_curation_info(dataset, **{INFO_KEY: runs})
    return f"restored {int((~np.isnan(matrix).any(axis=1)).sum())} vectors from {path}"


def score_ours(dataset_or_table: Any, truth: dict, *, annotation_of_detection: dict[str, int],
               image_of_sample: dict[str, int], field_name: str = FIELD,
               predictions_field: str | None = PREDICTIONS_FIELD, embed_patches: bool = True,
               embedding_cache: Path | None = None, config: Any = None, name: str = "ours") -> MethodScores | str:
    """Our finders' answer as :class:`MethodScores`, or a one-line reason why it is skipped.

    Args:
        dataset_or_table: a FiftyOne dataset (then ``curation.objects.analyze_objects`` runs on
            it), or what that function returned (a DataFrame, or an object with ``.table``).
        truth: the set's ``truth.json``.
        annotation_of_detection: FiftyOne detection id -> position in ``truth["annotations"]``.
        image_of_sample: FiftyOne sample id -> COCO image id.
        embed_patches: on a dataset, first embed every box with
            ``curation.patches.compute_patch_embeddings`` (the wrong-class finder reads those
            embeddings), timed apart; skipped when that function does not exist.
        embedding_cache: a ``.npz`` file of the boxes' embeddings from an earlier run on the
            same set (:func:`save_patch_embeddings`): restored before embedding, so only
            boxes whose signature changed are embedded again; written after.
        config: a ``curation.objects.ObjectConfig`` (default: its defaults).
        name: the method's name in the results (variants of ours).
    """
    import pandas as pd

    seconds = 0.0
    info: dict[str, Any] = {}
    if isinstance(dataset_or_table, pd.DataFrame) or hasattr(dataset_or_table, "table"):
        result = dataset_or_table
    else:
        try:
            from curation import objects
        except ImportError as error:
            return f"skipped: curation.objects cannot be imported ({error})"
        analyze = getattr(objects, "analyze_objects", None)
        if analyze is None:
            return "skipped: curation.objects has no analyze_objects yet"
        if embed_patches:
            try:
                from curation.patches import compute_patch_embeddings
            except ImportError as error:
                info["patch_embeddings"] = f"not computed: {error}"
            else:
                if embedding_cache is not None:
                    info["patch_embedding_cache"] = restore_patch_embeddings(
                        dataset_or_table, field_name, embedding_cache, annotation_of_detection)
                started = time.perf_counter()
                try:
                    run = compute_patch_embeddings(dataset_or_table, field_name)
                except Exception as error:  # theirs is being written: analyze without the embeddings
                    logger.exception("compute_patch_embeddings failed")
                    info["patch_embeddings"] = f"failed: {type(error).__name__}: {error}"
                else:
                    info["patch_embeddings"] = ({key: value for key, value in vars(run).items()
                                                 if isinstance(value, (int, float, str))}
                                                if hasattr(run, "__dict__") else str(run))
                info["embed_seconds"] = round(time.perf_counter() - started, 1)
                if embedding_cache is not None and isinstance(info.get("patch_embeddings"), dict):
                    save_patch_embeddings(dataset_or_table, field_name, embedding_cache, annotation_of_detection)
        started = time.perf_counter()
        try:
            result = (analyze(dataset_or_table, field_name, predictions_field) if config is None
                      else analyze(dataset_or_table, field_name, predictions_field, config=config))
        except Exception as error:  # theirs is being written: report, keep the peers' figures
            logger.exception("analyze_objects failed")
            return f"skipped: analyze_objects raised {type(error).__name__}: {error}"
        seconds = time.perf_counter() - started
    table = result.table if hasattr(result, "table") else result
    if not isinstance(result, pd.DataFrame) and isinstance(getattr(result, "info", None), dict):
        found = dict(result.info)
        info.update({key: found[key] for key in ("config", "counts") if key in found})
        combination = found.get("mislabel_predictions")
        if isinstance(combination, dict):
            info["mislabel_predictions"] = {key: combination[key] for key in (
                "prediction_weight", "chosen_by", "log_loss_by_prediction_weight", "boxes_matched", "from_logits",
                "from_confidence", "logits_ignored") if key in combination}
        mislabels = found.get("mislabels")
        if isinstance(mislabels, dict):
            info["mislabels"] = mislabels.get("summary") or mislabels.get("skipped")
    absent = [column for column in OUR_COLUMNS if column not in table.columns]
    if absent:
        return f"skipped: analyze_objects' table lacks {', '.join(absent)}"
    n = len(truth["annotations"])
    sizes = {image["id"]: (image["width"], image["height"]) for image in truth["images"]}
    boxes = table[table["object_id"].notna() & (table["object_id"].astype(str) != "")]
    rows = boxes["object_id"].astype(str).map(annotation_of_detection)
    if rows.isna().any():
        return f"skipped: {int(rows.isna().sum())} object ids of analyze_objects are not detections of {field_name!r}"
    rows = rows.astype(int).to_numpy()
    score_columns = {"wrong_class": "mislabel_score", "spurious": "spurious_score",
                     "localization": "localization_score", "duplicate": "duplicate_score"}
    scores, flags, sources = {}, {}, {}
    issue = boxes["issue"].astype(object).to_numpy()
    for kind, column in score_columns.items():
        if column not in boxes.columns:
            continue
        values = np.full(n, np.nan)
        values[rows] = pd.to_numeric(boxes[column], errors="coerce").to_numpy(dtype=np.float64)
        scores[kind] = values
        flagged = np.zeros(n, dtype=bool)
        flagged[rows] = np.isin(issue, OUR_ISSUES[kind])
        flags[kind] = flagged
        sources[kind] = column
    missing = []
    extra = table[~(table["object_id"].notna() & (table["object_id"].astype(str) != ""))]
    if "missing_score" in table.columns:
        sources["missing"] = "missing_score"
        for _, row in extra.iterrows():
            image_id = image_of_sample.get(str(row["sample_id"]))
            if image_id is None or row["bounding_box"] is None:
                continue
            width, height = sizes[image_id]
            x, y, w, h = (float(v) for v in row["bounding_box"])
            missing.append({"image_id": image_id, "bbox": [x * width, y * height, w * width, h * height],
                            "score": float(row["missing_score"]) if row["missing_score"] is not None else np.nan,
                            "flagged": row["issue"] in OUR_ISSUES["missing"]})
    image_scores = None
    quality = getattr(result, "image_quality", None)
    if quality:
        position = {image_id: i for i, image_id in enumerate(image["id"] for image in truth["images"])}
        image_scores = np.full(len(truth["images"]), np.nan)
        sample_of_image = {image_id: sample_id for sample_id, image_id in image_of_sample.items()}
        for image_id, i in position.items():
            value = quality.get(sample_of_image.get(image_id))
            image_scores[i] = np.nan if value is None else 1.0 - float(value)
    return MethodScores(name=name, annotation_scores=scores, annotation_flags=flags, missing=missing,
                        sources=sources, image_scores=image_scores, seconds=seconds, info=info)


def wrong_class_variants(fiftyone_set: FiftyOneSet, truth: dict) -> list[MethodScores]:
    """Ours with the wrong-class evidence of one side only: the box embeddings alone
    (``prediction_weight=0``) and, where a box has a matched prediction, the prediction's class
    probabilities alone (``prediction_weight=1``). Only their wrong-class rows are reported
    (the other finders do not read the weight). Needs the embeddings ``score_ours`` computed."""
    from curation.objects import ObjectConfig

    out = []
    for name, weight in (("ours, embeddings only", 0.0), ("ours, predictions only", 1.0)):
        variant = score_ours(fiftyone_set.dataset, truth, annotation_of_detection=fiftyone_set.annotation_of_detection,
                             image_of_sample=fiftyone_set.image_of_sample, embed_patches=False,
                             config=ObjectConfig(prediction_weight=weight), name=name)
        if isinstance(variant, str):
            logger.warning("%s: %s", name, variant)
            continue
        variant.report_types = ("wrong_class",)
        variant.image_scores = variant.image_flags = None
        out.append(variant)
    return out


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------

def _fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict) -> str:
    lines = ["| method | error | score used | positives | scored | flagged | precision | recall | AP | method s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        lines.append(f"| {row['method']} | {row['error']} | {row['score'] or 'none'} | {row['positives']} | "
                     f"{_fmt(row['candidates'])} | "
                     f"{_fmt(row['flagged'])} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['ap'])} | "
                     f"{results['methods'][row['method']]['seconds']:.1f} |")
    if results.get("images"):
        lines += ["", "| method (images with any error) | images | positives | flagged | precision | recall | AP |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in results["images"]:
            lines.append(f"| {row['method']} | {row['images']} | {row['positives']} | {_fmt(row['flagged'])} | "
                         f"{_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['ap'])} |")
    for name, skipped in results.get("skipped", {}).items():
        lines.append(f"\n{name}: {skipped}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canvases", type=int, default=ds.DetectionSetConfig.n_canvases)
    parser.add_argument("--source", choices=sorted(ds.SOURCES), default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="cleanlab,fiftyone,ours")
    parser.add_argument("--data-dir", type=Path, default=ds.DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep-temp", action="store_true")
    parser.add_argument("--no-patch-embeddings", action="store_true",
                        help="ours: do not embed the boxes first (the wrong-class finder then has no input)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = sorted(set(methods) - {"cleanlab", "fiftyone", "ours"})
    if unknown:
        parser.error(f"unknown methods {unknown}; available: cleanlab, fiftyone, ours")

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    config = ds.DetectionSetConfig(n_canvases=args.canvases, source=args.source, seed=args.seed)
    try:
        detection_set = ds.build_detection_set(config, data_dir=args.data_dir)
    except ds.DataMissing as error:
        print(error, file=sys.stderr)
        return 2
    predictions = ds.build_predictions(detection_set, ds.PredictionConfig(seed=args.seed))
    truth = detection_set.truth
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_start": round(load_start, 2)},
        "set": {"root": str(detection_set.root), "config": truth["config"], "counts": truth["counts"],
                "backgrounds": truth["backgrounds"], "build_seconds": truth.get("seconds")},
        "predictions": predictions["info"], "reachable": reachable(truth, predictions),
        "methods": {}, "rows": [], "images": [], "skipped": {},
    }

    scored: list[MethodScores] = []
    if "cleanlab" in methods:
        scored.append(run_cleanlab(truth, predictions))
    work_dir = Path(tempfile.mkdtemp(prefix="bench-detection-"))
    mongod = None
    try:
        if {"fiftyone", "ours"} & set(methods):
            from curation.database import start_private_mongod

            os.environ["CURATION_CACHE_DIR"] = str(work_dir / "cache")  # after the set: its cache stays shared
            mongod = start_private_mongod(work_dir)
            fiftyone_set = build_fiftyone_set(detection_set, predictions, "bench-detection")
            results["import_seconds"] = round(fiftyone_set.seconds, 1)
            if "fiftyone" in methods:
                scored.append(run_fiftyone(fiftyone_set, truth, predictions))
            if "ours" in methods:
                ours = score_ours(fiftyone_set.dataset, truth, annotation_of_detection=fiftyone_set.annotation_of_detection,
                                  image_of_sample=fiftyone_set.image_of_sample,
                                  embed_patches=not args.no_patch_embeddings,
                                  embedding_cache=detection_set.root / "patch_embeddings.npz")
                if isinstance(ours, str):
                    results["skipped"]["ours"] = ours
                    print(f"ours: {ours}", file=sys.stderr)
                else:
                    scored.append(ours)
                    scored.extend(wrong_class_variants(fiftyone_set, truth))
    finally:
        if mongod is not None:
            from curation.database import stop_private_mongod

            stop_private_mongod(mongod)
        if args.keep_temp:
            print(f"kept {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    for method in scored:
        results["methods"][method.name] = {"seconds": round(method.seconds, 2), "sources": method.sources, **method.info}
        results["rows"].extend(evaluate(method, truth))
        image_row = evaluate_images(method, truth)
        if image_row:
            results["images"].append(image_row)
    results["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(results))
    print(f"\nreachable with these predictions: {json.dumps(results['reachable'])}; total {results['seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
