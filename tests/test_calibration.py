"""Near-duplicate threshold calibration."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curation.finders.calibration import (TRANSFORMS, calibrate_threshold, choose_threshold,
                                          precision_recall_curve, transformed_copies)
from finder_helpers import brute_force_graph


def test_curve_counts_pairs_at_each_threshold():
    positives = np.array([0.99, 0.97, 0.90, 0.80])
    negatives = np.array([0.95, 0.85])
    curve = precision_recall_curve(positives, negatives, thresholds=np.array([0.8, 0.9, 0.96, 1.0]))
    assert curve["recall"].tolist() == [1.0, 0.75, 0.5, 0.0]
    assert curve["precision"].tolist() == pytest.approx([4 / 6, 3 / 4, 1.0, 1.0])


def test_choose_threshold_takes_the_lowest_that_reaches_the_target():
    curve = precision_recall_curve(np.array([0.99, 0.97, 0.90, 0.80]), np.array([0.95, 0.85]),
                                   thresholds=np.array([0.8, 0.9, 0.96, 1.0]))
    assert choose_threshold(curve, 0.95)["threshold"] == 0.96
    assert choose_threshold(curve, 0.7)["threshold"] == 0.9


def test_transformed_copies_keep_size_and_mode():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    copies = transformed_copies(image)
    assert list(copies) == list(TRANSFORMS)
    assert all(copy.size == image.size and copy.mode == "RGB" for copy in copies.values())
    assert np.array_equal(np.asarray(copies["flip"])[:, ::-1], np.asarray(image))


def test_calibration_on_real_images_finds_transformed_copies(small_class_tree, offline_embedder):
    import torch

    paths = sorted(str(p) for p in small_class_tree.rglob("*.png"))
    batch = torch.stack([offline_embedder.preprocess(Image.open(p).convert("RGB")) for p in paths])
    embeddings = offline_embedder.encode_images(batch)
    _, similarities = brute_force_graph(embeddings, k=5)
    result = calibrate_threshold(paths, embeddings, similarities, offline_embedder, sample_size=15, target_precision=0.9)
    assert result.sample_size == 15
    assert 0.5 <= result.threshold <= 1.0
    assert result.precision >= 0.9
    # Real semantics: most edited copies are closer to their original than any other image is.
    assert result.recall >= 0.5, result.recall_by_transform
    assert set(result.recall_by_transform) == set(TRANSFORMS)
    assert result.curve["recall"].is_monotonic_decreasing
    assert result.to_dict()["curve"]["threshold"][0] == 0.5
