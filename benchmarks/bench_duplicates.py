"""Near-duplicate and leak detection on planted duplicates: fixed cosine vs self-calibrated vs verified.

What it does, per data set (MNIST and Fashion-MNIST test images, the first ``--size``):

1. Plants ``--planted`` near duplicates: copies of randomly chosen images made with edits
   a person would still call the same picture, cycling through nine families. They are
   deliberately *not* the edits the self-calibration makes (see ``PLANT_FAMILIES`` against
   ``curation.finders.verification.CALIBRATION_EDITS``): stronger re-crops (72-80% of the
   side, bilinear), rotation with rescaling (8-13 degrees), pasting onto another, blurred
   image, stroke thickening/thinning, duotone tinting with gamma, down/up-sampling with
   WebP, salt-and-pepper noise, perspective warps, and two of these chained. So the
   benchmark measures how the calibration transfers, not how well it fits itself.
2. Writes every image as a PNG and embeds it as the product does (``load_rgb``, then the
   model's own preprocessing: EfficientNet-Lite0, bicubic resize to 256, centre crop 224).
3. Builds the shared graph (exact cosine, k=15, as ``curation analyze``), computes the
   signatures, and self-calibrates the verifier (200 images x 4 copies, negatives from
   5,000 images' top-k pairs, candidates at k=10) with the library's own functions.
4. Reports, for the planted pairs: precision and recall of the flagged pairs for the
   cosine threshold 0.95 (the old default), the library's earlier cosine calibration
   (``calibration.calibrate_threshold``), a cosine-only verifier calibrated exactly like the
   full one, and the verified score (also with ``duplicate_rate`` set to the true planted
   rate, to show what the default's caution costs); how many planted pairs each ranking puts in its top
   P (P = planted pairs; threshold-free) and its average precision; a feature ablation; and
   peers on the same embeddings (FiftyOne Brain ``compute_near_duplicates`` at its default
   threshold; cleanlab Datalab's ``near_duplicate`` issue type, when importable).
5. Leaks: the originals are split 80/20 into train/test and every planted copy goes to the
   split its source is not in, so every planted pair is a leak; ``find_verified_leaks``
   and ``duplicates.find_leaks`` are scored on them.

Unplanted near duplicates that MNIST or Fashion-MNIST already hold count as false
positives here, which can only understate precision.

    .venv/bin/python benchmarks/bench_duplicates.py                      # 3,000 + 60 per set
    .venv/bin/python benchmarks/bench_duplicates.py --size 10000 --planted 200
    .venv/bin/python benchmarks/bench_duplicates.py --embed-only mnist --threads 1 &   # embed in parallel

Embeddings are cached per batch under ``$CURATION_CACHE_DIR/bench/duplicates``, so a rerun
(or a changed feature) costs seconds; the first run embeds about 3,900 images per set
(roughly 5 to 15 minutes per set on 2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = {
    "mnist": ROOT.parent / "shared" / "datasets" / "mnist-test" / "t10k-images-idx3-ubyte.gz",
    "fashion": ROOT.parent / "shared" / "datasets" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz",
}
MODEL = "efficientnet-lite0-imagenet"
GRAPH_K = 15  # what curation.analysis builds (DEFAULT_NEIGHBORS)
OLD_THRESHOLD = 0.95
BRAIN_THRESHOLD = 0.2  # compute_near_duplicates' default, passed explicitly
PLANT_FAMILIES = ("recrop", "rotate_scale", "paste", "stroke", "tint", "resample", "salt_pepper", "perspective", "combo")
BENCH_VERSION = 1  # bump when planting changes, so cached images are rebuilt

logger = logging.getLogger("bench_duplicates")


# ----------------------------------------------------------------------------------------
# Planting
# ----------------------------------------------------------------------------------------

def plant_edit(image: Image.Image, family: str, rng: np.random.Generator, donor: Image.Image) -> Image.Image:
    """A near duplicate of ``image`` (RGB) by one benchmark family; size kept."""
    width, height = image.size
    fill = tuple(int(v) for v in np.asarray(image)[0, 0])
    if family == "recrop":
        side = rng.uniform(0.72, 0.80)
        left, top = rng.uniform(0, width * (1 - side)), rng.uniform(0, height * (1 - side))
        return image.resize((width, height), Image.Resampling.BILINEAR,
                            box=(left, top, left + width * side, top + height * side))
    if family == "rotate_scale":
        angle = float(rng.choice([-1, 1]) * rng.uniform(8, 13))
        scale = rng.uniform(0.9, 1.1)
        rotated = image.rotate(angle, Image.Resampling.BILINEAR, fillcolor=fill)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        scaled = rotated.resize(size, Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", image.size, fill)
        canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
        return canvas
    if family == "paste":
        scale = rng.uniform(0.70, 0.85)
        small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
        background = Image.eval(donor.filter(ImageFilter.GaussianBlur(2)), lambda v: int(v * 0.4))
        background = background.resize(image.size)
        background.paste(small, (int(rng.integers(0, width - small.width + 1)), int(rng.integers(0, height - small.height + 1))))
        return background
    if family == "stroke":
        return image.filter(ImageFilter.MaxFilter(3) if rng.uniform() < 0.5 else ImageFilter.MinFilter(3))
    if family == "tint":
        dark = tuple(int(v) for v in rng.integers(0, 90, 3))
        light = tuple(int(v) for v in rng.integers(160, 256, 3))
        gamma = rng.uniform(0.6, 1.5)
        gray = Image.eval(ImageOps.grayscale(image), lambda v: int(255 * (v / 255) ** gamma))
        return ImageOps.colorize(gray, black=dark, white=light)
    if family == "resample":
        factor = rng.uniform(0.45, 0.60)
        small = image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        small.resize(image.size, Image.Resampling.BILINEAR).save(buffer, format="WEBP", quality=int(rng.integers(25, 41)))
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    if family == "salt_pepper":
        pixels = np.asarray(image).copy()
        mask = rng.uniform(size=pixels.shape[:2]) < rng.uniform(0.02, 0.05)
        pixels[mask] = rng.choice([0, 255], size=(int(mask.sum()), 1))
        return Image.fromarray(pixels)
    if family == "perspective":
        reach = rng.uniform(0.06, 0.10)
        corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=float)
        moved = corners + rng.uniform(-reach, reach, corners.shape) * [width, height]
        # PIL wants the coefficients that map output corners to input corners.
        matrix = []
        for (x, y), (u, v) in zip(corners, moved):
            matrix.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
            matrix.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        coefficients = np.linalg.solve(np.array(matrix), moved.reshape(-1))
        return image.transform(image.size, Image.Transform.PERSPECTIVE, tuple(coefficients), Image.Resampling.BILINEAR,
                               fillcolor=fill)
    if family == "combo":
        first, second = rng.choice(PLANT_FAMILIES[:-1], size=2, replace=False)
        return plant_edit(plant_edit(image, str(first), rng, donor), str(second), rng, donor)
    raise ValueError(f"unknown plant family {family!r}")


def bench_dir() -> Path:
    from curation.paths import cache_dir

    path = cache_dir() / "bench" / "duplicates"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_set(name: str, size: int, planted: int, seed: int) -> dict:
    """Write originals + planted copies as PNGs (cached); return paths, truth pairs and splits."""
    from curation.idx import read_idx

    source = DATASETS[name]
    if not source.exists():
        raise SystemExit(f"{source} is missing: the benchmark needs ../shared/datasets (see its README)")
    folder = bench_dir() / f"{name}-{size}-{planted}-{seed}-v{BENCH_VERSION}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        data["paths"] = [str(folder / p) for p in data["paths"]]
        return data
    pixels = read_idx(source)[:size]
    rng = np.random.default_rng(seed)
    sources = rng.choice(size, planted, replace=False)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for row, image in enumerate(pixels):
        names.append(f"images/{row:05d}.png")
        Image.fromarray(image).save(folder / names[-1])
    pairs, families = [], []
    for number, row in enumerate(sources):
        family = PLANT_FAMILIES[number % len(PLANT_FAMILIES)]
        donor = Image.fromarray(pixels[int(rng.integers(size))]).convert("RGB")
        copy = plant_edit(Image.fromarray(pixels[row]).convert("RGB"), family, rng, donor)
        names.append(f"images/copy-{number:04d}-{family}.png")
        copy.save(folder / names[-1])
        pairs.append([int(row), size + number])
        families.append(family)
    splits = np.where(rng.uniform(size=size) < 0.8, "train", "test").tolist()
    splits += ["test" if splits[row] == "train" else "train" for row in sources]
    data = {"paths": names, "pairs": pairs, "families": families, "splits": splits, "dataset": name, "size": size,
            "planted": planted, "seed": seed}
    manifest.write_text(json.dumps(data))
    data["paths"] = [str(folder / p) for p in names]
    return data


# ----------------------------------------------------------------------------------------
# Embedding (cached per batch)
# ----------------------------------------------------------------------------------------

class CachingEmbedder:
    """Wraps an Embedder; ``encode_images`` is cached on disk by the batch's bytes."""

    def __init__(self, embedder, folder: Path):
        self.embedder = embedder
        self.spec = embedder.spec
        self.preprocess = embedder.preprocess
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.computed = 0
        self.reused = 0

    def encode_images(self, batch) -> np.ndarray:
        key = hashlib.sha1(batch.numpy().tobytes()).hexdigest()
        target = self.folder / f"{key}.npy"
        if target.exists():
            self.reused += len(batch)
            return np.load(target)
        vectors = self.embedder.encode_images(batch)
        np.save(self.folder / f"{key}.partial.npy", vectors)
        (self.folder / f"{key}.partial.npy").replace(target)
        self.computed += len(batch)
        return vectors


