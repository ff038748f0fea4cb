"""The wrong-class score of boxes with a model's predictions: the matched prediction's class
evidence joins the embedding finder's (curation.objects.combine_prediction_classes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curation.errors import CurationInputError
from curation.objects import (
    FALLBACK_PREDICTION_WEIGHT,
    ObjectConfig,
    choose_prediction_weight,
    combine_prediction_classes,
    object_table,
    prediction_class_probabilities,
)

CLASSES = ["cat", "dog", "fox"]
# (given label, box, embedding score, embedding suggestion, prediction label, confidence, logits)
BOXES = [
    ("cat", [0.05, 0.1, 0.2, 0.3], 0.50, "cat", "dog", 0.95),  # wrong: the embedding unsure, the model sure
    ("fox", [0.40, 0.1, 0.2, 0.3], 0.70, "dog", "fox", 0.98),  # right: an odd-looking fox the model knows
    ("dog", [0.70, 0.1, 0.2, 0.3], 0.10, "dog", "dog", 0.90),  # right, both agree
    ("dog", [0.05, 0.6, 0.2, 0.3], 0.30, "dog", "cat", 0.90),  # no match: the prediction is elsewhere
]


def _dataset(name: str, logits: list | None = None):
    """One image, the four boxes of BOXES as ``ground_truth``, their predictions (the last one
    moved off its box) as ``predictions``."""
    import fiftyone as fo

    annotations, predictions = [], []
    for index, (label, box, _, _, predicted, confidence) in enumerate(BOXES):
        annotations.append(fo.Detection(label=label, bounding_box=box))
        where = [box[0], box[1] + 0.3, box[2], box[3]] if index == 3 else [v + 0.005 for v in box]
        extra = {"logits": logits[index]} if logits is not None else {}
        predictions.append(fo.Detection(label=predicted, bounding_box=where, confidence=confidence, **extra))
    dataset = fo.Dataset(name)
    dataset.add_sample(fo.Sample(filepath="/no/such/image.png", metadata=fo.ImageMetadata(width=200, height=100),
                                 ground_truth=fo.Detections(detections=annotations),
                                 predictions=fo.Detections(detections=predictions)))
    return dataset


def _table(dataset) -> pd.DataFrame:
    """The box table with the embedding finder's columns filled from BOXES."""
    table = object_table(dataset, "ground_truth")
    table["mislabel_score"] = [row[2] for row in BOXES]
    table["suggested_label"] = [row[3] for row in BOXES]
    table["suggested_confidence"] = [1 - row[2] if row[3] == row[0] else row[2] for row in BOXES]
    return table


def test_the_prediction_reorders_the_wrong_class_queue_and_names_the_class(fresh_name):
    dataset = _dataset(fresh_name)
    table = _table(dataset)
    embedding_order = list(table.sort_values("mislabel_score", ascending=False).index)
    assert embedding_order[:2] == [1, 0]  # the embeddings alone put the odd fox before the wrong cat
    out, info = combine_prediction_classes(dataset, "predictions", table, ObjectConfig(prediction_weight=0.5))
    assert list(out.sort_values("mislabel_score", ascending=False).index)[:2] == [0, 1]
    assert info["boxes_matched"] == 3 and info["from_confidence"] == 3 and info["prediction_weight"] == 0.5
    # confidence for the predicted class, the rest spread evenly over the two others
    assert out.loc[0, "prediction_mislabel_score"] == pytest.approx(1 - 0.05 / 2)
    assert out.loc[0, "mislabel_score"] == pytest.approx(1 - (0.5 * 0.025 + 0.5 * 0.5))
    assert out.loc[1, "mislabel_score"] == pytest.approx(1 - (0.5 * 0.98 + 0.5 * 0.3))
    assert out.loc[0, "suggested_label"] == "dog" and out.loc[0, "predicted_label"] == "dog"
    assert out.loc[1, "suggested_label"] == "fox"  # the model's sure fox outweighs the embedding's dog
    # a box no prediction matches keeps the embedding's score and suggestion
    assert np.isnan(out.loc[3, "prediction_mislabel_score"]) and pd.isna(out.loc[3, "predicted_label"])
    assert out.loc[3, "mislabel_score"] == pytest.approx(0.30) and out.loc[3, "suggested_label"] == "dog"
    assert list(out["embedding_mislabel_score"]) == [row[2] for row in BOXES]
    assert ((out["mislabel_score"] >= 0) & (out["mislabel_score"] <= 1)).all()


def test_weights_zero_and_one_give_either_signal_alone(fresh_name):
    dataset = _dataset(fresh_name)
    table = _table(dataset)
    alone, _ = combine_prediction_classes(dataset, "predictions", table, ObjectConfig(prediction_weight=0.0))
    assert list(alone["mislabel_score"]) == pytest.approx([row[2] for row in BOXES])
    model, _ = combine_prediction_classes(dataset, "predictions", table, ObjectConfig(prediction_weight=1.0))
    assert list(model["mislabel_score"][:3]) == pytest.approx(list(model["prediction_mislabel_score"][:3]))
    assert model.loc[3, "mislabel_score"] == pytest.approx(0.30)  # no prediction: the embedding's score


