"""Mislabel detection on real data: ours vs cleanlab alone vs FiftyOne Brain mistakenness.

Embeddings: the offline model ``efficientnet-lite0-imagenet`` (CLIP weights are not
reachable here, so the zero-shot signal is off in every figure below), on PIL images
converted to RGB, cached as ``.npy`` under ``$CURATION_CACHE_DIR/bench`` (default
``~/.cache/curation/bench``): the first run embeds (minutes on a CPU), later runs load.
All three methods get the same out-of-fold probabilities
(:func:`curation.finders.classifier.compute_out_of_fold_predictions`, 5-fold logistic
regression on the embeddings); ours adds the neighbour vote over the cosine kNN graph
(``curation.neighbors.compute_neighbors``, exact, k = 15 as in the app, of which the finder's
``n_neighbors`` vote; scikit-learn's brute-force search if that module is absent).

1. Classifier settings: time and quality (average precision of 1 - self-confidence for
   the flipped labels) of the out-of-fold classifier for several PCA sizes and C, on
   Fashion-MNIST with 20% flips (flip seed 101, the calibration flips).
2. Calibration (Fashion-MNIST, flip seed 101, 10/20/40%): the neighbour weight, the
   neighbour count, cleanlab's input (the classifier or the mixture), the flag rule
   (threshold, cleanlab, or cleanlab OR threshold) and the threshold, by mean F1 of the
   flagged set; plus the average precision of the score for each weight and k.
3. Fashion-MNIST report (flip seed 0, a different draw of flipped samples): precision,
   recall and F1 of the flagged set at 10/20/40% noise, for ours (``is_issue`` with the
   default rule, and with ``use_cleanlab_flag=True``, the OR rule), cleanlab's
   ``find_label_issues`` alone, and FiftyOne mistakenness at its own cut (> 0.5, i.e. the
   prediction disagrees with the label); plus every method's top-k with k = the true
   number of flips. The 10,000 images are the Fashion-MNIST *test* set (to keep embedding
   time bounded), labels flipped uniformly to another class.
4. MNIST test set, the 15 validated label errors of Northcutt et al. (2021): hits in the
   top 15 / 50 / 100 and average precision over all 10,000 images. MNIST was not used to
   choose anything.
5. Selection (issue 9): the out-of-fold classifier with the old fixed settings (PCA-128,
   C = 0.1), with settings chosen per data set (``C="auto"``, ``dimensions="auto"``: inner
   hold-out log loss, temperature scaling), and the plain cleanlab baseline (scikit-learn's
   LogisticRegression, C = 1, on all raw dimensions, 5 folds): accuracy, log loss, time,
   what auto chose, the self-confidence ranking and cleanlab's flags on each, and our finder
   with the fixed and the auto classifier, on the Fashion-MNIST report flips and the MNIST
   validated errors. ``--selection-sets`` picks the data sets, ``--fashion-limit`` caps
   Fashion-MNIST alone.

FiftyOne runs against a private mongod started here (see ``start_private_mongod``).

    .venv/bin/python benchmarks/bench_mislabels.py --json benchmarks/results/bench_mislabels.json
    # embed first, in the background, one torch thread per set (see embed_idx_images):
    nice .venv/bin/python benchmarks/bench_mislabels.py --embed-only mnist --threads 1 &
    nice .venv/bin/python benchmarks/bench_mislabels.py --embed-only fashion --threads 1 &
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets"
MODEL = "efficientnet-lite0-imagenet"  # the offline model; CLIP weights need the hub
EMBED_BATCH = 64
EMBED_CHUNK = 640  # images per resumable cache file
GRAPH_K = 15  # what curation.analysis builds for the app (DEFAULT_NEIGHBORS)
NOISE_RATES = (0.1, 0.2, 0.4)
CALIBRATION_SEED = 101
REPORT_SEED = 0

logger = logging.getLogger("bench_mislabels")


# ----------------------------------------------------------------------------------------
# Data and embeddings
# ----------------------------------------------------------------------------------------

def bench_cache_dir() -> Path:
    from curation.paths import cache_dir

    path = cache_dir() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:12]


def embed_idx_images(images_path: Path, *, model: str = MODEL, limit: int | None = None, threads: int | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings of an IDX image file, cached as .npy.

    The cache key is the file's content hash, the model and the count, so a changed file or
    model never reuses stale vectors. Every ``EMBED_CHUNK`` images are saved as they finish,
    so an interrupted run resumes.
    """
    from curation.idx import read_idx

    key = f"{images_path.name.split('.')[0]}-{file_digest(images_path)}-{model}-{limit or 'all'}"
    target = bench_cache_dir() / f"{key}.npy"
    if target.exists():
        return np.load(target)
    import torch
    from PIL import Image

    from curation.models import load_embedder

    pixels = read_idx(images_path)
    if limit is not None:
        pixels = pixels[:limit]
    # The preprocess these cached vectors were made with (shorter side 256, centre crop 224),
    # pinned: `curation embed` now picks 160 px, no crop, for 28 px images (bench_input_size.py
    # compares the two), and a cache key without the preprocess must not mix them.
    from curation.models import LEGACY_CROP, LEGACY_IMAGE_SIZE

    embedder = load_embedder(model, device="cpu", allow_fallback=False, image_size=LEGACY_IMAGE_SIZE, crop=LEGACY_CROP)
    # On a shared CPU one intra-op thread per process embedded 3x more images per CPU-second
    # than two (12.7 vs 4 images/s): the second thread mostly spins waiting for the first.
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    chunk_dir = bench_cache_dir() / f"{key}.chunks"
    chunk_dir.mkdir(exist_ok=True)
    chunks = []
    started = time.perf_counter()
    for chunk_start in range(0, len(pixels), EMBED_CHUNK):
        chunk_path = chunk_dir / f"{chunk_start:06d}.npy"
        if chunk_path.exists():
            chunks.append(np.load(chunk_path))
            continue
        vectors = []
        for start in range(chunk_start, min(chunk_start + EMBED_CHUNK, len(pixels)), EMBED_BATCH):
            batch = torch.stack([embedder.preprocess(Image.fromarray(image).convert("RGB"))
                                 for image in pixels[start:min(start + EMBED_BATCH, chunk_start + EMBED_CHUNK)]])
            vectors.append(embedder.encode_images(batch))
        chunks.append(np.concatenate(vectors).astype(np.float32))
        np.save(chunk_dir / "partial.npy", chunks[-1])
        (chunk_dir / "partial.npy").replace(chunk_path)
        done = chunk_start + len(chunks[-1])
        logger.info("%s: embedded %d/%d (%.0f s)", images_path.name, done, len(pixels), time.perf_counter() - started)
    matrix = np.concatenate(chunks)
    np.save(chunk_dir / "all.npy", matrix)
    (chunk_dir / "all.npy").replace(target)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    return matrix


