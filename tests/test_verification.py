"""Two-stage near duplicates: signatures, pair features, self-calibration, verified finders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from curation.finders.base import FinderInputError
from curation.finders.duplicates import pixel_digest
from curation.finders.verification import (CALIBRATION_EDITS, FEATURE_NAMES, SIGNATURE_DTYPE, VerifierCalibration,
                                           calibrate_verifier, calibration_edit, candidate_pairs, compute_signatures,
                                           find_verified_duplicates, find_verified_leaks, fit_verifier, image_signature,
                                           pair_features, verified_pairs)
from finder_helpers import make_context


def _features(image_a: Image.Image, image_b: Image.Image) -> pd.Series:
    a, b = image_signature(image_a), image_signature(image_b)
    one = np.ones(1, dtype=np.float32)
    return pair_features(a[None], b[None], one, 0 * one, 0 * one).iloc[0]


@pytest.fixture(scope="module")
def demo_images(small_class_tree) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(small_class_tree.rglob("*.png"))]


# --- signatures and features ---------------------------------------------------------

def test_signatures_carry_the_pixel_digest_and_mark_unreadable_files(small_class_tree, tmp_path):
    paths = sorted(str(p) for p in small_class_tree.rglob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    signatures = compute_signatures(paths + [str(broken)], workers=2)
    assert signatures.dtype == SIGNATURE_DTYPE and signatures.shape == (4,)
    assert signatures["valid"].tolist() == [True, True, True, False]
    assert [d.decode() for d in signatures["pixel_digest"][:3]] == [pixel_digest(p) for p in paths]


def test_mirror_image_is_as_similar_as_itself(demo_images):
    # Pick an asymmetric image so the mirror really differs.
    image = max(demo_images, key=lambda im: np.abs(np.asarray(im, float) - np.asarray(ImageOps.mirror(im), float)).mean())
    mirrored = _features(image, ImageOps.mirror(image))
    unrelated = _features(image, demo_images[-1])
    assert mirrored["gray_correlation"] > np.arctanh(0.98)
    assert mirrored["phash_similarity"] == 1.0 and mirrored["dhash_similarity"] == 1.0
    assert unrelated["gray_correlation"] < mirrored["gray_correlation"] - 0.5


def test_shifted_crop_correlates_more_than_an_unrelated_image_of_the_class(demo_images):
    image, same_class = demo_images[0], demo_images[1]  # the tree holds 6 per class, sorted by class
    width, height = image.size
    crop = image.resize(image.size, Image.Resampling.BICUBIC, box=(3, 1, width - 1, height - 3))
    assert _features(image, crop)["gray_correlation"] > _features(image, same_class)["gray_correlation"]
    assert _features(image, crop)["coarse_correlation"] > np.arctanh(0.9)


def test_pairs_with_an_undecodable_image_are_never_verifiable(demo_images):
    good = image_signature(demo_images[0])
    bad = np.zeros((), dtype=SIGNATURE_DTYPE)
    one = np.ones(1, dtype=np.float32)
    frame = pair_features(good[None], bad[None], one, 0 * one, 0 * one)
    assert not frame["verifiable"].iloc[0]
    assert (frame[list(FEATURE_NAMES[2:])].to_numpy() == 0).all()


def test_calibration_edits_keep_size_and_mode(demo_images):
    rng = np.random.default_rng(0)
    for name in CALIBRATION_EDITS:
        for strength in (0.0, 1.0):
            edited = calibration_edit(demo_images[0], name, strength, rng)
            assert edited.size == demo_images[0].size and edited.mode == "RGB", name
    with pytest.raises(FinderInputError, match="unknown calibration edit 'sepia'. Available: flip, crop"):
        calibration_edit(demo_images[0], "sepia", 0.5, rng)


def test_candidate_pairs_are_unique_and_ordered():
    indices = np.array([[1, 2], [0, 2], [1, -1]])
    similarities = np.array([[0.9, 0.5], [0.9, 0.7], [0.7, np.nan]], dtype=np.float32)
    row_a, row_b, cosine = candidate_pairs(indices, similarities, 2)
    assert list(zip(row_a.tolist(), row_b.tolist())) == [(0, 1), (0, 2), (1, 2)]
    assert cosine.tolist() == pytest.approx([0.9, 0.5, 0.7])


# --- self-calibration on real images ---------------------------------------------------

def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


PLANTED = {  # source index -> a typical duplicate-making edit (the benchmark measures harder ones)
    0: lambda im: ImageOps.mirror(im.resize(im.size, Image.Resampling.BILINEAR, box=(2, 1, im.width - 1, im.height - 2))),
    7: lambda im: ImageOps.colorize(ImageOps.grayscale(im), black=(30, 0, 60), white=(255, 230, 160)),
    14: lambda im: im.rotate(4, Image.Resampling.BILINEAR),
    21: lambda im: _jpeg(im, 35),
    33: lambda im: ImageOps.autocontrast(im, cutoff=2),
    47: lambda im: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, -1)),
}


@pytest.fixture(scope="module")
def planted(small_class_tree, offline_embedder, tmp_path_factory):
    """The 60 demo images plus 6 edited copies and one byte-identical copy, embedded (at the
    input size `curation embed` picks for 28 px images) and calibrated."""
    import torch

    from curation.models import auto_image_size

    offline_embedder = offline_embedder.with_input(image_size=auto_image_size(offline_embedder.native_size, 28))

    folder = tmp_path_factory.mktemp("planted")
    originals = sorted(small_class_tree.rglob("*.png"))
    paths = []
    for index, path in enumerate(originals):
        paths.append(folder / f"{index:03d}.png")
        shutil.copy(path, paths[-1])
    pairs = []
    for source, edit in PLANTED.items():
        paths.append(folder / f"copy-{source:03d}.png")
        edit(Image.open(originals[source]).convert("RGB")).save(paths[-1])
        pairs.append((source, len(paths) - 1))
    paths.append(folder / "exact-copy-of-005.png")
    shutil.copy(originals[5], paths[-1])
    paths = [str(p) for p in paths]
    batch = torch.stack([offline_embedder.preprocess(Image.open(p).convert("RGB")) for p in paths])
    embeddings = offline_embedder.encode_images(batch)
    splits = ["train" if i % 2 else "test" for i in range(len(originals))]
    splits += ["train" if splits[source] == "test" else "test" for source in PLANTED] + ["train"]
    context = make_context(embeddings, filepaths=paths, splits=splits, k=10)
    signatures = compute_signatures(paths)
    verifier = calibrate_verifier(paths, context.embeddings, context.neighbor_indices, context.neighbor_similarities,
                                  offline_embedder, signatures=signatures, k=5, sample_size=30, copies_per_image=3,
                                  negative_sample_size=67, duplicate_rate=0.05, target_precision=0.9, seed=0)
    return {"context": context, "signatures": signatures, "verifier": verifier, "pairs": pairs, "exact": (5, len(paths) - 1)}


def test_calibration_curve_and_operating_point(planted):
    verifier = planted["verifier"]
    assert verifier.positive_pairs == 90 and verifier.sample_size == 30
    assert 0 < verifier.threshold <= 1 and verifier.precision >= 0.9
    assert verifier.recall >= 0.3, verifier.recall_by_edit
    curve = verifier.curve
    assert list(curve.columns) == ["threshold", "precision", "recall", "false_positive_rate"]
    assert curve["threshold"].is_monotonic_increasing and curve["recall"].is_monotonic_decreasing
    assert set(verifier.recall_by_edit) <= set(CALIBRATION_EDITS)


def test_planted_copies_are_verified_and_grouped(planted):
    context, verifier = planted["context"], planted["verifier"]
    result = find_verified_duplicates(context, verifier, planted["signatures"])
    table = result.table
    groups = table["near_duplicate_group"].to_numpy()
    together = [(a, b) for a, b in planted["pairs"] if groups[a] >= 0 and groups[a] == groups[b]]
    assert len(together) >= 4, (together, result.summary)
    for a, b in together:
        assert table["duplicate_probability"].iloc[b] >= verifier.threshold
        assert table["is_issue"].iloc[a] != table["is_issue"].iloc[b]  # one of the pair is kept
    assert {"score", "is_issue", "near_duplicate_group", "exact_duplicate_group", "keep", "nearest_neighbor_id",
            "nearest_neighbor_similarity", "duplicate_probability"} <= set(table.columns)
    a, b = planted["exact"]
    assert table["exact_duplicate_group"].iloc[a] == table["exact_duplicate_group"].iloc[b] >= 0
    assert table["score"].iloc[a] == 1.0


def test_unrelated_nearest_neighbours_are_not_verified(planted):
    context, verifier = planted["context"], planted["verifier"]
    pairs = verified_pairs(context, planted["signatures"], verifier)
    planted_rows = {row for pair in planted["pairs"] for row in pair} | set(planted["exact"])
    unrelated = pairs[~pairs["row_a"].isin(planted_rows) & ~pairs["row_b"].isin(planted_rows)]
    assert len(unrelated) > 100
    # The demo images hold no duplicates: at most one of their candidate pairs may pass.
    assert (unrelated["probability"] >= verifier.threshold).sum() <= 1
    # The planted copies outrank the unrelated pairs, though some of those are as close in
    # cosine as the planted copies: the image features decide. (With 30 calibration images one
    # copy, mirrored and re-cropped, may land just below the single most similar unrelated pair.)
    planted_probability = [pairs.loc[(pairs["row_a"] == a) & (pairs["row_b"] == b), "probability"].max()
                           for a, b in planted["pairs"]]
    assert sum(p > unrelated["probability"].max() for p in planted_probability) >= len(planted_probability) - 1
    assert min(planted_probability) > np.quantile(unrelated["probability"], 0.99)
    planted_cosine = min(pairs.loc[(pairs["row_a"] == a) & (pairs["row_b"] == b), "cosine"].iloc[0]
                         for a, b in planted["pairs"] if ((pairs["row_a"] == a) & (pairs["row_b"] == b)).any())
    assert (unrelated["cosine"] >= planted_cosine).any()


def test_planted_copies_across_splits_are_verified_leaks(planted):
    context = planted["context"]
    result = find_verified_leaks(context, planted["verifier"], planted["signatures"])
    row_of = {sample_id: row for row, sample_id in enumerate(context.ids)}
    flagged = result.table[result.table["is_issue"]]
    leaked = {tuple(sorted((row_of[sample_id], row_of[leak]))) for sample_id, leak in flagged["leak_id"].items()}
    assert len(leaked & set(planted["pairs"])) >= 4, result.summary
    assert len(leaked - set(planted["pairs"]) - {planted["exact"]}) <= 1
    assert ((result.table["score"] == 0) | result.table["is_issue"]).all()


def test_verifier_round_trips_through_json(planted):
    verifier = planted["verifier"]
    restored = VerifierCalibration.from_dict(json.loads(json.dumps(verifier.to_dict())))
    pairs = verified_pairs(planted["context"], planted["signatures"], verifier)
    assert np.allclose(restored.probability(pairs), pairs["probability"])
    assert restored.threshold == verifier.threshold and restored.features == verifier.features
    pd.testing.assert_frame_equal(restored.curve, verifier.curve, check_dtype=False)
    from_dict = find_verified_duplicates(planted["context"], verifier.to_dict(), planted["signatures"])
    assert from_dict.table["near_duplicate_group"].tolist() == \
        find_verified_duplicates(planted["context"], verifier, planted["signatures"]).table["near_duplicate_group"].tolist()


# --- grouping and validation (no model needed) ----------------------------------------

def _toy_verifier(threshold: float = 0.5) -> VerifierCalibration:
    curve = pd.DataFrame({"threshold": [threshold], "precision": [1.0], "recall": [1.0], "false_positive_rate": [0.0]})
    return VerifierCalibration(features=("cosine",), mean=[0.0], scale=[1.0], coefficients=[1.0], intercept=0.0,
                               threshold=threshold, precision=1.0, recall=1.0, target_precision=0.9,
                               duplicate_rate=0.005, k=2, dataset_size=4, candidate_pairs=3, sample_size=1,
                               copies_per_image=1, positive_pairs=1, negative_pairs=1, set_aside_negatives=0, curve=curve)


def test_chains_of_verified_pairs_do_not_merge_unrelated_ends():
    context = make_context(np.eye(4) + 0.1, k=2)
    signatures = np.zeros(4, dtype=SIGNATURE_DTYPE)
    chain = pd.DataFrame({"row_a": [0, 1, 2, 0], "row_b": [1, 2, 3, 3], "cosine": [0.9] * 4,
                          "probability": [0.99, 0.98, 0.97, 0.01]})
    result = find_verified_duplicates(context, _toy_verifier(), signatures, pairs=chain, pixel_digests=[None] * 4)
    groups = result.table["near_duplicate_group"].to_numpy()
    assert groups[0] >= 0 and groups[0] != groups[3]
    assert result.table["duplicate_probability"].tolist() == pytest.approx([0.99, 0.99, 0.98, 0.97])


def test_input_validation_messages(planted):
    context, verifier, signatures = planted["context"], planted["verifier"], planted["signatures"]
    with pytest.raises(FinderInputError, match=r"signatures: expected the array compute_signatures returns .* got list"):
        verified_pairs(context, list(signatures), verifier)
    with pytest.raises(FinderInputError, match=r"signatures: expected one per sample, shape \(67,\), got shape \(66,\)"):
        verified_pairs(context, signatures[:-1], verifier)
    with pytest.raises(FinderInputError, match=r"k: expected 1 to 10 \(the graph's neighbours per sample\), got 11"):
        verified_pairs(context, signatures, verifier, k=11)
    with pytest.raises(FinderInputError, match="expected a FinderContext or a \\(neighbor_indices, neighbor_similarities\\)"):
        verified_pairs("graph", signatures, verifier)
    with pytest.raises(FinderInputError, match=r"threshold: expected a verified probability in \(0, 1\], got 1.5"):
        find_verified_duplicates(context, verifier, signatures, threshold=1.5)
    with pytest.raises(FinderInputError, match="verifier: expected a VerifierCalibration or its to_dict\\(\\), got str"):
        find_verified_duplicates(context, "calibrated", signatures)
    with pytest.raises(FinderInputError, match=r"verifier: stored calibration lacks \['threshold'\]; recalibrate"):
        VerifierCalibration.from_dict({k: v for k, v in verifier.to_dict().items() if k != "threshold"})
    with pytest.raises(FinderInputError, match="leakage needs splits"):
        find_verified_leaks(make_context(np.eye(3), k=2), verifier, np.zeros(3, dtype=SIGNATURE_DTYPE))


def test_fit_verifier_validation_messages():
    from curation.finders.verification import CalibrationPairs

    frame = pd.DataFrame({name: [0.0, 1.0] for name in FEATURE_NAMES})
    frame = frame.assign(label=[True, True], kind="copy", group=[0, 1], edits="flip")
    pairs = CalibrationPairs(pairs=frame, dataset_size=2, candidate_pairs=1, k=1, sample_size=2, copies_per_image=1)
    with pytest.raises(FinderInputError, match=r"features: expected a non-empty subset of \[.*\], got \['sharpness'\]"):
        fit_verifier(pairs, features=("sharpness",))
    with pytest.raises(FinderInputError, match=r"target_precision: expected a value in \(0, 1\), got 1.0"):
        fit_verifier(pairs, target_precision=1.0)
    with pytest.raises(FinderInputError, match=r"duplicate_rate: expected duplicate pairs per image in \(0, 0.5\] or 'auto', got 0"):
        fit_verifier(pairs, duplicate_rate=0)
    with pytest.raises(FinderInputError, match=r"or 'auto', got 'often'"):
        fit_verifier(pairs, duplicate_rate="often")
    with pytest.raises(FinderInputError, match="calibration pairs: expected positives and negatives, got 2 and 0"):
        fit_verifier(pairs)


def test_graph_validation_for_calibration(planted, offline_embedder):
    context = planted["context"]
    with pytest.raises(FinderInputError, match=r"embeddings: expected \(67, D\) for 67 filepaths, got shape \(66, 1280\)"):
        calibrate_verifier(list(context.filepaths), context.embeddings[:-1], context.neighbor_indices,
                           context.neighbor_similarities, offline_embedder)
    with pytest.raises(FinderInputError, match="sample_size: expected at least 1, got 0"):
        calibrate_verifier(list(context.filepaths), context.embeddings, context.neighbor_indices,
                           context.neighbor_similarities, offline_embedder, signatures=planted["signatures"], sample_size=0)



def test_duplicate_share_is_estimated_from_the_likelihood_ratios():
    from curation.finders.verification import estimate_duplicate_share

    rng = np.random.default_rng(0)
    # 50 of 1,000 candidate pairs are duplicates (log ratio about +8), the rest are not (about -6).
    ratios = np.concatenate([rng.normal(8, 1, 50), rng.normal(-6, 1, 950)])
    assert estimate_duplicate_share(ratios, floor=0.0005) == pytest.approx(0.05, abs=0.005)
    # No duplicates at all: the estimate stops at the floor (half a pair in the dataset).
    assert estimate_duplicate_share(rng.normal(-8, 1, 1000), floor=0.0005) == 0.0005
    assert estimate_duplicate_share(np.array([]), floor=0.001) == 0.001
    assert estimate_duplicate_share(np.full(100, 20.0), floor=0.001, ceiling=0.2) == 0.2