def embed_paths(paths: list[str], embedder: CachingEmbedder, batch_size: int = 64) -> np.ndarray:
    import torch

    from curation.images import load_rgb

    vectors = []
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([embedder.preprocess(load_rgb(p, max_side=512)) for p in paths[start:start + batch_size]])
        vectors.append(embedder.encode_images(batch))
        if (start // batch_size) % 10 == 0:
            logger.info("embedded %d/%d (%.0f s)", start + len(batch), len(paths), time.perf_counter() - started)
    return np.concatenate(vectors)


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------

def pair_key(a, b) -> tuple[int, int]:
    return (int(min(a, b)), int(max(a, b)))


def pair_metrics(flagged: set, truth: set) -> dict:
    hits = len(flagged & truth)
    return {"flagged": len(flagged), "true": hits, "precision": hits / len(flagged) if flagged else None,
            "recall": hits / len(truth) if truth else None}


def grouped_metrics(groups: np.ndarray, truth: set) -> dict:
    """Planted pairs whose two images share a group, and the share of grouped pairs that are planted."""
    together = {pair for pair in truth if groups[pair[0]] >= 0 and groups[pair[0]] == groups[pair[1]]}
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        if group >= 0:
            members.setdefault(int(group), []).append(row)
    grouped_pairs = {pair_key(a, b) for rows in members.values() for i, a in enumerate(rows) for b in rows[i + 1:]}
    return {"pairs_grouped": len(grouped_pairs), "planted_grouped": len(together),
            "group_recall": len(together) / len(truth) if truth else None,
            "group_precision": len(grouped_pairs & truth) / len(grouped_pairs) if grouped_pairs else None}


def ranking_metrics(pairs: pd.DataFrame, column: str, truth: set) -> dict:
    from sklearn.metrics import average_precision_score

    ordered = pairs.sort_values(column, ascending=False, kind="stable")
    is_true = np.array([pair_key(a, b) in truth for a, b in zip(ordered["row_a"], ordered["row_b"])])
    top = int(is_true[: len(truth)].sum())
    # AP over all planted pairs: a planted pair outside the candidates counts as never found.
    found = int(is_true.sum())
    ap = average_precision_score(is_true, ordered[column].to_numpy()) * found / len(truth) if found else 0.0
    return {"in_top_planted": top, "candidates_hold": found, "average_precision": float(ap)}


# ----------------------------------------------------------------------------------------
# Peers
# ----------------------------------------------------------------------------------------

def run_fiftyone_brain(data: dict, embeddings: np.ndarray, truth: set, work: Path) -> dict:
    try:
        import fiftyone as fo
        import fiftyone.brain as fob
    except ImportError as error:
        return {"skipped": f"fiftyone.brain not importable: {error}"}
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=p) for p in data["paths"]])
    ids = dataset.values("id")
    row_of = {sample_id: row for row, sample_id in enumerate(ids)}
    started = time.perf_counter()
    index = fob.compute_near_duplicates(dataset, embeddings=embeddings, threshold=BRAIN_THRESHOLD, progress=False)
    seconds = time.perf_counter() - started
    flagged = set()
    for sample_id, neighbours in index.neighbors_map.items():
        for neighbour_id, _distance in neighbours:
            flagged.add(pair_key(row_of[sample_id], row_of[neighbour_id]))
    dataset.delete()
    return {**pair_metrics(flagged, truth), "threshold (distance)": BRAIN_THRESHOLD, "seconds": round(seconds, 2)}