def neighbour_graph(embeddings: np.ndarray, k: int = GRAPH_K) -> tuple[np.ndarray, np.ndarray, str]:
    """(N, k) indices and cosine similarities of each row's nearest other rows, most similar first.

    The library's shared graph (``curation.neighbors.compute_neighbors``, exact) when it is
    there, else scikit-learn's brute-force cosine search.
    """
    try:
        from curation.neighbors import compute_neighbors
    except ImportError:
        compute_neighbors = None
    if compute_neighbors is not None:
        graph = compute_neighbors(embeddings, k, method="exact", device="cpu")
        return np.asarray(graph.indices), np.asarray(graph.similarities), "curation.neighbors (exact)"
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(embeddings)
    distances, indices = search.kneighbors(embeddings)
    rows = np.arange(len(embeddings))[:, None]
    keep = indices != rows  # drop self (normally column 0; not always with exact duplicates)
    ordered_indices = np.array([row[mask][:k] for row, mask in zip(indices, keep)])
    ordered_similarities = np.array([1.0 - row[mask][:k] for row, mask in zip(distances, keep)], dtype=np.float32)
    return ordered_indices.astype(np.int64), ordered_similarities, "sklearn NearestNeighbors (brute, cosine)"


def flip_labels(labels: np.ndarray, rate: float, seed: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``rate`` of the labels, each uniformly to another class. Returns (noisy labels, flipped mask)."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(labels), dtype=bool)
    chosen = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    flipped[chosen] = True
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + rng.integers(1, n_classes, size=len(chosen))) % n_classes
    return noisy, flipped


def make_context(embeddings: np.ndarray, label_names: np.ndarray, graph: tuple[np.ndarray, np.ndarray]):
    from curation.finders.base import FinderContext

    count = len(embeddings)
    return FinderContext(
        ids=np.array([f"{index:05d}" for index in range(count)], dtype=object),
        embeddings=embeddings, filepaths=np.array([f"/nowhere/{index}.png" for index in range(count)], dtype=object),
        neighbor_indices=graph[0], neighbor_similarities=graph[1], labels=label_names.astype(object),
        model_name=MODEL,
    )


# ----------------------------------------------------------------------------------------
# Methods
# ----------------------------------------------------------------------------------------

