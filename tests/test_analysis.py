"""analyze / findings on a real FiftyOne dataset: fields written, CSV contract, failures isolated."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from curation.analysis import FINDINGS_COLUMNS, analyze, findings_table, split_values, write_findings_csv
from curation.cli import main


@pytest.fixture(scope="module")
def analyzed(small_class_tree, tmp_path_factory):
    """The 60-image tree plus an exact copy of one image, half tagged train and half test."""
    from curation.datasets import load_dataset
    from curation.embeddings import compute_embeddings
    from curation.importers import import_dataset

    tree = tmp_path_factory.mktemp("analysis-tree")
    shutil.copytree(small_class_tree, tree, dirs_exist_ok=True)
    original = sorted((tree / "bag").glob("*.png"))[0]
    shutil.copy(original, tree / "bag" / "zz_copy_of_first_bag.png")
    import_dataset(tree, "t-analysis", format="classes", overwrite=True)
    dataset = load_dataset("t-analysis")
    ids = dataset.values("id")
    dataset.select(ids[::2]).tag_samples("train")
    dataset.select(ids[1::2]).tag_samples("test")
    compute_embeddings(dataset, model="efficientnet-lite0-imagenet", num_workers=0)
    report = analyze(dataset, ["duplicates", "leakage", "outliers"])
    return dataset, report, original


def test_exact_copy_is_a_duplicate_and_a_leak(analyzed):
    dataset, report, original = analyzed
    assert set(report.results) == {"duplicates", "leakage", "outliers"} and not report.errors
    first = dataset.match({"filepath": str(original)}).first()
    copy = dataset.match({"filepath": str(original.parent / "zz_copy_of_first_bag.png")}).first()
    assert first["near_duplicate_group"] is not None and first["near_duplicate_group"] == copy["near_duplicate_group"]
    assert copy["nearest_neighbor_filepath"] == first.filepath and copy["nearest_neighbor_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert first["pixel_hash"] == copy["pixel_hash"]
    if first.tags != copy.tags:  # ids alternate train/test, so they may sit in different splits
        assert copy["leak_filepath"] == first.filepath


def test_findings_csv_has_the_documented_columns_and_ranges(analyzed, tmp_path, capsys):
    dataset, _, _ = analyzed
    out = tmp_path / "findings.csv"
    assert main(["findings", "--dataset", dataset.name, "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == FINDINGS_COLUMNS
    assert len(table) == len(dataset) == 61
    assert set(table["split"]) == {"train", "test"}
    for column in [c for c in FINDINGS_COLUMNS if c.endswith("_score")]:
        values = table[column].dropna()
        assert values.between(0, 1).all(), column
    assert table["mislabel_score"].isna().all()  # mislabels not run: empty cells, not zeros
    assert table["outlier_score"].notna().all()
    assert table["cluster"].notna().all()


def test_split_values_from_field_or_tags(analyzed):
    dataset, _, _ = analyzed
    ids = dataset.values("id")[:4]
    assert list(split_values(dataset, ids)) == ["train", "test", "train", "test"]
    with pytest.raises(ValueError, match="split field 'fold' does not exist"):
        split_values(dataset, ids, "fold")


def test_one_failing_finder_does_not_stop_the_others(analyzed, monkeypatch):
    from curation.finders import outliers

    dataset, _, _ = analyzed
    monkeypatch.setattr(outliers, "find_outliers", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    report = analyze(dataset, ["duplicates", "outliers"])
    assert report.errors == {"outliers": "RuntimeError: boom"}
    assert "duplicates" in report.results


def test_cli_analyze_prints_summaries_and_rejects_unknown_finders(analyzed, capsys):
    dataset, _, _ = analyzed
    assert main(["analyze", "--dataset", dataset.name, "--finders", "duplicates,outliers"]) == 0
    out = capsys.readouterr().out
    assert "duplicates: " in out and "near-duplicate groups" in out and "outliers: " in out
    assert main(["analyze", "--dataset", dataset.name, "--finders", "blur"]) == 1
    assert "unknown finder 'blur'. Available: mislabels, duplicates, leakage, outliers, label_next" in capsys.readouterr().err


def test_analyze_without_embeddings_says_what_to_run(small_class_tree, fresh_name, capsys):
    assert main(["import", str(small_class_tree / "bag"), "--name", fresh_name, "--format", "images"]) == 0
    assert main(["analyze", "--dataset", fresh_name]) == 1
    assert f"run `curation embed --dataset {fresh_name}` first" in capsys.readouterr().err
