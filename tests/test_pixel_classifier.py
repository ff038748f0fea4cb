"""The pixel model: a small CNN compared per fold with the frozen-feature classifier."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curation.finders import pixel_classifier
from curation.finders.base import FinderInputError
from curation.finders.classifier import compute_out_of_fold_predictions
from curation.finders.pixel_classifier import PixelImages, as_pixel_images, load_pixels, plan, small_images_side
from finder_helpers import make_context

pytest.importorskip("torch")

COUNT = 400
SIDE = 12
TRAINING = ("WIDTHS", "TARGET_STEPS", "MIN_EPOCHS", "MAX_EPOCHS", "BATCH_SIZE")
PRODUCT_TRAINING = {name: getattr(pixel_classifier, name) for name in TRAINING}  # before the fixture narrows them


@pytest.fixture(autouse=True)
def small_network(monkeypatch):
    """A narrow network and few steps: the tests check the plumbing, not the accuracy."""
    monkeypatch.setattr(pixel_classifier, "WIDTHS", (8, 16, 16))
    monkeypatch.setattr(pixel_classifier, "TARGET_STEPS", 40)
    monkeypatch.setattr(pixel_classifier, "MIN_EPOCHS", 4)
    monkeypatch.setattr(pixel_classifier, "MAX_EPOCHS", 8)
    monkeypatch.setattr(pixel_classifier, "BATCH_SIZE", 32)


def quadrant_images(count: int = COUNT, seed: int = 0):
    """Four classes: a bright 4x4 square in quadrant k of a noisy 12x12 grey image."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(4), count // 4)
    images = rng.integers(0, 60, size=(count, SIDE, SIDE)).astype(np.uint8)
    for row, value in enumerate(truth):
        top, left = 1 + 6 * (value // 2) + rng.integers(0, 2), 1 + 6 * (value % 2) + rng.integers(0, 2)
        images[row, top:top + 4, left:left + 4] = 230
    return images, np.array([f"c{value}" for value in truth], dtype=object), truth


def noise_embeddings(count: int = COUNT, seed: int = 1):
    return np.random.default_rng(seed).normal(size=(count, 8)) + 0.1


def perfect_embeddings(truth: np.ndarray, seed: int = 2):
    rng = np.random.default_rng(seed)
    return np.eye(8)[truth] * 4 + 0.05 * rng.normal(size=(len(truth), 8)) + 0.1


def accuracy(result, labels) -> float:
    given = np.array([result.classes.index(str(value)) for value in labels])
    return float((result.pred_probs.argmax(axis=1) == given).mean())


# ---------------------------------------------------------------------------------------
# The choice
# ---------------------------------------------------------------------------------------

def test_the_cnn_is_chosen_when_the_pixels_carry_the_class_and_the_run_is_deterministic():
    images, labels, _ = quadrant_images()
    vectors = noise_embeddings()
    first = compute_out_of_fold_predictions(vectors, labels, pixels=images)
    info = first.info["pixel_model"]
    assert info["used"] and info["pixel_model_won"]
    assert sum(choice != "embedding" for choice in info["chosen_per_fold"]) >= 4
    assert accuracy(first, labels) > 0.9
    alone = compute_out_of_fold_predictions(vectors, labels)
    assert accuracy(alone, labels) < 0.4  # the embeddings are noise
    # What the run records: per fold the choice, the inner losses of every option, the time.
    assert len(info["folds"]) == len(info["chosen_per_fold"]) == len(info["cnn_weight_per_fold"]) == 5
    for fold in info["folds"]:
        assert {"embedding", "cnn"} <= set(fold["inner_log_loss"]) and fold["train_seconds"] >= 0
        assert fold["inner_log_loss"][fold["chosen"]] == min(fold["inner_log_loss"].values())
    assert info["mean_inner_log_loss"]["cnn"] < info["mean_inner_log_loss"]["embedding"]
    assert info["seconds"] > 0 and info["estimated_seconds"] > 0 and info["side"] == SIDE and info["channels"] == 1
    assert "CNN" in first.info["model"]
    # Same seed, same result; another seed trains other networks.
    again = compute_out_of_fold_predictions(vectors, labels, pixels=images)
    np.testing.assert_array_equal(again.pred_probs, first.pred_probs)
    assert again.info["pixel_model"]["chosen_per_fold"] == info["chosen_per_fold"]


def test_the_embedding_model_is_kept_when_it_is_perfect_and_the_pixels_are_noise():
    _, labels, truth = quadrant_images(seed=3)
    noise = np.random.default_rng(4).integers(0, 256, size=(COUNT, SIDE, SIDE)).astype(np.uint8)
    vectors = perfect_embeddings(truth)
    result = compute_out_of_fold_predictions(vectors, labels, pixels=noise)
    assert result.info["pixel_model"]["chosen_per_fold"] == ["embedding"] * 5
    assert result.info["pixel_model"]["pixel_model_won"] is False
    # Where the embedding model wins, its prediction is returned untouched.
    alone = compute_out_of_fold_predictions(vectors, labels)
    np.testing.assert_array_equal(result.pred_probs, alone.pred_probs)


def test_forcing_the_cnn_uses_it_in_every_fold():
    _, labels, truth = quadrant_images(count=240, seed=5)
    noise = np.random.default_rng(6).integers(0, 256, size=(240, SIDE, SIDE)).astype(np.uint8)
    result = compute_out_of_fold_predictions(perfect_embeddings(truth), labels, pixels=noise, pixel_model="cnn")
    assert result.info["pixel_model"]["chosen_per_fold"] == ["cnn"] * 5
    assert result.info["pixel_model"]["mode"] == "cnn"


def test_without_pixels_or_with_the_model_off_the_result_is_the_embedding_model():
    images, labels, _ = quadrant_images(count=240, seed=7)
    vectors = noise_embeddings(240)
    before = compute_out_of_fold_predictions(vectors, labels)
    off = compute_out_of_fold_predictions(vectors, labels, pixels=images, pixel_model="off")
    np.testing.assert_array_equal(off.pred_probs, before.pred_probs)
    np.testing.assert_array_equal(off.unlabelled_probs, before.unlabelled_probs)
    assert before.info["pixel_model"] == {"used": False, "reason": "no pixels given"}
    assert off.info["pixel_model"]["used"] is False and "off" in off.info["pixel_model"]["reason"]
    fixed = compute_out_of_fold_predictions(vectors, labels, C=0.1, dimensions=4, pixels=images)
    assert "explicit C and dimensions" in fixed.info["pixel_model"]["reason"]


def test_no_cnn_trains_on_the_fold_it_scores(monkeypatch):
    images, labels, _ = quadrant_images(count=240, seed=8)
    calls = []
    original = pixel_classifier.train_and_predict

    def spy(images_, y, train_rows, predict_rows, n_classes, **kwargs):
        calls.append((set(train_rows.tolist()), [set(rows.tolist()) for rows in predict_rows]))
        return original(images_, y, train_rows, predict_rows, n_classes, **kwargs)

    monkeypatch.setattr(pixel_classifier, "train_and_predict", spy)
    result = compute_out_of_fold_predictions(noise_embeddings(240), labels, pixels=images, pixel_model="cnn")
    assert len(calls) == 5
    for train, (inner, outer, unlabelled) in calls:
        assert not train & inner and not train & outer and not unlabelled
    assert set().union(*(outer for _, (_, outer, _) in calls)) == set(range(240))
    assert result.checkable.all()


def test_unlabelled_samples_get_the_cnn_when_it_won():
    images, labels, truth = quadrant_images(seed=9)
    labels = labels.copy()
    labels[::10] = None
    result = compute_out_of_fold_predictions(noise_embeddings(), labels, pixels=images)
    assert result.info["pixel_model"]["pixel_model_won"]
    predicted = np.array(result.classes, dtype=object)[result.unlabelled_probs.argmax(axis=1)]
    assert (predicted == np.array([f"c{value}" for value in truth[::10]], dtype=object)).mean() > 0.9
    np.testing.assert_allclose(result.unlabelled_probs.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------
# Eligibility
# ---------------------------------------------------------------------------------------

def small_set(side: int = SIDE, readable: int = COUNT) -> PixelImages:
    images = as_pixel_images(np.zeros((COUNT, side, side), dtype=np.uint8))
    mask = np.zeros(COUNT, dtype=bool)
    mask[:readable] = True
    return images._replace(readable=mask)


@pytest.mark.parametrize(
    ("images", "cross_validated", "budget", "torch_ok", "reason"),
    [(small_set(), COUNT, 600.0, True, "ok"),
     (small_set(), 250, 600.0, True, "250 cross-validated samples, fewer than the 300"),
     (small_set(side=96), COUNT, 600.0, True, "images of 96 px, over the 64 px"),
     (small_set(readable=200), COUNT, 600.0, True, "only 200 of 400 images readable"),
     (small_set(), COUNT, 1e-6, True, "over budget: the CNN would take about"),
     (small_set(), COUNT, 600.0, False, "torch is not importable")],
    ids=["ok", "few", "large", "unreadable", "budget", "torch"],
)
def test_eligibility(monkeypatch, images, cross_validated, budget, torch_ok, reason):
    monkeypatch.setattr(pixel_classifier, "torch_available", lambda: torch_ok)
    use, why, _, _ = plan(images, COUNT, cross_validated, [240] * 5, [160] * 5, pixel_model="auto", budget=budget)
    assert use == (reason == "ok") and why.startswith(reason)


def test_over_budget_is_skipped_and_recorded():
    images, labels, _ = quadrant_images(count=300, seed=10)
    vectors = noise_embeddings(300)
    result = compute_out_of_fold_predictions(vectors, labels, pixels=images, pixel_budget=1e-6)
    assert result.info["pixel_model"]["used"] is False
    assert result.info["pixel_model"]["reason"].startswith("over budget")
    np.testing.assert_array_equal(result.pred_probs, compute_out_of_fold_predictions(vectors, labels).pred_probs)


def test_the_cost_estimate_grows_with_images_side_and_channels(monkeypatch):
    for name, value in PRODUCT_TRAINING.items():
        monkeypatch.setattr(pixel_classifier, name, value)
    base = pixel_classifier.estimated_seconds([6000] * 5, [4000] * 5, 28, 1)
    assert 100 < base < 2000  # MNIST-sized: minutes, as measured on 2 shared cores
    # A fixed number of steps: more images, fewer epochs, down to MIN_EPOCHS.
    assert pixel_classifier.estimated_seconds([12000] * 5, [4000] * 5, 28, 1) < 1.2 * base
    assert pixel_classifier.estimated_seconds([60000] * 5, [4000] * 5, 28, 1) > 2 * base
    assert pixel_classifier.estimated_seconds([6000] * 5, [4000] * 5, 64, 3) > 4 * base
    assert pixel_classifier.estimated_seconds([6000] * 5, [4000] * 5, 28, 1, device="cuda") < base / 10


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"pixel_model": "always"}, "pixel_model: expected one of auto, off, cnn, got 'always'"),
     ({"pixel_model": "cnn"}, "pixel_model: 'cnn' needs the images: pixels is None"),
     ({"pixels": np.zeros((5, 4, 6))}, "pixels: expected an array of shape"),
     ({"pixels": np.zeros((5, 4, 4))}, "pixels: expected 40 images to match the embeddings, got 5"),
     ({"pixel_budget": -1}, "pixel_budget: expected a positive number")],
    ids=["word", "cnn-without-pixels", "shape", "count", "budget"],
)
def test_malformed_pixel_settings_are_refused(settings, message):
    vectors = noise_embeddings(40)
    labels = np.array(["a", "b"] * 20, dtype=object)
    with pytest.raises(FinderInputError, match=message):
        compute_out_of_fold_predictions(vectors, labels, **settings)