def memoized_out_of_fold(original, memory: dict, *, keep_one: bool = False):
    """``original`` (compute_out_of_fold_predictions) computed once per (embeddings, labels,
    settings after defaults); ``sample_keys`` is left out of the key (the benchmark's ids are
    fixed). ``keep_one``: forget the previous entry first (memory stays flat)."""
    signature = inspect.signature(original)

    @functools.wraps(original)  # the finders' context binds against the real signature
    def cached(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        labels_key = hashlib.sha1("\x1f".join(map(str, bound.arguments["labels"])).encode()).hexdigest()
        key = (id(bound.arguments["embeddings"]), labels_key,
               tuple(sorted((name, str(value)) for name, value in bound.arguments.items()
                            if name not in ("embeddings", "labels", "sample_keys"))))
        if key not in memory:
            if keep_one:
                memory.clear()
            memory[key] = original(*args, **kwargs)
        return memory[key]

    return cached


def memoize_out_of_fold() -> None:
    """Compute each (embeddings, labels, settings) classifier once: the calibration grid reruns
    the finder with the same labels many times, and only its cheap parts change. The finder
    reaches the classifier through ``FinderContext.out_of_fold`` (the classifier module's
    function), ``_pred_probs_from`` through the mislabels module: both get the cached one."""
    import curation.finders.classifier as classifier
    import curation.finders.mislabels as mislabels

    cached = memoized_out_of_fold(classifier.compute_out_of_fold_predictions, {}, keep_one=True)
    classifier.compute_out_of_fold_predictions = cached
    mislabels.compute_out_of_fold_predictions = cached


def run_ours(context, config) -> dict:
    from curation.finders.mislabels import find_mislabels

    started = time.perf_counter()
    result = find_mislabels(context, config)
    elapsed = time.perf_counter() - started
    table = result.table
    return {
        "score": np.nan_to_num(table["score"].to_numpy(float), nan=-1.0),
        "flagged": table["is_issue"].to_numpy(bool),
        "classifier_quality": table["classifier_quality"].to_numpy(float),
        "neighbor_agreement": table["neighbor_agreement"].to_numpy(float),
        "cleanlab_issue": table["cleanlab_issue"].to_numpy(bool),
        "seconds": elapsed,
        "info": result.info,
    }


def run_cleanlab(labels: np.ndarray, pred_probs: np.ndarray) -> dict:
    """cleanlab alone: find_label_issues (prune by noise rate) and its self-confidence quality."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    started = time.perf_counter()
    flagged = find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    # Review order of find_label_issues(..., return_indices_ranked_by="self_confidence"):
    # flagged first, each group by quality.
    score = (1.0 - quality) + flagged.astype(float)
    return {"score": score, "quality_score": 1.0 - quality, "flagged": flagged, "seconds": time.perf_counter() - started}


def start_private_mongod(work_dir: Path) -> subprocess.Popen:
    """A mongod of our own (see ``curation.database.start_private_mongod`` for why)."""
    from curation.database import start_private_mongod as start

    return start(work_dir)


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------

def flag_metrics(flagged: np.ndarray, truth: np.ndarray) -> dict:
    hits = int((flagged & truth).sum())
    precision = hits / flagged.sum() if flagged.sum() else 0.0
    recall = hits / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flagged": int(flagged.sum()), "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def top_k_mask(score: np.ndarray, k: int) -> np.ndarray:
    mask = np.zeros(len(score), dtype=bool)
    mask[np.argsort(-score, kind="stable")[:k]] = True
    return mask


def ranking_metrics(score: np.ndarray, truth: np.ndarray, cuts=(15, 50, 100)) -> dict:
    from sklearn.metrics import average_precision_score

    order = np.argsort(-score, kind="stable")
    metrics = {f"top{cut}": int(truth[order[:cut]].sum()) for cut in cuts}
    metrics["average_precision"] = round(float(average_precision_score(truth, score)), 4)
    return metrics


# ----------------------------------------------------------------------------------------
# Experiments
# ----------------------------------------------------------------------------------------

SETTINGS_SWEEP = (  # (PCA dimensions, C, max_iter, standardise each component); default: 128, 0.1, 200, global
    (None, 1.0, 200, False), (256, 1.0, 200, False), (128, 1.0, 200, False), (64, 1.0, 200, False), (32, 1.0, 200, False),
    (256, 0.1, 200, False), (128, 0.1, 200, False), (128, 0.3, 200, False), (128, 3.0, 200, False),
    (128, 0.1, 50, False), (128, 0.1, 1000, False), (128, 0.1, 200, True),
)


def classifier_settings(embeddings: np.ndarray, labels: np.ndarray, n_classes: int) -> list[dict]:
    """Time and flip-detection AP of the out-of-fold classifier for several settings (20% flips)."""
    from sklearn.metrics import average_precision_score

    from curation.finders.classifier import compute_out_of_fold_predictions

    noisy, flipped = flip_labels(labels, 0.2, CALIBRATION_SEED, n_classes)
    rows = []
    for dimensions, C, max_iter, standardize in SETTINGS_SWEEP:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = compute_out_of_fold_predictions(embeddings, noisy.astype(str), dimensions=dimensions, C=C,
                                                 max_iter=max_iter, standardize=standardize)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        classes = [int(name) for name in result.classes]
        given = np.array([classes.index(value) for value in noisy])
        self_confidence = result.pred_probs[np.arange(len(given)), given]
        accuracy = float((np.array(classes)[result.pred_probs.argmax(axis=1)] == labels).mean())
        rows.append({"dimensions": dimensions or embeddings.shape[1], "C": C, "max_iter": max_iter,
                     "standardize": standardize, "seconds": round(elapsed, 1), "cpu_seconds": round(cpu, 1),
                     "accuracy_vs_true": round(accuracy, 4),
                     "flip_ap": round(float(average_precision_score(flipped, 1 - self_confidence)), 4)})
        logger.info("classifier %s", rows[-1])
    return rows


FLAG_RULES = {
    "cleanlab": lambda table, score, threshold: table["cleanlab_issue"],
    "threshold": lambda table, score, threshold: (score >= threshold) & table["disagrees"],
    "cleanlab_or_threshold": lambda table, score, threshold: table["cleanlab_issue"] | ((score >= threshold) & table["disagrees"]),
    "cleanlab_or_threshold_any": lambda table, score, threshold: table["cleanlab_issue"] | (score >= threshold),
}


def calibrate(embeddings: np.ndarray, labels: np.ndarray, names: list[str], graph) -> dict:
    """Grid on the calibration flips: neighbour share, k, cleanlab's input, threshold, flag rule.

    The finder runs once per (noise, share, k, cleanlab input); thresholds and flag rules
    are applied to its table afterwards (they do not change the scores).
    """
    from curation.finders.mislabels import MislabelConfig, find_mislabels

    shares = (0.0, 0.25, 0.5, 0.75, 1.0)  # neighbour weight; the classifier gets 1 - share
    thresholds = tuple(float(value) for value in np.round(np.arange(0.4, 0.951, 0.05), 2))
    neighbour_counts = (5, 10, 15)
    sources = ("combined", "classifier")
    f1: dict[tuple, list[float]] = {}
    ap: dict[tuple, list[float]] = {}
    from sklearn.metrics import average_precision_score

    for rate in NOISE_RATES:
        noisy, flipped = flip_labels(labels, rate, CALIBRATION_SEED, len(names))
        context = make_context(embeddings, np.array(names, dtype=object)[noisy], graph)
        for share in shares:
            for count in neighbour_counts:
                if share == 0 and count != neighbour_counts[0]:
                    continue  # neighbours unused: k does not matter
                for source in sources:
                    if share == 0 and source == "combined":
                        continue  # the mixture is the classifier alone
                    config = MislabelConfig(classifier_weight=1 - share, neighbor_weight=share, n_neighbors=count, cleanlab_on=source)
                    table = find_mislabels(context, config).table
                    table["disagrees"] = table["suggested_label"] != table["given_label"]
                    score = table["score"].fillna(0).to_numpy()
                    if source == "classifier":  # the score does not depend on cleanlab's input
                        ap.setdefault((share, count), []).append(float(average_precision_score(flipped, score)))
                    for rule, flag in FLAG_RULES.items():
                        for threshold in (thresholds if rule != "cleanlab" else (1.0,)):
                            key = (share, count, source, rule, threshold)
                            f1.setdefault(key, []).append(flag_metrics(flag(table, score, threshold).to_numpy(bool), flipped)["f1"])
        logger.info("calibration: noise %.0f%% done", 100 * rate)

    def row(key, values):
        share, count, source, rule, threshold = key
        return {"neighbor_share": share, "n_neighbors": count, "cleanlab_on": source, "rule": rule, "threshold": threshold,
                "mean_f1": round(float(np.mean(values)), 4), "f1_by_noise": [round(v, 4) for v in values]}

    ranked = sorted(f1.items(), key=lambda item: -np.mean(item[1]))
    best_by_rule = {}
    for key, values in ranked:
        best_by_rule.setdefault(key[3], row(key, values))
    from curation.finders.mislabels import FALLBACK_WEIGHTS

    default = MislabelConfig()
    # The weights are chosen per dataset now ("auto"); the calibration grid compares fixed ones,
    # so the fixed fallback stands for the default here.
    default_share = FALLBACK_WEIGHTS[1] / sum(FALLBACK_WEIGHTS)
    default_rule = "cleanlab_or_threshold" if default.use_cleanlab_flag else "threshold"
    default_key = (default_share, default.n_neighbors, default.cleanlab_on, default_rule, default.threshold)
    return {
        "best": row(*ranked[0]),
        "best_by_rule": best_by_rule,
        "top10": [row(key, values) for key, values in ranked[:10]],
        "default": row(default_key, f1[default_key]) if default_key in f1 else None,
        "ranking_ap_by_share_and_k": [{"neighbor_share": key[0], "n_neighbors": key[1], "mean_ap": round(float(np.mean(values)), 4),
                                       "ap_by_noise": [round(v, 4) for v in values]} for key, values in sorted(ap.items())],
        "grid_size": len(f1),
    }


def fashion_report(embeddings, labels, names, graph, mistakenness) -> list[dict]:
    from curation.finders.mislabels import MislabelConfig

    rows = []
    for rate in NOISE_RATES:
        noisy, flipped = flip_labels(labels, rate, REPORT_SEED, len(names))
        context = make_context(embeddings, np.array(names, dtype=object)[noisy], graph)
        ours = run_ours(context, MislabelConfig())
        ours_or = run_ours(context, MislabelConfig(use_cleanlab_flag=True))
        pred_probs, classes = _pred_probs_from(ours, context)
        given = np.array([classes.index(name) for name in context.labels])
        cleanlab = run_cleanlab(given, pred_probs)
        fiftyone = mistakenness.run(given, pred_probs) if mistakenness else None
        true_count = int(flipped.sum())
        entry = {"noise": rate, "flipped": true_count, "seconds_ours": round(ours["seconds"], 1),
                 "ours": flag_metrics(ours["flagged"], flipped),
                 "ours_or": flag_metrics(ours_or["flagged"], flipped),
                 "ours_or_topk": flag_metrics(top_k_mask(ours["score"], true_count), flipped),
                 "ours_or_ranking": ranking_metrics(ours["score"], flipped),
                 "cleanlab": flag_metrics(cleanlab["flagged"], flipped),
                 "ours_topk": flag_metrics(top_k_mask(ours["score"], true_count), flipped),
                 "cleanlab_topk": flag_metrics(top_k_mask(cleanlab["quality_score"], true_count), flipped),
                 "ours_ranking": ranking_metrics(ours["score"], flipped),
                 "cleanlab_ranking": ranking_metrics(cleanlab["quality_score"], flipped)}
        if fiftyone is not None:
            entry["fiftyone"] = flag_metrics(fiftyone["flagged"], flipped)
            entry["fiftyone_topk"] = flag_metrics(top_k_mask(fiftyone["score"], true_count), flipped)
            entry["fiftyone_ranking"] = ranking_metrics(fiftyone["score"], flipped)
        rows.append(entry)
        logger.info("fashion %.0f%%: %s", 100 * rate, entry)
    return rows


def _pred_probs_from(ours: dict, context) -> tuple[np.ndarray, list[str]]:
    """The same out-of-fold probabilities the finder used (same seed, same settings)."""
    import curation.finders.mislabels as mislabels

    compute_out_of_fold_predictions = mislabels.compute_out_of_fold_predictions  # memoized when the grid ran
    settings = ours["info"]["config"]
    result = compute_out_of_fold_predictions(context.embeddings, context.labels, n_folds=settings["n_folds"],
                                             seed=settings["seed"], C=settings["C"], dimensions=settings["dimensions"],
                                             sample_keys=context.ids)
    assert result.checkable.all()
    given = np.array([result.classes.index(name) for name in context.labels])
    # The finder's classifier signal is cleanlab's self-confidence on exactly these probabilities.
    np.testing.assert_allclose(result.pred_probs[np.arange(len(given)), given], ours["classifier_quality"], atol=1e-12)
    return result.pred_probs, result.classes


def mnist_report(embeddings, labels, errors_csv: Path, graph, mistakenness) -> dict:
    import pandas as pd

    from curation.finders.mislabels import MislabelConfig

    listed = pd.read_csv(errors_csv)
    listed = listed[listed["index"] < len(labels)]  # --limit
    truth = np.zeros(len(labels), dtype=bool)
    truth[listed.loc[listed["validated_error"] == 1, "index"].to_numpy()] = True
    listed_any = np.zeros(len(labels), dtype=bool)
    listed_any[listed["index"].to_numpy()] = True
    names = [str(digit) for digit in range(10)]
    context = make_context(embeddings, np.array(names, dtype=object)[labels], graph)
    ours = run_ours(context, MislabelConfig())
    ours_or = run_ours(context, MislabelConfig(use_cleanlab_flag=True))
    pred_probs, classes = _pred_probs_from(ours, context)
    given = np.array([classes.index(name) for name in context.labels])
    cleanlab = run_cleanlab(given, pred_probs)
    neighbours_only = np.nan_to_num(1.0 - ours["neighbor_agreement"], nan=-1.0)
    report = {
        "validated_errors": int(truth.sum()),
        "classifier_accuracy": round(float((pred_probs.argmax(axis=1) == given).mean()), 4),
        "seconds_ours": round(ours["seconds"], 1),
        "ours": {**ranking_metrics(ours["score"], truth), "flagged": int(ours["flagged"].sum()),
                 "validated_flagged": int((ours["flagged"] & truth).sum()),
                 "published_100_in_our_top100": int(listed_any[np.argsort(-ours["score"], kind="stable")[:100]].sum())},
        "ours_or_rule": {**ranking_metrics(ours["score"], truth), "flagged": int(ours_or["flagged"].sum()),
                         "validated_flagged": int((ours_or["flagged"] & truth).sum())},
        "cleanlab_find_label_issues": {**ranking_metrics(cleanlab["score"], truth), "flagged": int(cleanlab["flagged"].sum()),
                                       "validated_flagged": int((cleanlab["flagged"] & truth).sum())},
        "cleanlab_quality_score": ranking_metrics(cleanlab["quality_score"], truth),
        "neighbours_only": ranking_metrics(neighbours_only, truth),
    }
    if mistakenness:
        fiftyone = mistakenness.run(given, pred_probs)
        report["fiftyone_mistakenness"] = {**ranking_metrics(fiftyone["score"], truth), "flagged": int(fiftyone["flagged"].sum()),
                                           "validated_flagged": int((fiftyone["flagged"] & truth).sum())}
    logger.info("mnist: %s", report)
    return report


# ----------------------------------------------------------------------------------------
# Per-data-set classifier selection (issue 9 section 2)
# ----------------------------------------------------------------------------------------

CLASSIFIER_VARIANTS = (  # name -> settings of compute_out_of_fold_predictions (None: the plain baseline)
    ("fixed", {"C": 0.1, "dimensions": 128}),  # the product before selection (chosen on Fashion-MNIST)
    ("auto", {"C": "auto", "dimensions": "auto"}),  # chosen per data set and fold by held-out log loss
    ("plain", None),  # cleanlab's usual recipe: out-of-fold LogisticRegression(C=1) on all raw dimensions
)


def plain_out_of_fold(embeddings: np.ndarray, given: np.ndarray, n_classes: int, seed: int = 0) -> np.ndarray:
    """(N, C) out-of-fold probabilities of scikit-learn's LogisticRegression(C=1) on the raw
    embeddings, 5 stratified folds, one BLAS thread: the plain cleanlab baseline."""
    import warnings as _warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    probabilities = np.zeros((len(given), n_classes))
    with threadpool_limits(limits=1, user_api="blas"), _warnings.catch_warnings():
        _warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(embeddings, given):
            model = LogisticRegression(C=1.0, max_iter=200, random_state=seed).fit(embeddings[train], given[train])
            probabilities[np.ix_(test, model.classes_)] = model.predict_proba(embeddings[test])
    return probabilities


def classifier_variants(context, given: np.ndarray, n_classes: int, truth_labels: np.ndarray | None) -> dict:
    """Out-of-fold probabilities of every variant, with time, accuracy and log loss."""
    from curation.finders.classifier import compute_out_of_fold_predictions, log_loss

    variants = {}
    for name, settings in CLASSIFIER_VARIANTS:
        started, cpu_started = time.perf_counter(), time.process_time()
        info = {}
        if settings is None:
            probabilities = plain_out_of_fold(context.embeddings, given, n_classes)
        else:
            result = compute_out_of_fold_predictions(context.embeddings, context.labels, n_folds=5, seed=0, **settings)
            probabilities, info = result.pred_probs, result.info
        row = {"seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time() - cpu_started, 1),
               "accuracy_vs_given": round(float((probabilities.argmax(axis=1) == given).mean()), 4),
               "log_loss_vs_given": round(log_loss(probabilities, given), 4)}
        if truth_labels is not None:
            row["accuracy_vs_true"] = round(float((probabilities.argmax(axis=1) == truth_labels).mean()), 4)
        if isinstance(info.get("selection"), dict):
            selection = info["selection"]
            row["chosen"] = selection["chosen"]
            row["chosen_per_fold"] = selection["chosen_per_fold"]
            row["temperature"] = info["temperature"]
            row["candidates"] = [{key: candidate[key] for key in ("name", "mean_log_loss", "folds_chosen", "seconds")}
                                 for candidate in selection["candidates"]]
            row["left_out_for_budget"] = selection["left_out_for_budget"]
            row["selection_seconds"] = selection["selection_seconds"]
        variants[name] = (probabilities, row)
        logger.info("classifier %s: %s", name, {key: value for key, value in row.items() if key != "candidates"})
    return variants


def selection_report(fashion_embeddings, fashion_labels, fashion_names, fashion_graph,
                     mnist_embeddings, mnist_labels, errors_csv: Path, mnist_graph,
                     sets: tuple[str, ...] = ("fashion", "mnist")) -> dict:
    """Fixed vs auto-selected vs plain classifier on Fashion-MNIST flips and the MNIST errors.

    For each variant: classifier accuracy and log loss, the ranking by cleanlab's
    self-confidence on its probabilities, cleanlab's ``find_label_issues`` flags; for fixed
    and auto also our finder (neighbours + classifier) with that classifier.
    """
    import pandas as pd

    import curation.finders.classifier as classifier
    from curation.finders.mislabels import MislabelConfig

    report: dict = {"fashion": [], "mnist": None}
    original = classifier.compute_out_of_fold_predictions
    memory: dict = {}
    cached = memoized_out_of_fold(original, memory)  # the finder's fit is the one measured above
    classifier.compute_out_of_fold_predictions = cached
    try:
        def evaluate(context, given, n_classes, truth, truth_labels, flag_truth):
            entry = {}
            variants = classifier_variants(context, given, n_classes, truth_labels)
            for name, (probabilities, row) in variants.items():
                cleanlab = run_cleanlab(given, probabilities)
                row["self_confidence_ranking"] = ranking_metrics(cleanlab["quality_score"], truth)
                row["cleanlab_flags"] = flag_metrics(cleanlab["flagged"], truth)
                settings = dict(CLASSIFIER_VARIANTS)[name]
                if settings is not None:
                    ours = run_ours(context, MislabelConfig(**settings))
                    row["finder_ranking"] = ranking_metrics(ours["score"], truth)
                    row["finder_flags"] = flag_metrics(ours["flagged"], truth)
                entry[name] = row
                memory.clear()
            return entry

        for rate in NOISE_RATES if "fashion" in sets else ():
            noisy, flipped = flip_labels(fashion_labels, rate, REPORT_SEED, len(fashion_names))
            context = make_context(fashion_embeddings, np.array(fashion_names, dtype=object)[noisy], fashion_graph)
            classes = sorted(fashion_names)
            given = np.array([classes.index(fashion_names[value]) for value in noisy])
            truth_labels = np.array([classes.index(fashion_names[value]) for value in fashion_labels])
            entry = {"noise": rate, "flipped": int(flipped.sum()), **evaluate(context, given, len(classes), flipped, truth_labels, flipped)}
            report["fashion"].append(entry)
            logger.info("selection fashion %.0f%% done", 100 * rate)

        if "mnist" not in sets:
            return report
        listed = pd.read_csv(errors_csv)
        truth = np.zeros(len(mnist_labels), dtype=bool)
        validated = listed.loc[(listed["validated_error"] == 1) & (listed["index"] < len(mnist_labels)), "index"].to_numpy()
        truth[validated] = True
        names = [str(digit) for digit in range(10)]
        context = make_context(mnist_embeddings, np.array(names, dtype=object)[mnist_labels], mnist_graph)
        report["mnist"] = {"validated_errors": int(truth.sum()), "images": len(mnist_labels),
                           **evaluate(context, mnist_labels.astype(int), 10, truth, None, truth)}
    finally:
        classifier.compute_out_of_fold_predictions = original
    return report


def selection_markdown(report: dict) -> list[str]:
    lines = []
    labels = {"fixed": "fixed (PCA-128, C=0.1)", "auto": "auto (selected + temperature)", "plain": "plain LR, all dims, C=1"}

    def chosen(row):
        return f"{row.get('chosen', '')} (T={row['temperature']})" if "chosen" in row else ""

    for entry in report.get("fashion", []):
        lines += [f"#### Fashion-MNIST {entry['noise']:.0%} flips ({entry['flipped']})", "",
                  "| classifier | chosen | s (CPU s) | acc vs true | log loss | self-conf. AP | cleanlab F1 | finder F1 | finder AP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, label in labels.items():
            row = entry[key]
            finder_f1 = f"{row['finder_flags']['f1']:.3f}" if "finder_flags" in row else ""
            finder_ap = f"{row['finder_ranking']['average_precision']:.3f}" if "finder_ranking" in row else ""
            lines.append(f"| {label} | {chosen(row)} | {row['seconds']} ({row['cpu_seconds']}) | {row['accuracy_vs_true']:.4f} | "
                         f"{row['log_loss_vs_given']:.4f} | {row['self_confidence_ranking']['average_precision']:.3f} | "
                         f"{row['cleanlab_flags']['f1']:.3f} | {finder_f1} | {finder_ap} |")
        lines.append("")
    mnist = report.get("mnist")
    if mnist:
        lines += [f"#### MNIST ({mnist['images']} images, {mnist['validated_errors']} validated errors)", "",
                  "| classifier | chosen | s (CPU s) | acc vs given | log loss | self-conf. top 15/50/100 | self-conf. AP | finder top 15/50/100 | finder AP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, label in labels.items():
            row = mnist[key]
            ranking = row["self_confidence_ranking"]
            finder = row.get("finder_ranking")
            finder_hits = f"{finder['top15']}/{finder['top50']}/{finder['top100']}" if finder else ""
            finder_ap = f"{finder['average_precision']:.4f}" if finder else ""
            lines.append(f"| {label} | {chosen(row)} | {row['seconds']} ({row['cpu_seconds']}) | {row['accuracy_vs_given']:.4f} | "
                         f"{row['log_loss_vs_given']:.4f} | {ranking['top15']}/{ranking['top50']}/{ranking['top100']} | "
                         f"{ranking['average_precision']:.4f} | {finder_hits} | {finder_ap} |")
        lines.append("")
    return lines


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    lines = []
    settings = results.get("classifier_settings")
    if settings:
        lines += ["### Out-of-fold classifier settings (Fashion-MNIST test set, 20% flips, calibration seed)", "",
                  "| dims | C | max_iter | scaling | wall s | CPU s | accuracy vs true labels | flip AP |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {row['dimensions']} | {row['C']} | {row['max_iter']} | {'per component' if row['standardize'] else 'global'} | "
                  f"{row['seconds']} | {row['cpu_seconds']} | {row['accuracy_vs_true']:.4f} | {row['flip_ap']:.4f} |" for row in settings]
        lines.append("")
    calibration = results.get("calibration")
    if calibration:
        lines += ["### Calibration (Fashion-MNIST, flip seed 101, mean F1 of the flagged set over 10/20/40%)", "",
                  "| | neighbour share | k | cleanlab on | flag rule | threshold | mean F1 | F1 at 10/20/40% |",
                  "|---|---|---|---|---|---|---|---|"]
        rows = [(f"best '{rule}'", row) for rule, row in calibration["best_by_rule"].items()]
        if calibration["default"]:
            rows.append(("library default", calibration["default"]))
        for label, row in rows:
            f1s = " / ".join(f"{value:.3f}" for value in row["f1_by_noise"])
            lines.append(f"| {label} | {row['neighbor_share']} | {row['n_neighbors']} | {row['cleanlab_on']} | {row['rule']} | "
                         f"{row['threshold']} | {row['mean_f1']:.4f} | {f1s} |")
        lines += ["", "| neighbour share | k | mean AP of the score | AP at 10/20/40% |", "|---|---|---|---|"]
        for row in calibration["ranking_ap_by_share_and_k"]:
            lines.append(f"| {row['neighbor_share']} | {row['n_neighbors']} | {row['mean_ap']:.4f} | "
                         + " / ".join(f"{value:.3f}" for value in row["ap_by_noise"]) + " |")
        lines.append("")
    fashion = results.get("fashion")
    if fashion:
        methods = [("ours", "ours (is_issue, default)"), ("ours_or", "ours, OR rule (use_cleanlab_flag=True)"),
                   ("cleanlab", "cleanlab find_label_issues"), ("fiftyone", "FiftyOne mistakenness > 0.5")]
        lines += ["### Fashion-MNIST test set (10,000), synthetic uniform flips, report seed 0", "",
                  "| noise | method | flagged | precision | recall | F1 | top-k precision (k = flips) | AP |", "|---|---|---|---|---|---|---|---|"]
        for row in fashion:
            for key, label in methods:
                if key not in row:
                    continue
                flag, topk, ranking = row[key], row[f"{key}_topk"], row[f"{key}_ranking"]
                lines.append(f"| {row['noise']:.0%} ({row['flipped']}) | {label} | {flag['flagged']} | {flag['precision']:.3f} | "
                             f"{flag['recall']:.3f} | {flag['f1']:.3f} | {topk['precision']:.3f} | {ranking['average_precision']:.3f} |")
        lines.append("")
    mnist = results.get("mnist")
    if mnist:
        lines += [f"### MNIST test set: the {mnist['validated_errors']} validated label errors (classifier accuracy {mnist['classifier_accuracy']:.4f})", "",
                  "| ranking | top 15 | top 50 | top 100 | AP | flagged | validated among flagged |", "|---|---|---|---|---|---|---|"]
        for key, label in (("ours", "ours (score; flagged: default rule)"), ("ours_or_rule", "ours (score; flagged: OR rule)"), ("cleanlab_find_label_issues", "cleanlab find_label_issues, ranked by quality"),
                           ("cleanlab_quality_score", "cleanlab quality score alone"), ("neighbours_only", "neighbour agreement alone"),
                           ("fiftyone_mistakenness", "FiftyOne mistakenness")):
            if key not in mnist:
                continue
            row = mnist[key]
            lines.append(f"| {label} | {row['top15']} | {row['top50']} | {row['top100']} | {row['average_precision']:.4f} | "
                         f"{row.get('flagged', '')} | {row.get('validated_flagged', '')} |")
        lines.append("")
    selection = results.get("selection")
    if selection:
        lines += ["### Classifier settings chosen per data set vs fixed vs plain cleanlab baseline", ""]
        lines += selection_markdown(selection)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with mnist-test/ and fashion-mnist/")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--embed-only", choices=("both", "mnist", "fashion"), help="only compute (and cache) these embeddings")
    parser.add_argument("--threads", type=int, help="torch threads for embedding (default: all cores)")
    parser.add_argument("--limit", type=int, help="use only the first N images of each set (quick checks, not for reporting)")
    parser.add_argument("--skip-fiftyone", action="store_true", help="leave out FiftyOne mistakenness")
    parser.add_argument("--fashion-limit", type=int, help="use only the first N Fashion-MNIST images (overrides --limit for it)")
    parser.add_argument("--selection-sets", default="fashion,mnist", help="data sets of the selection stage")
    parser.add_argument("--stages", default="settings,calibration,fashion,mnist,selection",
                        help="comma-separated subset of: settings, calibration, fashion, mnist, selection")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    mnist_dir, fashion_dir = args.data_dir / "mnist-test", args.data_dir / "fashion-mnist"
    needed = [mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz",
              mnist_dir / "label_errors_mnist_test.csv", fashion_dir / "t10k-images-idx3-ubyte.gz",
              fashion_dir / "t10k-labels-idx1-ubyte.gz"]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        print(f"bench_mislabels: skipped, the real datasets are absent: {', '.join(missing)}")
        return 0

    from curation.idx import FASHION_MNIST_CLASSES, read_idx

    if args.embed_only:
        if args.embed_only in ("both", "mnist"):
            embed_idx_images(needed[0], threads=args.threads, limit=args.limit)
        if args.embed_only in ("both", "fashion"):
            embed_idx_images(needed[3], threads=args.threads, limit=args.fashion_limit or args.limit)
        return 0
    mnist_embeddings = embed_idx_images(needed[0], threads=args.threads, limit=args.limit)
    fashion_embeddings = embed_idx_images(needed[3], threads=args.threads, limit=args.fashion_limit or args.limit)
    mnist_labels = read_idx(needed[1]).astype(np.int64)[: len(mnist_embeddings)]
    fashion_labels = read_idx(needed[4]).astype(np.int64)[: len(fashion_embeddings)]
    fashion_names = list(FASHION_MNIST_CLASSES)

    work_dir = Path(tempfile.mkdtemp(prefix="bench-mislabels-"))
    mongod = None
    mistakenness = None
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
                     "model": MODEL, "graph_k": GRAPH_K, "images_per_set": len(fashion_embeddings),
                     "mnist_images": len(mnist_embeddings)}
    try:
        stages = set(args.stages.split(","))
        if not args.skip_fiftyone and stages & {"fashion", "mnist"}:
            mongod = start_private_mongod(work_dir)
            mistakenness = FiftyOneMistakenness(len(fashion_labels), fashion_names)
        *fashion_graph, graph_source = neighbour_graph(fashion_embeddings)
        *mnist_graph, _ = neighbour_graph(mnist_embeddings)
        results["graph"] = graph_source
        if "settings" in stages:
            results["classifier_settings"] = classifier_settings(fashion_embeddings, fashion_labels, len(fashion_names))
        memoize_out_of_fold()
        if "calibration" in stages:
            results["calibration"] = calibrate(fashion_embeddings, fashion_labels, fashion_names, fashion_graph)
        if "fashion" in stages:
            results["fashion"] = fashion_report(fashion_embeddings, fashion_labels, fashion_names, fashion_graph, mistakenness)
        if "selection" in stages:
            results["selection"] = selection_report(fashion_embeddings, fashion_labels, fashion_names, fashion_graph,
                                                    mnist_embeddings, mnist_labels, needed[2], mnist_graph,
                                                    sets=tuple(args.selection_sets.split(",")))
        if "mnist" in stages:
            if mistakenness:
                mistakenness.class_names = [str(digit) for digit in range(10)]
            results["mnist"] = mnist_report(mnist_embeddings, mnist_labels, needed[2], mnist_graph, mistakenness)
    finally:
        if mistakenness:
            try:
                mistakenness.close()
            except Exception:
                logger.exception("could not delete the FiftyOne dataset")
        if mongod:
            from curation.database import stop_private_mongod

            stop_private_mongod(mongod)
        shutil.rmtree(work_dir, ignore_errors=True)
    print(markdown(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
