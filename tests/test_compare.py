"""Comparing two datasets (``curation.compare``) and ``curation compare``: the class mix and its
test, coverage, shift, regions, near duplicates and label disagreements across, different
embedding models, and hostile input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from conftest import DEMO_SOURCE, SHARED_DATASETS
from curation.cli import main
from curation.compare import CompareConfig, CompareInputError, compare_classes, compare_datasets, compare_embeddings, \
    cross_neighbors

MODEL = "efficientnet-lite0-imagenet"
FIELD = "embeddings_efficientnet_lite0_imagenet"
BATCH = "t-compare-two-class-batch"
BATCH_CLASSES = ("bag", "trouser")
ALL_CLASSES = sorted(path.name for path in DEMO_SOURCE.iterdir() if path.is_dir())
MISSING = sorted(set(ALL_CLASSES) - set(BATCH_CLASSES))


@pytest.fixture(scope="session")
def two_class_batch(tmp_path_factory):
    """A new batch: 30 demo images of each of two classes (bag, trouser) that the 60-sample
    ``embedded_dataset`` does not hold, embedded with the same model. Reused when another
    test module already made it in this session."""
    import fiftyone as fo

    from curation.datasets import load_dataset

    if fo.dataset_exists(BATCH):
        dataset = load_dataset(BATCH)
        if len(dataset) == 60 and dataset.exists(FIELD).count() == 60:
            return dataset
    from curation.embeddings import compute_embeddings
    from curation.importers import import_dataset

    folder = tmp_path_factory.mktemp("two-class-batch")
    for name in BATCH_CLASSES:
        (folder / name).mkdir()
        for image in sorted((DEMO_SOURCE / name).glob("fmnist_test_*.png"))[6:36]:  # the small tree has [:6]
            shutil.copy(image, folder / name / image.name)
    import_dataset(folder, BATCH, format="classes", overwrite=True)
    dataset = load_dataset(BATCH)
    compute_embeddings(dataset, model=MODEL, num_workers=0)
    return dataset


# --------------------------------------------------------------------------- synthetic vectors


def _clusters(rng, count: int, centres: np.ndarray, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around ``centres`` and each row's cluster (its class)."""
    which = rng.integers(0, len(centres), count)
    rows = centres[which] + spread * rng.normal(size=(count, centres.shape[1])) / np.sqrt(centres.shape[1])
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), which


@pytest.fixture(scope="module")
def centres():
    rng = np.random.default_rng(7)
    return rng.normal(size=(12, 32)) / np.sqrt(32)


def _names(which) -> np.ndarray:
    return np.array([f"c{value}" for value in which], dtype=object)


def test_class_table_test_and_residuals():
    counts_a = {"cat": 50, "dog": 30, "bird": 20, None: 7}  # the unlabelled are left out
    counts_b = {"cat": 10, "dog": 30, "fish": 5}
    table, test = compare_classes(counts_a, counts_b)
    assert list(table["class"]) == ["cat", "dog", "bird", "fish"]  # most common in A first
    assert list(table["count_a"]) == [50, 30, 20, 0] and list(table["count_b"]) == [10, 30, 0, 5]
    assert table["share_a"].sum() == pytest.approx(1) and table["share_b"].iloc[1] == pytest.approx(30 / 45)
    chi2, p_value, dof, _ = chi2_contingency([[50, 30, 20, 0], [10, 30, 0, 5]], correction=False)
    assert test["chi2"] == pytest.approx(chi2) and test["p_value"] == pytest.approx(p_value) and test["dof"] == dof == 3
    assert test["cramers_v"] == pytest.approx(np.sqrt(chi2 / 145)) and test["n"] == 145
    residual = dict(zip(table["class"], table["residual"]))
    assert residual["cat"] < -2 and residual["dog"] > 2 and residual["fish"] > 2  # B has fewer cats, more dogs


def test_class_test_needs_two_classes_and_labels_on_both_sides():
    assert "one class" in compare_classes({"cat": 4}, {"cat": 9})[1]["reason"]
    assert "dataset B has no labelled samples" in compare_classes({"cat": 4, "dog": 1}, {None: 3})[1]["reason"]
    same = compare_classes({"cat": 40, "dog": 20}, {"cat": 20, "dog": 10})[1]
    assert same["chi2"] == pytest.approx(0) and same["p_value"] == pytest.approx(1) and same["cramers_v"] == 0


