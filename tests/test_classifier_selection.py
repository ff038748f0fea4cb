"""Per-data-set choice of the out-of-fold classifier: selection, temperature scaling, leakage."""

from __future__ import annotations

import numpy as np
import pytest

from curation.finders import classifier
from curation.finders.base import FinderInputError
from curation.finders.classifier import (
    MIN_SELECTION_SAMPLES,
    apply_temperature,
    compute_out_of_fold_predictions,
    fit_temperature,
    log_loss,
)


def accuracy(result, labels) -> float:
    given = np.array([result.classes.index(str(value)) for value in labels])
    return float((result.pred_probs.argmax(axis=1) == given).mean())


def checkerboard(count: int = 400, seed: int = 0, extra: int = 6):
    """Two classes by the sign of x0 * x1 (XOR): no linear model beats chance, neighbours do."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, size=(count, 2))
    truth = np.where(points[:, 0] * points[:, 1] > 0, "same", "opposite").astype(object)
    vectors = np.hstack([points, 0.05 * rng.normal(size=(count, extra))]) + 3.0  # offset: no zero rows
    return vectors, truth


def faint_means(count: int = 300, dimension: int = 50, seed: int = 0):
    """Four classes whose means differ a little in every one of many dimensions, with few
    samples per dimension (45 per class in an inner training set for 50 dimensions) and
    heavy overlap: a weakly regularised regression fits the noise."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(4), count // 4)
    means = 0.25 * rng.normal(size=(4, dimension))
    vectors = means[truth] + rng.normal(size=(len(truth), dimension))
    return vectors, np.array([f"c{value}" for value in truth], dtype=object)


# ---------------------------------------------------------------------------------------
# The choice
# ---------------------------------------------------------------------------------------

def test_selection_picks_neighbours_on_a_non_linear_problem():
    vectors, truth = checkerboard()
    chosen = compute_out_of_fold_predictions(vectors, truth)
    fixed = compute_out_of_fold_predictions(vectors, truth, C=0.1, dimensions=128)
    assert chosen.info["selection"]["chosen"].startswith("kNN")
    assert chosen.info["dimensions"] is None  # 8 dimensions: every PCA size collapses to "all"
    assert accuracy(chosen, truth) > 0.9 > 0.65 > accuracy(fixed, truth)


def test_selection_picks_strong_regularisation_on_noisy_high_dimensional_classes():
    vectors, truth = faint_means()
    result = compute_out_of_fold_predictions(vectors, truth, dimensions=None)  # C alone is chosen
    candidates = {row["C"]: row["mean_log_loss"] for row in result.info["selection"]["candidates"]}
    assert set(candidates) == set(classifier.C_GRID)
    assert result.info["C"] <= 0.1
    assert candidates[10.0] > candidates[result.info["C"]] + 0.05
    weak = compute_out_of_fold_predictions(vectors, truth, dimensions=None, C=10.0)
    given = np.array([result.classes.index(value) for value in truth])
    assert log_loss(result.pred_probs, given) < log_loss(weak.pred_probs, given) - 0.1


def test_info_records_every_candidate_the_choice_and_the_time():
    vectors, truth = checkerboard(seed=1)
    info = compute_out_of_fold_predictions(vectors, truth, n_folds=4).info
    selection = info["selection"]
    names = [row["name"] for row in selection["candidates"]]
    assert len(selection["chosen_per_fold"]) == len(selection["temperature_per_fold"]) == 4
    assert set(selection["chosen_per_fold"]) <= set(names) and selection["chosen"] in selection["chosen_per_fold"]
    assert sum(row["folds_chosen"] for row in selection["candidates"]) == 4
    assert all(row["mean_log_loss"] is not None and row["seconds"] >= 0 for row in selection["candidates"])
    assert selection["left_out_for_budget"] == []
    assert info["temperature"] > 0 and "held-out log loss" in info["model"]
    assert "never seen" in selection["criterion"]


def test_the_budget_leaves_out_the_most_expensive_candidates_first():
    vectors, truth = faint_means()
    info = compute_out_of_fold_predictions(vectors, truth, selection_budget=0.01).info
    left_out = info["selection"]["left_out_for_budget"]
    assert left_out and all("all dims" in name or "PCA-256" in name for name in left_out)
    tried = [row for row in info["selection"]["candidates"] if row["mean_log_loss"] is not None]
    assert tried and all(row["name"] not in left_out for row in tried)


# ---------------------------------------------------------------------------------------
# Out-of-fold property
# ---------------------------------------------------------------------------------------

def test_no_model_or_temperature_sees_the_labels_of_the_fold_it_scores(monkeypatch):
    vectors, truth = checkerboard(seed=2)
    current_test: list[set] = []
    calls = []
    original_fold = classifier._Selector.fit_predict_fold
    original_predict = classifier._Selector._predict

    def fold_spy(self, fold, train_rows, y, test_rows, budget):
        current_test.append(set(test_rows.tolist()))
        return original_fold(self, fold, train_rows, y, test_rows, budget)

    def predict_spy(self, candidate, train_rows, y, test_rows, warm=None):
        calls.append((current_test[-1], set(train_rows.tolist()), set(test_rows.tolist())))
        return original_predict(self, candidate, train_rows, y, test_rows, warm)

    monkeypatch.setattr(classifier._Selector, "fit_predict_fold", fold_spy)
    monkeypatch.setattr(classifier._Selector, "_predict", predict_spy)
    result = compute_out_of_fold_predictions(vectors, truth)
    assert len(current_test) == 5 and len(calls) > 5
    for outer_test, train, test in calls:
        assert not train & outer_test  # neither the candidates nor the refit train on the scored fold
        assert not train & test
    for outer_test in current_test:
        fold_calls = [(train, test) for scored, train, test in calls if scored is outer_test]
        refits = [test for _, test in fold_calls if test == outer_test]
        assert len(refits) == 1  # the winner predicts the scored fold once ...
        # ... and every comparison of candidates is scored inside the training fold only.
        assert all(not test & outer_test for _, test in fold_calls if test != outer_test)
    assert result.checkable.all()