def run_cleanlab(embeddings: np.ndarray, truth: set) -> dict:
    try:
        from cleanlab import Datalab

        lab = Datalab(data={"row": list(range(len(embeddings)))})
    except ImportError as error:  # Datalab needs Hugging Face `datasets` (cleanlab[datalab])
        return {"skipped": f"cleanlab Datalab not importable: {str(error).split('(raised')[0].strip()}"}
    started = time.perf_counter()
    lab.find_issues(features=embeddings, issue_types={"near_duplicate": {}})
    seconds = time.perf_counter() - started
    sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
    flagged = {pair_key(row, other) for row, others in enumerate(sets) for other in others}
    return {**pair_metrics(flagged, truth), "seconds": round(seconds, 2)}


def start_mongod(work: Path):
    from curation.database import DatabaseUnavailable, start_private_mongod

    try:
        return start_private_mongod(work)
    except DatabaseUnavailable as error:
        logger.warning("no private mongod (%s); FiftyOne Brain is skipped", error)
        return None


# ----------------------------------------------------------------------------------------
# One data set
# ----------------------------------------------------------------------------------------

def evaluate(name: str, args, embedder: CachingEmbedder) -> dict:
    from curation.finders.base import FinderContext
    from curation.finders.calibration import calibrate_threshold
    from curation.finders.duplicates import DuplicateConfig, find_duplicates
    from curation.finders.leakage import find_leaks
    from curation.finders.verification import (DEFAULT_FEATURES, FEATURE_NAMES, candidate_pairs, collect_calibration_pairs,
                                               compute_signatures, find_verified_duplicates, find_verified_leaks,
                                               fit_verifier, verified_pairs)
    from curation.neighbors import compute_neighbors

    data = build_set(name, args.size, args.planted, args.seed)
    paths = data["paths"]
    truth = {pair_key(a, b) for a, b in data["pairs"]}
    timings = {}
    started = time.perf_counter()
    inputs = embedder.embedder.input_config()
    cached = (bench_dir() / f"{name}-{args.size}-{args.planted}-{args.seed}-v{BENCH_VERSION}"
              / f"embeddings-{MODEL}-{inputs['image_size']}-{inputs['crop']}-{int(bool(inputs['flip_tta']))}.npy")
    if cached.exists():
        embeddings = np.load(cached)
    else:
        embeddings = embed_paths(paths, embedder)
        np.save(cached, embeddings)
    timings["embed dataset s"] = time.perf_counter() - started
    started = time.perf_counter()
    graph = compute_neighbors(embeddings, GRAPH_K, method="exact", device="cpu")
    timings["graph s"] = time.perf_counter() - started
    started = time.perf_counter()
    signatures = compute_signatures(paths)
    timings["signatures s"] = time.perf_counter() - started
    context = FinderContext(ids=np.array([f"r{i}" for i in range(len(paths))], dtype=object), embeddings=embeddings,
                            filepaths=np.array(paths, dtype=object), neighbor_indices=graph.indices,
                            neighbor_similarities=graph.similarities,
                            splits=np.array(data["splits"], dtype=object))
    planted_cosine = [float(embeddings[a] @ embeddings[b]) for a, b in data["pairs"]]
    result = {"dataset": name, "images": len(paths), "planted_pairs": len(truth), "k": args.k,
              "planted_cosine": {"min": min(planted_cosine), "median": float(np.median(planted_cosine)),
                                 "max": max(planted_cosine)}}

    started = time.perf_counter()
    pairs = collect_calibration_pairs(paths, embeddings, graph.indices, graph.similarities, embedder,
                                      signatures=signatures, k=args.k, sample_size=args.sample_size,
                                      copies_per_image=args.copies, negative_sample_size=args.negative_sample_size,
                                      seed=args.seed + 1)
    timings["calibration pairs s"] = time.perf_counter() - started
    started = time.perf_counter()
    verifier = fit_verifier(pairs, target_precision=args.target_precision, duplicate_rate=args.duplicate_rate)
    timings["fit s"] = time.perf_counter() - started
    cosine_verifier = fit_verifier(pairs, features=("cosine",), target_precision=args.target_precision,
                                   duplicate_rate=args.duplicate_rate)
    started = time.perf_counter()
    scored = verified_pairs(context, signatures, verifier)
    timings["verified pairs s"] = time.perf_counter() - started
    result["candidate_pairs"] = len(scored)
    result["planted_in_candidates"] = ranking_metrics(scored, "probability", truth)["candidates_hold"]
    result["planted_in_top_k"] = {}
    for k in (1, 3, 5, 10, 15):
        row_a, row_b, _ = candidate_pairs(graph.indices, graph.similarities, k)
        result["planted_in_top_k"][k] = len({pair_key(a, b) for a, b in zip(row_a, row_b)} & truth)

    # --- methods at their operating points
    methods = {}
    old = find_duplicates(context, DuplicateConfig(threshold=OLD_THRESHOLD))
    old_pairs = {pair_key(a, b) for a, b, c in zip(scored["row_a"], scored["row_b"], scored["cosine"]) if c >= OLD_THRESHOLD}
    methods["cosine >= 0.95 (old default)"] = {**pair_metrics(old_pairs, truth),
                                               **grouped_metrics(old.table["near_duplicate_group"].to_numpy(), truth)}
    started = time.perf_counter()
    earlier = calibrate_threshold(paths, embeddings, graph.similarities, embedder, sample_size=100, target_precision=0.95,
                                  seed=args.seed + 1)
    timings["earlier calibration s"] = time.perf_counter() - started
    earlier_result = find_duplicates(context, DuplicateConfig(threshold=earlier.threshold))
    earlier_pairs = {pair_key(a, b) for a, b, c in zip(scored["row_a"], scored["row_b"], scored["cosine"])
                     if c >= earlier.threshold}
    methods[f"cosine, earlier calibration ({earlier.threshold:.3f})"] = {
        **pair_metrics(earlier_pairs, truth), **grouped_metrics(earlier_result.table["near_duplicate_group"].to_numpy(), truth)}
    cosine_scored = scored.assign(probability=cosine_verifier.probability(scored))
    cosine_result = find_verified_duplicates(context, cosine_verifier, signatures, pairs=cosine_scored.sort_values(
        "probability", ascending=False))
    cosine_threshold = float(cosine_scored.loc[cosine_scored["probability"] >= cosine_verifier.threshold, "cosine"].min()) \
        if (cosine_scored["probability"] >= cosine_verifier.threshold).any() else None
    methods["cosine, self-calibrated like the verifier"] = {
        **pair_metrics({pair_key(a, b) for a, b, p in zip(cosine_scored["row_a"], cosine_scored["row_b"],
                                                          cosine_scored["probability"]) if p >= cosine_verifier.threshold}, truth),
        **grouped_metrics(cosine_result.table["near_duplicate_group"].to_numpy(), truth),
        "cosine threshold": cosine_threshold, "calibrated precision": cosine_verifier.precision,
        "calibrated recall": cosine_verifier.recall}
    verified = find_verified_duplicates(context, verifier, signatures, pairs=scored)
    methods["verified (two-stage)"] = {
        **pair_metrics({pair_key(a, b) for a, b, p in zip(scored["row_a"], scored["row_b"], scored["probability"])
                        if p >= verifier.threshold}, truth),
        **grouped_metrics(verified.table["near_duplicate_group"].to_numpy(), truth),
        "threshold": verifier.threshold, "calibrated precision": verifier.precision, "calibrated recall": verifier.recall}
    true_rate = len(truth) / len(paths)
    oracle = fit_verifier(pairs, target_precision=args.target_precision, duplicate_rate=true_rate)
    oracle_scored = scored.assign(probability=oracle.probability(scored))
    oracle_result = find_verified_duplicates(context, oracle, signatures,
                                             pairs=oracle_scored.sort_values("probability", ascending=False))
    methods[f"verified, duplicate_rate = planted rate {true_rate:.3f}"] = {
        **pair_metrics({pair_key(a, b) for a, b, p in zip(oracle_scored["row_a"], oracle_scored["row_b"],
                                                          oracle_scored["probability"]) if p >= oracle.threshold}, truth),
        **grouped_metrics(oracle_result.table["near_duplicate_group"].to_numpy(), truth),
        "threshold": oracle.threshold, "calibrated precision": oracle.precision, "calibrated recall": oracle.recall}
    per_family = {}
    for (a, b), family in zip(data["pairs"], data["families"]):
        hit = scored[(scored["row_a"] == min(a, b)) & (scored["row_b"] == max(a, b))]
        entry = per_family.setdefault(family, {"planted": 0, "verified": 0, "cosine>=0.95": 0})
        entry["planted"] += 1
        entry["verified"] += int(len(hit) > 0 and hit["probability"].iloc[0] >= verifier.threshold)
        entry["cosine>=0.95"] += int(len(hit) > 0 and hit["cosine"].iloc[0] >= OLD_THRESHOLD)
    result["methods"] = methods
    result["verified_by_family"] = per_family
    result["verifier"] = {key: value for key, value in verifier.to_dict().items() if key != "curve"}

    # --- rankings (threshold-free) and feature ablation
    rankings = {"cosine": ranking_metrics(scored, "cosine", truth)}
    ablation = {}
    feature_sets = {"all": DEFAULT_FEATURES, "cosine": ("cosine",), "cosine + margin": ("cosine", "cosine_margin")}
    for feature in FEATURE_NAMES:
        if feature != "cosine":
            feature_sets[f"cosine + {feature}"] = ("cosine", feature)
        feature_sets[f"all - {feature}"] = tuple(f for f in DEFAULT_FEATURES if f != feature)
    feature_sets["embedding + gray + color"] = ("cosine", "cosine_margin", "gray_correlation", "color_correlation")
    feature_sets["embedding + correlations"] = ("cosine", "cosine_margin", "gray_correlation", "color_correlation",
                                                "coarse_correlation")
    feature_sets["embedding + hashes"] = ("cosine", "cosine_margin", "phash_similarity", "dhash_similarity")
    for label, features in feature_sets.items():
        fitted = fit_verifier(pairs, features=features, target_precision=args.target_precision,
                              duplicate_rate=args.duplicate_rate)
        probability = fitted.probability(scored)
        ranked = scored.assign(probability=probability)
        flagged = {pair_key(a, b) for a, b, p in zip(ranked["row_a"], ranked["row_b"], probability) if p >= fitted.threshold}
        ablation[label] = {**ranking_metrics(ranked, "probability", truth), **pair_metrics(flagged, truth),
                           "calibrated recall": fitted.recall}
    result["rankings"] = rankings
    result["ablation"] = ablation

    # --- leaks
    leaks = {}
    old_leaks = find_leaks(context, DuplicateConfig(threshold=OLD_THRESHOLD))
    verified_leaks = find_verified_leaks(context, verifier, signatures, pairs=scored)
    for label, table in (("cosine >= 0.95 (old default)", old_leaks.table), ("verified (two-stage)", verified_leaks.table)):
        row_of = {sample_id: row for row, sample_id in enumerate(context.ids)}
        flagged = {pair_key(row_of[i], row_of[j]) for i, j in table.loc[table["is_issue"], "leak_id"].items()}
        leaks[label] = pair_metrics(flagged, truth)
    result["leaks"] = leaks

    # --- peers
    peers = {}
    if args.skip_peers:
        peers["skipped"] = "--skip-peers"
    else:
        peers["fiftyone_brain compute_near_duplicates (default threshold)"] = (
            run_fiftyone_brain(data, embeddings, truth, bench_dir()) if os.environ.get("FIFTYONE_DATABASE_URI")
            else {"skipped": "no private mongod"})
        peers["cleanlab Datalab near_duplicate"] = run_cleanlab(embeddings, truth)
    result["peers"] = peers
    result["seconds"] = {key: round(value, 2) for key, value in timings.items()}
    result["embeddings_computed"] = embedder.computed
    return result


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def print_report(result: dict) -> None:
    print(f"\n=== {result['dataset']}: {result['images']} images, {result['planted_pairs']} planted pairs, "
          f"{result['candidate_pairs']} candidate pairs at k={result['k']} (hold {result['planted_in_candidates']} planted); "
          f"planted cosine {result['planted_cosine']['min']:.3f}..{result['planted_cosine']['max']:.3f} "
          f"(median {result['planted_cosine']['median']:.3f})")
    print(f"{'method':48s} {'flagged':>8s} {'true':>5s} {'prec':>6s} {'recall':>6s} {'grouped':>8s} {'g.prec':>6s}")
    for label, entry in result["methods"].items():
        print(f"{label:48s} {entry['flagged']:8d} {entry['true']:5d} {fmt(entry['precision']):>6s} "
              f"{fmt(entry['recall']):>6s} {entry['planted_grouped']:8d} {fmt(entry['group_precision']):>6s}")
    print(f"verifier: {result['verifier']['threshold']:.3f} (calibrated precision {result['verifier']['precision']:.3f}, "
          f"recall {result['verifier']['recall']:.3f}), set aside {result['verifier']['set_aside_negatives']} negatives")
    print("verified per planted family:", {k: f"{v['verified']}/{v['planted']}" for k, v in result["verified_by_family"].items()})
    print(f"\n{'features':40s} {'top-P':>6s} {'AP':>6s} {'flagged':>8s} {'true':>5s} {'prec':>6s} {'recall':>6s} {'cal.rec':>7s}")
    for label, entry in result["ablation"].items():
        print(f"{label:40s} {entry['in_top_planted']:6d} {entry['average_precision']:6.3f} {entry['flagged']:8d} "
              f"{entry['true']:5d} {fmt(entry['precision']):>6s} {fmt(entry['recall']):>6s} {entry['calibrated recall']:7.3f}")
    print("\nleaks:")
    for label, entry in result["leaks"].items():
        print(f"  {label:40s} flagged {entry['flagged']}, true {entry['true']}, precision {fmt(entry['precision'])}, "
              f"recall {fmt(entry['recall'])}")
    print("peers:")
    for label, entry in result["peers"].items():
        print(f"  {label}: {entry}")
    print("seconds:", result["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="mnist,fashion")
    parser.add_argument("--size", type=int, default=3000, help="original images per set (10000 = the whole test set)")
    parser.add_argument("--planted", type=int, default=60, help="near duplicates planted per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="candidate neighbours per sample")
    parser.add_argument("--sample-size", type=int, default=200)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--negative-sample-size", type=int, default=5000)
    parser.add_argument("--target-precision", type=float, default=0.9)
    parser.add_argument("--duplicate-rate", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--embed-only", choices=("mnist", "fashion"), help="only build and embed this set (to run sets in parallel)")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench_duplicates.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import torch

    from curation.models import load_embedder

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    from curation.models import auto_image_size

    loaded = load_embedder(MODEL, device="cpu", allow_fallback=False)
    # The input size `curation embed` chooses for these 28 px images (models.auto_image_size).
    loaded = loaded.with_input(image_size=auto_image_size(loaded.native_size, 28))
    embedder = CachingEmbedder(loaded, bench_dir() / "vectors")
    if args.embed_only:
        data = build_set(args.embed_only, args.size, args.planted, args.seed)
        embed_paths(data["paths"], embedder)
        return 0

    mongod = None
    work = Path(tempfile.mkdtemp(prefix="bench-duplicates-"))
    if not args.skip_peers:
        os.environ.pop("FIFTYONE_DATABASE_URI", None)
        mongod = start_mongod(work)
    results = {"settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
               "model": MODEL, "model_input": embedder.embedder.input_config(), "graph_k": GRAPH_K, "machine": platform.platform(), "cpus": os.cpu_count(),
               "load_average_start": os.getloadavg(), "datasets": {}}
    try:
        for name in args.datasets.split(","):
            results["datasets"][name] = evaluate(name, args, embedder)
            print_report(results["datasets"][name])
    finally:
        if mongod is not None:
            from curation.database import stop_private_mongod

            stop_private_mongod(mongod)
    results["load_average_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