def test_a_box_without_an_embedding_is_judged_by_its_prediction(fresh_name):
    dataset = _dataset(fresh_name)
    table = _table(dataset)
    table.loc[0, ["mislabel_score", "suggested_label", "suggested_confidence"]] = [np.nan, None, np.nan]
    out, _ = combine_prediction_classes(dataset, "predictions", table, ObjectConfig(prediction_weight=0.5))
    assert out.loc[0, "mislabel_score"] == pytest.approx(1 - 0.025) and out.loc[0, "suggested_label"] == "dog"


def test_logits_over_the_class_list_give_the_distribution(fresh_name):
    logits = [[0.0, 4.0, 0.0], [0.0, 0.0, 5.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0]]
    dataset = _dataset(fresh_name, logits=logits)
    dataset.classes = {"predictions": CLASSES}
    probabilities, classes, info = prediction_class_probabilities(dataset, "predictions", _table(dataset))
    assert classes == CLASSES and info["from_logits"] == 3 and info["from_confidence"] == 0
    expected = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert probabilities[0] == pytest.approx(expected)
    assert np.isnan(probabilities[3]).all()
    out, _ = combine_prediction_classes(dataset, "predictions", _table(dataset), ObjectConfig(prediction_weight=0.5))
    assert out.loc[0, "prediction_mislabel_score"] == pytest.approx(1 - expected[0])


def test_logits_of_another_length_fall_back_to_the_confidence_and_say_so(fresh_name):
    dataset = _dataset(fresh_name, logits=[[0.0, 1.0]] * 4)
    dataset.classes = {"predictions": CLASSES}
    probabilities, _, info = prediction_class_probabilities(dataset, "predictions", _table(dataset))
    assert info["from_logits"] == 0 and info["from_confidence"] == 3
    assert "3 predictions have logits whose length is not the 3 classes" in info["logits_ignored"]
    assert probabilities[0, CLASSES.index("dog")] == pytest.approx(0.95)


def test_low_confidence_predictions_are_not_matched(fresh_name):
    dataset = _dataset(fresh_name)
    _, _, info = prediction_class_probabilities(dataset, "predictions", _table(dataset),
                                                ObjectConfig(min_prediction_confidence=0.96))
    assert info["boxes_matched"] == 1  # only the 0.98 fox


def _qualities(informative: bool, n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label qualities of n boxes, 5 % mislabelled: a middling embedding signal and a model that
    is either sharp (right about the wrong ones, sure of the rest) or noise."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(n) < 0.05
    embedding = np.where(wrong, rng.uniform(0.05, 0.5, n), rng.uniform(0.4, 0.95, n))
    prediction = (np.where(wrong, rng.uniform(0.0, 0.05, n), rng.uniform(0.9, 1.0, n)) if informative
                  else rng.uniform(0.0, 1.0, n))
    return embedding, prediction


def test_the_weight_follows_the_signal_that_predicts_the_given_labels():
    sharp = choose_prediction_weight(*_qualities(informative=True))
    noise = choose_prediction_weight(*_qualities(informative=False))
    assert sharp["chosen_by"] == "lowest out-of-sample log loss of the given labels"
    assert sharp["prediction_weight"] >= 0.5 > noise["prediction_weight"]
    losses = sharp["log_loss_by_prediction_weight"]
    assert losses[str(sharp["prediction_weight"])] == min(losses.values())


def test_few_boxes_with_both_signals_keep_the_fixed_weight():
    embedding, prediction = _qualities(informative=True, n=150)
    chosen = choose_prediction_weight(embedding, prediction)
    assert chosen["prediction_weight"] == FALLBACK_PREDICTION_WEIGHT and chosen["chosen_by"].startswith("fixed: 150")
    prediction[:] = np.nan
    assert choose_prediction_weight(embedding, prediction)["chosen_by"].startswith("fixed: 0 boxes")


@pytest.mark.parametrize("value", ["often", 1.5, -0.1, float("nan"), True])
def test_prediction_weight_is_checked(value):
    with pytest.raises(CurationInputError, match="prediction_weight: expected a number"):
        ObjectConfig(prediction_weight=value)


def test_without_box_embeddings_the_predictions_alone_judge_the_classes(fresh_name):
    from curation.objects import analyze_objects

    dataset = _dataset(fresh_name)
    analysis = analyze_objects(dataset, "ground_truth", "predictions")
    boxes = analysis.table[analysis.table["object_id"].notna()].reset_index(drop=True)
    assert boxes.loc[0, "mislabel_score"] == pytest.approx(1 - 0.025)
    assert boxes.loc[0, "suggested_label"] == "dog" and boxes.loc[0, "issue"] == "mislabel"
    assert boxes["embedding_mislabel_score"].isna().all() and np.isnan(boxes.loc[3, "mislabel_score"])
    skipped = analysis.info["mislabels"]["skipped"]
    assert "no embeddings yet" in skipped and skipped.endswith("only the predictions' classes judged the 3 boxes a "
                                                               "prediction matches")
    assert analysis.info["mislabel_predictions"]["chosen_by"].startswith("fixed: 0 boxes")