def test_random_labels_stay_at_chance_after_selection_and_scaling():
    # A leak anywhere (a sample among its own neighbours, a temperature fitted on the scored
    # fold) would lift this far above chance; honest out-of-fold predictions cannot.
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(400, 12))
    labels = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), size=400)
    result = compute_out_of_fold_predictions(vectors, labels)
    assert accuracy(result, labels) < 0.36
    given = np.array([result.classes.index(value) for value in labels])
    assert log_loss(result.pred_probs, given) > np.log(4) - 0.05


def test_auto_does_not_depend_on_the_input_order():
    vectors, truth = checkerboard(count=300, seed=3)
    keys = np.array([f"id{index:04d}" for index in range(len(truth))], dtype=object)
    first = compute_out_of_fold_predictions(vectors, truth, sample_keys=keys)
    shuffle = np.random.default_rng(0).permutation(len(truth))
    second = compute_out_of_fold_predictions(vectors[shuffle], truth[shuffle], sample_keys=keys[shuffle])
    np.testing.assert_allclose(second.pred_probs, first.pred_probs[shuffle], atol=1e-8)
    assert second.info["selection"]["chosen_per_fold"] == first.info["selection"]["chosen_per_fold"]


def test_unlabelled_samples_get_the_most_chosen_setting():
    vectors, truth = checkerboard(count=360, seed=4)
    labels = truth.copy()
    labels[:40] = None
    result = compute_out_of_fold_predictions(vectors, labels)
    assert result.unlabelled_probs.shape == (40, 2)
    np.testing.assert_allclose(result.unlabelled_probs.sum(axis=1), 1.0)
    predicted = np.array(result.classes, dtype=object)[result.unlabelled_probs.argmax(axis=1)]
    assert (predicted == truth[:40]).mean() > 0.85


# ---------------------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sharpness", "direction"), [(3.0, "softens"), (1 / 3, "sharpens")])
def test_temperature_scaling_lowers_held_out_log_loss(sharpness, direction):
    rng = np.random.default_rng(0)
    logits = 2.0 * rng.normal(size=(4000, 5))
    truth_probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(5, p=row) for row in truth_probs])
    model = np.exp(sharpness * logits)
    model /= model.sum(axis=1, keepdims=True)  # over-confident (x3) or under-confident (/3)
    fit, held = slice(0, 2000), slice(2000, None)
    temperature, _ = fit_temperature(model[fit], targets[fit])
    assert (temperature > 2.0) if direction == "softens" else (temperature < 0.5)
    assert temperature == pytest.approx(sharpness, rel=0.15)
    before = log_loss(model[held], targets[held])
    after = log_loss(apply_temperature(model[held], temperature), targets[held])
    assert after < before - 0.05


def test_temperature_stays_one_for_a_calibrated_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3000, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(3, p=row) for row in probabilities])
    temperature, _ = fit_temperature(probabilities, targets)
    assert temperature == pytest.approx(1.0, abs=0.1)


# ---------------------------------------------------------------------------------------
# Explicit settings and small data keep the earlier behaviour
# ---------------------------------------------------------------------------------------

def test_explicit_settings_reproduce_the_fixed_model():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    vectors, truth = faint_means(count=240, dimension=30, seed=2)
    result = compute_out_of_fold_predictions(vectors, truth, C=0.1, dimensions=16)
    assert result.info["selection"] == "off: explicit C and dimensions"
    assert result.info["temperature"] is None and result.info["C"] == 0.1 and result.info["pca_components"] == 16
    # The fixed model written out: PCA, one global scale, lbfgs logistic regression, 5 folds.
    features = PCA(n_components=16, svd_solver="covariance_eigh").fit_transform(vectors)
    features = features - features.mean(axis=0)
    features /= np.sqrt((features ** 2).mean())
    given = np.array([int(value[1:]) for value in truth])
    expected = np.zeros((len(truth), 4))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(features, given):
        model = LogisticRegression(C=0.1, max_iter=200, tol=1e-4, random_state=0).fit(features[train], given[train])
        expected[test] = model.predict_proba(features[test])
    np.testing.assert_allclose(result.pred_probs, expected, atol=1e-6)


def test_small_data_falls_back_to_the_fixed_settings_and_says_so():
    vectors, truth = checkerboard(count=MIN_SELECTION_SAMPLES - 20)
    result = compute_out_of_fold_predictions(vectors, truth)
    assert result.info["selection"].startswith(f"skipped: {MIN_SELECTION_SAMPLES - 20} cross-validated samples")
    fixed = compute_out_of_fold_predictions(vectors, truth, C=classifier.FIXED_C, dimensions=classifier.FIXED_DIMENSIONS)
    np.testing.assert_array_equal(result.pred_probs, fixed.pred_probs)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"C": "best"}, "C: expected a positive inverse regularisation strength, got 'best' \\(or 'auto'"),
     ({"dimensions": "all"}, "dimensions: expected a positive integer or None \\(no PCA\\), got 'all' \\(or 'auto'"),
     ({"selection_budget": 0}, "selection_budget: expected a positive number of estimated seconds, got 0")],
    ids=["C", "dimensions", "budget"],
)
def test_unknown_words_are_refused(settings, message):
    vectors, truth = checkerboard(count=40)
    with pytest.raises(FinderInputError, match=message):
        compute_out_of_fold_predictions(vectors, truth, **settings)