def test_cross_neighbors_match_brute_force_in_both_directions_across_tiles():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(53, 16)).astype(np.float32)
    database = rng.normal(size=(41, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    sim_qd, idx_qd, sim_dq, idx_dq = cross_neighbors(queries, database, 5, k_back=4, block_size=7)
    full = queries @ database.T
    assert np.array_equal(idx_qd, np.argsort(-full, axis=1)[:, :5])
    assert np.array_equal(idx_dq, np.argsort(-full.T, axis=1)[:, :4])
    assert np.allclose(sim_qd, np.take_along_axis(full, idx_qd, axis=1), atol=1e-6)
    few = cross_neighbors(queries, database[:3], 5)  # k larger than the other side: every row, no padding
    assert few[0].shape == (53, 3) and (few[1] >= 0).all() and few[2].shape == (3, 5)


def test_the_same_distribution_shows_no_shift(centres):
    rng = np.random.default_rng(1)
    matrix_a, which_a = _clusters(rng, 1500, centres)
    matrix_b, which_b = _clusters(rng, 1500, centres)
    found = compare_embeddings(matrix_a, matrix_b, _names(which_a), _names(which_b))
    assert abs(found.shift["auc"] - 0.5) < 0.05 and found.shift["p_value"] > 0.01, found.shift
    assert abs(found.shift["auc_within_classes"] - 0.5) < 0.08
    assert found.shift["verdict"].startswith("B looks like A")
    assert found.coverage["share_far"] < 0.03  # 1% expected at the 0.99 quantile
    assert found.regions["n_lacking"] == 0
    assert len(found.disagreements) == 0


def test_a_batch_of_few_classes_plus_new_material(centres):
    """B: 3 of A's 12 clusters, plus a cluster A never saw: the new cluster is far from A,
    the other 9 clusters' regions are lacking, and the shift is the class mix."""
    rng = np.random.default_rng(2)
    matrix_a, which_a = _clusters(rng, 1200, centres)
    known, which_known = _clusters(rng, 270, centres[:3])
    novel_centre = rng.normal(size=(1, 32)) / np.sqrt(32)
    novel, _ = _clusters(rng, 30, novel_centre)
    matrix_b = np.vstack([known, novel])
    names_b = np.r_[_names(which_known), np.array(["new"] * 30, dtype=object)]
    found = compare_embeddings(matrix_a, matrix_b, _names(which_a), names_b, class_p_value=1e-9)
    per_class = found.coverage["per_class"].set_index("class")
    assert per_class.loc["new", "share_far"] == 1.0
    assert per_class.drop("new")["share_far"].max() < 0.05
    lacking = found.regions["table"][found.regions["table"]["lacking"]]
    covered = {name for dominant in lacking["dominant_classes"] for name, share in dominant if share > 0.5}
    assert covered and covered.isdisjoint({"c0", "c1", "c2"})
    assert found.regions["table"]["share_a"][found.regions["table"]["lacking"]].sum() > 0.5
    assert found.shift["auc"] > 0.85
    assert found.shift["auc_within_classes"] < 0.65
    assert "the class mix" in found.shift["verdict"]
    assert (found.disagreements["label"] != "new").all()  # a class A lacks is new, not a wrong label


def test_labels_that_disagree_with_the_other_side_both_ways(centres):
    rng = np.random.default_rng(3)
    matrix_a, which_a = _clusters(rng, 600, centres)
    matrix_b, which_b = _clusters(rng, 600, centres)
    labels_a, labels_b = _names(which_a), _names(which_b)
    wrong_b = np.flatnonzero(which_b == 4)[:3]
    labels_b[wrong_b] = "c5"  # three of B's c4 images labelled c5
    wrong_a = np.flatnonzero(which_a == 7)[:2]
    labels_a[wrong_a] = "c8"
    found = compare_embeddings(matrix_a, matrix_b, labels_a, labels_b)
    votes = found.disagreements
    on_b = votes[votes["side"] == "b"]
    on_a = votes[votes["side"] == "a"]
    assert set(on_b["row"]) == set(wrong_b) and set(on_b["suggested"]) == {"c4"} and set(on_b["label"]) == {"c5"}
    assert set(on_a["row"]) == set(wrong_a) and set(on_a["suggested"]) == {"c7"}
    assert (votes["vote_share"] >= 0.8).all() and (votes["n_votes"] == 10).all()


def test_near_duplicates_across_and_broken_rows(centres):
    rng = np.random.default_rng(4)
    matrix_a, which_a = _clusters(rng, 300, centres)
    matrix_b, which_b = _clusters(rng, 100, centres)
    matrix_b[:4] = matrix_a[[10, 20, 30, 40]]  # copies of A's images
    matrix_b[4] = 0.0  # a failed embedding
    matrix_b[5, 3] = np.nan
    found = compare_embeddings(matrix_a, matrix_b, config=CompareConfig(duplicate_threshold=0.99))
    pairs = found.duplicates
    assert sorted(zip(pairs["row_b"], pairs["row_a"])) == [(0, 10), (1, 20), (2, 30), (3, 40)]
    assert (pairs["similarity"] > 0.999).all() and found.duplicate_threshold == 0.99
    assert not found.valid_b[4] and not found.valid_b[5] and np.isnan(found.distance_b[4])
    assert any("2 samples of B have a zero or non-finite embedding" in note for note in found.notes)
    assert found.coverage["n"] == 98


def test_results_do_not_depend_on_the_order_of_b(centres):
    rng = np.random.default_rng(5)
    matrix_a, which_a = _clusters(rng, 400, centres)
    matrix_b, which_b = _clusters(rng, 200, centres)
    order = rng.permutation(200)
    first = compare_embeddings(matrix_a, matrix_b, _names(which_a), _names(which_b))
    second = compare_embeddings(matrix_a, matrix_b[order], _names(which_a), _names(which_b)[order])
    assert np.allclose(first.distance_b[order], second.distance_b)
    assert first.coverage["share_far"] == second.coverage["share_far"]
    assert first.regions["table"]["count_b"].sum() == second.regions["table"]["count_b"].sum() == 200


@pytest.mark.parametrize("settings, message", [
    ({"k": 0}, "k: expected a whole number >= 1, got 0"),
    ({"far_quantile": 1.0}, "far_quantile: expected a number in (0, 1), got 1.0"),
    ({"far_quantile": float("nan")}, "far_quantile: expected a number in (0, 1), got nan"),
    ({"min_vote_share": 0.5}, "min_vote_share: expected a number in (0.5, 1], got 0.5"),
    ({"duplicate_threshold": 1.5}, "duplicate_threshold: expected a number in (0, 1], got 1.5"),
    ({"n_regions": 0}, "n_regions: expected a whole number >= 1, got 0"),
    ({"seed": True}, "seed: expected a whole number >= 0, got True"),
])
def test_settings_are_validated(settings, message):
    with pytest.raises(CompareInputError) as error:
        CompareConfig(**settings)
    assert str(error.value) == message


def test_arrays_that_cannot_be_compared():
    rng = np.random.default_rng(6)
    with pytest.raises(CompareInputError, match="A are 8-d and of B 9-d"):
        compare_embeddings(rng.normal(size=(5, 8)), rng.normal(size=(5, 9)))
    with pytest.raises(CompareInputError, match="labels_b: expected one label per embedding row, shape \\(5,\\)"):
        compare_embeddings(rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), labels_b=["a"] * 4)
    with pytest.raises(CompareInputError, match="A needs at least 2 samples with a usable embedding, has 1"):
        compare_embeddings(np.vstack([rng.normal(size=(1, 8)), np.zeros((3, 8))]), rng.normal(size=(5, 8)))
    with pytest.raises(CompareInputError, match="expected a real \\(n_samples, dim\\) array"):
        compare_embeddings(rng.normal(size=8), rng.normal(size=(5, 8)))


# --------------------------------------------------------------------------- datasets


def test_demo_like_dataset_against_a_two_class_batch(embedded_dataset, two_class_batch):
    comparison = compare_datasets(embedded_dataset, two_class_batch)
    assert comparison.missing_in_b == MISSING and comparison.new_in_b == []
    assert comparison.class_test["p_value"] < 1e-6 and comparison.class_test["cramers_v"] > 0.5
    assert comparison.embedding_skipped is None
    assert comparison.embeddings["model_a"] == comparison.embeddings["model_b"] == f"{MODEL} at 160 px"
    assert comparison.shift["auc"] > 0.75 and comparison.shift["p_value"] < 0.001, comparison.shift
    regions = comparison.regions["table"]
    lacking = regions[regions["lacking"]]
    assert len(lacking) >= 1
    main_classes = {dominant[0][0] for dominant in lacking["dominant_classes"]}
    assert main_classes <= set(MISSING), main_classes
    assert all(example["filepath"].startswith(str(embedded_dataset.first().filepath).rsplit("/", 2)[0])
               for example in lacking["examples_a"].iloc[0])
    assert comparison.coverage["per_class"]["class"].tolist() != []  # B's classes
    assert set(comparison.coverage["per_class"]["class"]) == set(BATCH_CLASSES)
    document = json.loads(json.dumps(comparison.to_dict(), allow_nan=False))
    assert document["missing_in_b"] == MISSING and document["embedding_skipped"] is None
    assert document["a"]["dataset"] == embedded_dataset.name and document["b"]["samples"] == 60
    assert {row["class"] for row in document["classes"]} == set(ALL_CLASSES)
    assert document["duplicates"]["threshold"] == 0.95
    assert "duplicates finder's default" in document["duplicates"]["threshold_source"]
    text = "\n".join(comparison.summary_lines())
    assert f"Classes missing from B (8): {', '.join(MISSING)}" in text and "Shift: domain classifier AUC" in text


def test_identical_halves_show_no_shift(embedded_dataset):
    ids, labels = embedded_dataset.values(["id", "ground_truth.label"])
    seen, halves = Counter(), ([], [])
    for sample_id, label in zip(ids, labels):
        halves[seen[label] % 2].append(sample_id)
        seen[label] += 1
    first, second = embedded_dataset.select(halves[0]), embedded_dataset.select(halves[1])
    comparison = compare_datasets(first, second)
    assert comparison.missing_in_b == [] and comparison.class_test["p_value"] == pytest.approx(1)
    assert comparison.class_test["cramers_v"] == pytest.approx(0)
    assert abs(comparison.shift["auc"] - 0.5) < 0.2 and comparison.shift["p_value"] > 0.05, comparison.shift
    assert comparison.shift["verdict"].startswith("B looks like A")
    assert comparison.regions["n_lacking"] == 0
    assert comparison.coverage["share_far"] < 0.1
    with pytest.raises(CompareInputError, match="share 30 samples: compare two disjoint sets"):
        compare_datasets(first, embedded_dataset.select(ids))


@pytest.fixture
def other_model_batch(two_class_batch, fresh_name):
    """The batch, its embeddings recorded as CLIP's (as if embedded with another model)."""
    from curation.datasets import curation_info, update_curation_info

    clone = two_class_batch.clone(fresh_name)
    clone.rename_sample_field(FIELD, "embeddings_clip_vit_b32_openai")
    record = dict(curation_info(clone)["embeddings"][FIELD])
    record.update(model="clip-vit-b32-openai", image_size=None,
                  model_spec={"name": "clip-vit-b32-openai", "family": "open_clip", "architecture": "ViT-B-32",
                              "pretrained": "openai", "checkpoint": None, "description": ""})
    update_curation_info(clone, embeddings={"embeddings_clip_vit_b32_openai": record},
                         default_embeddings="embeddings_clip_vit_b32_openai")
    return clone


def test_different_embedding_models_are_reported_and_classes_still_compared(embedded_dataset, other_model_batch,
                                                                             capsys):
    comparison = compare_datasets(embedded_dataset, other_model_batch)
    reason = comparison.embedding_skipped
    assert reason and "different models" in reason
    assert f"{MODEL} at 160 px" in reason and "clip-vit-b32-openai" in reason
    assert f"curation embed --dataset {other_model_batch.name} --model {MODEL} --image-size 160" in reason
    assert comparison.missing_in_b == MISSING and comparison.class_test["p_value"] < 1e-6
    assert comparison.coverage is None and comparison.shift is None and comparison.duplicates is None
    assert json.loads(json.dumps(comparison.to_dict()))["embedding_skipped"] == reason
    assert main(["compare", "--dataset", embedded_dataset.name, "--with", other_model_batch.name]) == 0
    out = capsys.readouterr().out
    assert "Embeddings: skipped: the embeddings come from different models" in out and "clip-vit-b32-openai" in out
    assert "Classes missing from B (8)" in out


def test_the_same_model_at_another_input_size_is_not_compared(embedded_dataset, two_class_batch, fresh_name):
    from curation.datasets import curation_info, update_curation_info

    clone = two_class_batch.clone(fresh_name)
    runs = curation_info(clone)["embeddings"]
    update_curation_info(clone, embeddings={FIELD: {**runs[FIELD], "image_size": 224}})
    reason = compare_datasets(embedded_dataset, clone).embedding_skipped
    assert f"from {MODEL} at 160 px" in reason and f"from {MODEL} at 224 px" in reason
    assert "they differ in image_size" in reason


def test_fields_without_a_model_record(embedded_dataset, two_class_batch, fresh_name):
    """Vectors computed elsewhere (no run record): the same field name on both sides is compared,
    with a note; against a recorded model it is reported as a mismatch."""
    from curation.datasets import update_curation_info

    bare_a, bare_b = embedded_dataset.clone(fresh_name + "-a"), two_class_batch.clone(fresh_name + "-b")
    try:
        for bare in (bare_a, bare_b):
            update_curation_info(bare, embeddings={}, default_embeddings=None)
        comparison = compare_datasets(bare_a, bare_b)
        assert comparison.embedding_skipped is None and comparison.coverage["n"] == 60
        assert any(f"no record of the model behind {FIELD!r} in either dataset" in note for note in comparison.notes)
        reason = compare_datasets(embedded_dataset, bare_b).embedding_skipped
        assert f"from {MODEL} at 160 px" in reason and f"from an unrecorded model (field {FIELD!r})" in reason
    finally:
        bare_a.delete()
        bare_b.delete()


def test_a_batch_without_labels_or_embeddings(embedded_dataset, two_class_batch, fresh_name, small_class_tree):
    unlabelled = two_class_batch.clone(fresh_name)
    unlabelled.delete_sample_field("ground_truth")
    comparison = compare_datasets(embedded_dataset, unlabelled)
    assert "has no classification field" in comparison.class_skipped and comparison.missing_in_b == []
    assert comparison.coverage["n"] == 60 and comparison.shift["auc"] > 0.75  # the embedding sections still run
    assert len(comparison.disagreements) == 0
    assert "Label disagreements: not checked" in "\n".join(comparison.summary_lines())
    import fiftyone as fo

    from curation.importers import import_dataset

    raw_name = fresh_name + "-raw"
    try:
        import_dataset(small_class_tree / "bag", raw_name, format="images")
        raw = fo.load_dataset(raw_name)
        reason = compare_datasets(embedded_dataset, raw).embedding_skipped
        assert f"dataset {raw_name!r} has no embeddings" in reason and f"--model {MODEL}" in reason
    finally:
        if fo.dataset_exists(raw_name):
            fo.delete_dataset(raw_name)


def test_named_fields_that_do_not_exist(embedded_dataset, two_class_batch):
    from curation.errors import CurationError

    with pytest.raises(CurationError, match="label field 'nope' is not a classification field of dataset "
                                            f"'{BATCH}'; classification fields: ground_truth"):
        compare_datasets(embedded_dataset, two_class_batch, label_field_b="nope")
    with pytest.raises(CurationError, match=f"dataset '{BATCH}' has no embedding field 'nope'"):
        compare_datasets(embedded_dataset, two_class_batch, embeddings_field_b="nope")
    with pytest.raises(CompareInputError, match="compared with itself"):
        compare_datasets(two_class_batch, two_class_batch)


# --------------------------------------------------------------------------- command line


def test_cli_text_and_json(embedded_dataset, two_class_batch, capsys):
    assert main(["compare", "--dataset", embedded_dataset.name, "--with", two_class_batch.name, "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert f"Classes missing from B (8): {', '.join(MISSING)}" in out
    assert "Class mix: the distributions differ" in out and "Coverage:" in out and "Regions of A that B lacks" in out
    assert "Near duplicates across (cosine >= 0.950, the duplicates finder's default cosine threshold)" in out
    assert main(["compare", "--dataset", embedded_dataset.name, "--with", two_class_batch.name, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["missing_in_b"] == MISSING and document["class_test"]["p_value"] < 1e-6
    assert document["shift"]["auc"] > 0.75 and document["regions"]["n_lacking"] >= 1
    assert document["settings"]["config"]["k"] == 10 and document["embeddings"]["field_a"] == FIELD


@pytest.mark.parametrize("argv, code, message", [
    (["--dataset", "no-such-dataset", "--with", BATCH], 1, "no FiftyOne dataset named 'no-such-dataset'"),
    (["--dataset", "{a}", "--with", "../../etc/passwd"], 1, "no FiftyOne dataset named '../../etc/passwd'"),
    (["--dataset", "{a}", "--with", "{a}"], 1, "dataset '{a}' compared with itself"),
    (["--dataset", "{a}", "--with", BATCH, "--label-field", "nope"], 1,
     "label field 'nope' is not a classification field of dataset '{a}'"),
    (["--dataset", "{a}", "--with", BATCH, "--field-b", "ground_truth"], 1,
     f"'ground_truth' is not an embedding field of dataset '{BATCH}' (it is a EmbeddedDocumentField)"),
    (["--dataset", "{a}", "--with", BATCH, "--k", "0"], 2, "argument --k: expected a whole number >= 1, got '0'"),
    (["--dataset", "{a}", "--with", BATCH, "--far-quantile", "nan"], 2,
     "argument --far-quantile: expected a number in (0, 1), got 'nan'"),
    (["--dataset", "{a}", "--with", BATCH, "--threshold", "2"], 2,
     "argument --threshold: expected a number in (0, 1], got '2'"),
])
def test_cli_failures_exit_non_zero_with_one_line(argv, code, message, embedded_dataset, two_class_batch, capsys):
    argv = [part.replace("{a}", embedded_dataset.name) for part in argv]
    message = message.replace("{a}", embedded_dataset.name)
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *argv])
        assert exit_info.value.code == 2
    else:
        assert main(["compare", *argv]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], err
    assert err[0].startswith("curation compare: error:")


def test_a_real_console_run_prints_one_line_and_no_traceback(embedded_dataset):
    command = [sys.executable, "-m", "curation.cli", "compare", "--dataset", embedded_dataset.name, "--with", "$(id)"]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith("curation compare: error: no FiftyOne dataset named '$(id)'")


# --------------------------------------------------------------------------- real data: a training batch


@pytest.mark.skipif(not (SHARED_DATASETS / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists(),
                    reason="../shared/datasets/fashion-mnist is absent")
def test_fashion_mnist_training_images_of_two_classes_against_the_demo_slice(embedded_dataset, fresh_name, tmp_path,
                                                                              capsys):
    """The issue's example: training images of two classes (a new batch) against test images of ten."""
    from PIL import Image

    from curation.datasets import load_dataset
    from curation.embeddings import compute_embeddings
    from curation.idx import FASHION_MNIST_CLASSES, read_idx
    from curation.importers import import_dataset

    images = read_idx(SHARED_DATASETS / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    labels = read_idx(SHARED_DATASETS / "fashion-mnist" / "train-labels-idx1-ubyte.gz")
    for name in ("sneaker", "shirt"):
        (tmp_path / name).mkdir()
        for row in np.flatnonzero(labels == FASHION_MNIST_CLASSES.index(name))[:30]:
            Image.fromarray(images[row]).save(tmp_path / name / f"fmnist_train_{row:05d}.png")
    import_dataset(tmp_path, fresh_name, format="classes")
    batch = load_dataset(fresh_name)
    compute_embeddings(batch, model=MODEL, num_workers=0)
    assert main(["compare", "--dataset", embedded_dataset.name, "--with", fresh_name, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    missing = sorted(set(ALL_CLASSES) - {"sneaker", "shirt"})
    assert document["missing_in_b"] == missing and document["new_in_b"] == []
    assert document["class_test"]["p_value"] < 1e-6
    # 60 vs 60 samples; the best possible AUC is 0.9 (A holds 12 sneakers and shirts too).
    assert document["shift"]["auc"] > 0.65 and document["shift"]["p_value"] < 0.001, document["shift"]
    lacking = [row for row in document["regions"]["table"] if row["lacking"]]
    assert lacking and {row["dominant_classes"][0][0] for row in lacking} <= set(missing)
    far = {row["class"]: row["share_far"] for row in document["coverage"]["per_class"]}
    assert set(far) == {"sneaker", "shirt"} and max(far.values()) < 0.5  # same kind of images as A's