# ---------------------------------------------------------------------------------------
# Loading images, and the finders' context
# ---------------------------------------------------------------------------------------

def write_images(folder, images, *, rgb_rows=(), broken_rows=(), large_rows=()):
    paths = []
    for row, image in enumerate(images):
        path = folder / f"{row:04d}.png"
        if row in broken_rows:
            path.write_bytes(b"not a png")
        elif row in large_rows:
            Image.fromarray(np.kron(image, np.ones((10, 10), dtype=np.uint8))).save(path)
        elif row in rgb_rows:
            Image.fromarray(np.stack([image, image // 2, image], axis=-1)).save(path)
        else:
            Image.fromarray(image).save(path)
        paths.append(str(path))
    return np.array(paths, dtype=object)


def test_load_pixels_keeps_grey_as_one_channel_resizes_and_masks_unreadable(tmp_path):
    images, _, _ = quadrant_images(count=8, seed=11)
    paths = write_images(tmp_path, images, broken_rows={2}, large_rows={5})
    loaded = load_pixels(list(paths) + [None, str(tmp_path / "missing.png")])
    assert loaded.side == SIDE and loaded.channels == 1 and loaded.pixels.shape == (10, SIDE, SIDE, 1)
    assert loaded.readable.tolist() == [True, True, False, True, True, True, True, True, False, False]
    np.testing.assert_array_equal(loaded.pixels[0, ..., 0], images[0])
    assert not loaded.pixels[2].any() and loaded.info["unreadable"] == 3 and loaded.info["resized"] == 1
    assert abs(int(loaded.pixels[5].astype(int).mean()) - int(images[5].mean())) < 5  # shrunk back to 12 px
    (tmp_path / "rgb").mkdir()
    colour = load_pixels(write_images(tmp_path / "rgb", images[:3], rgb_rows={1}))
    assert colour.channels == 3 and colour.pixels.shape == (3, SIDE, SIDE, 3)


def test_small_images_side_rejects_photos_from_the_headers(tmp_path):
    images, _, _ = quadrant_images(count=20, seed=12)
    small = write_images(tmp_path, images, broken_rows={0})
    assert small_images_side(small) == (SIDE, "ok")
    (tmp_path / "large").mkdir()
    large = write_images(tmp_path / "large", images, large_rows=set(range(20)))
    side, reason = small_images_side(large)
    assert side is None and "images too large for the pixel model: 0 of 20 readable" in reason
    assert small_images_side(np.array(["/nowhere/a.png"] * 3, dtype=object))[0] is None


def test_the_context_loads_the_images_once_and_the_finders_get_the_pixel_model(tmp_path, monkeypatch):
    from curation.finders.label_next import find_label_next
    from curation.finders.mislabels import find_mislabels

    images, labels, _ = quadrant_images(seed=13)
    paths = write_images(tmp_path, images, broken_rows={7, 300})
    loads = []
    original = pixel_classifier.load_pixels
    monkeypatch.setattr(pixel_classifier, "load_pixels", lambda *a, **k: loads.append(1) or original(*a, **k))
    context = make_context(noise_embeddings(), labels=labels, filepaths=paths)
    mislabels = find_mislabels(context)
    find_label_next(context)
    info = mislabels.info["classifier"]["pixel_model"]
    assert info["used"] and info["images_without_pixels"] == 2 and info["pixel_model_won"]
    assert len(loads) == 1 and len(context._out_of_fold_cache) == 1  # one decode, one shared fit
    first = context.out_of_fold()
    assert first is context.out_of_fold(seed=0)  # the cache key works with the pixels in it
    assert context.out_of_fold(pixel_model="off").info["pixel_model"]["used"] is False
    assert len(loads) == 1
    # Unreadable images still get a prediction (the embedding model's), and are checkable.
    assert first.checkable.all() and np.isfinite(first.pred_probs).all()


def test_the_context_records_why_the_pixels_were_not_used(tmp_path):
    images, labels, _ = quadrant_images(count=COUNT, seed=14)
    context = make_context(noise_embeddings(), labels=labels)  # /nowhere/ paths
    assert "no readable image" in context.out_of_fold().info["pixel_model"]["reason"]
    few = make_context(noise_embeddings(100), labels=labels[::4], filepaths=write_images(tmp_path, images[::4]))
    assert few.out_of_fold().info["pixel_model"]["reason"] == "100 labelled samples, fewer than the 300 a CNN needs"
    with pytest.raises(FinderInputError, match="'cnn' needs the images"):
        context.out_of_fold(pixel_model="cnn")
