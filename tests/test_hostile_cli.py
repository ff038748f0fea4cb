"""Every CLI command with hostile or wrong option values: a non-zero exit, one line on stderr
that says what was wrong, no traceback, and nothing half-written left behind.

Commands run in-process through :func:`curation.cli.main` (an uncaught exception fails the
test with its traceback); one subprocess run checks the real console output.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from curation.cli import main

DATASETS = {"ds": "hostile", "empty": "hostile-empty", "raw": "hostile-raw", "unlabelled": "hostile-unlabelled",
            "one": "hostile-one"}


@pytest.fixture(scope="module")
def names(embedded_dataset, small_class_tree):
    """Five datasets: analysed (``ds``), empty, images without embeddings (``raw``), embedded
    without labels (``unlabelled``) and a single embedded sample (``one``)."""
    import fiftyone as fo

    from curation.analysis import analyze
    from curation.importers import import_dataset

    for name in DATASETS.values():
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
    analysed = embedded_dataset.clone(DATASETS["ds"], persistent=True)
    analyze(analysed, ["duplicates", "outliers", "mislabels"])
    fo.Dataset(DATASETS["empty"], persistent=True)
    import_dataset(small_class_tree / "bag", DATASETS["raw"], format="images")
    unlabelled = embedded_dataset.clone(DATASETS["unlabelled"], persistent=True)
    unlabelled.delete_sample_field("ground_truth")
    embedded_dataset.limit(1).clone(DATASETS["one"], persistent=True)
    yield {**DATASETS, "id": analysed.first().id}
    for name in DATASETS.values():
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def run_cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """Exit code, the non-empty lines on stderr, and stdout of ``curation ARGV``."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refusing an option value
        code = exit_.code
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()], captured.out


ZERO_ID = "0" * 24

# (argv with {placeholders}, fragment the one error line must contain)
HOSTILE = {
    # a dataset that does not exist
    "embed-no-dataset": (["embed", "--dataset", "nope"], "no FiftyOne dataset named 'nope'"),
    "calibrate-no-dataset": (["calibrate", "--dataset", "nope"], "no FiftyOne dataset named 'nope'"),
    "analyze-no-dataset": (["analyze", "--dataset", "nope"], "no FiftyOne dataset named 'nope'"),
    "findings-no-dataset": (["findings", "--dataset", "nope", "--out", "{tmp}/f.csv"], "no FiftyOne dataset named 'nope'"),
    "queue-no-dataset": (["queue", "--dataset", "nope"], "no FiftyOne dataset named 'nope'"),
    "decide-no-dataset": (["decide", "--dataset", "nope", "--decision", "keep", "--ids", "{id}"],
                          "no FiftyOne dataset named 'nope'"),
    "undo-no-dataset": (["undo", "--dataset", "nope", "--ids", "{id}"], "no FiftyOne dataset named 'nope'"),
    "split-no-dataset": (["split", "--dataset", "nope"], "no FiftyOne dataset named 'nope'"),
    "export-no-dataset": (["export", "--dataset", "nope", "--format", "csv", "--out", "{tmp}/e"],
                          "no FiftyOne dataset named 'nope'"),
    "relabel-export-no-dataset": (["relabel-export", "--dataset", "nope", "--tool", "cvat", "--out", "{tmp}/t"],
                                  "no FiftyOne dataset named 'nope'"),
    # empty dataset, no embeddings, no labels, one sample
    "map-empty": (["map", "--dataset", "{empty}"], "has no embeddings yet"),
    "map-raw": (["map", "--dataset", "{raw}"], "has no embeddings yet"),
    "map-one-sample": (["map", "--dataset", "{one}"], "needs at least 2 embedded samples"),
    "calibrate-empty": (["calibrate", "--dataset", "{empty}"], "has no embeddings"),
    "calibrate-raw": (["calibrate", "--dataset", "{raw}"], "has no embeddings"),
    "analyze-empty": (["analyze", "--dataset", "{empty}"], "has no embeddings"),
    "analyze-raw": (["analyze", "--dataset", "{raw}"], "has no embeddings"),
    "queue-classes-unlabelled": (["queue", "--dataset", "{unlabelled}", "--classes", "bag"], "label field"),
    "decide-classes-unlabelled": (["decide", "--dataset", "{unlabelled}", "--decision", "keep", "--classes", "bag"],
                                  "label field"),
    # fields that do not exist, or are not what the option needs
    "map-no-field": (["map", "--dataset", "{ds}", "--field", "nope"], "no embedding field 'nope'"),
    "calibrate-no-field": (["calibrate", "--dataset", "{ds}", "--field", "nope"], "no embedding field 'nope'"),
    "analyze-no-field": (["analyze", "--dataset", "{ds}", "--field", "nope"], "no embedding field 'nope'"),
    "analyze-field-not-embeddings": (["analyze", "--dataset", "{ds}", "--field", "filepath"],
                                     "'filepath' is not an embedding field"),
    "analyze-no-label-field": (["analyze", "--dataset", "{ds}", "--label-field", "nope"],
                               "--label-field 'nope' is not a classification field"),
    "analyze-label-field-not-classification": (["analyze", "--dataset", "{ds}", "--label-field", "filepath"],
                                               "--label-field 'filepath' is not a classification field"),
    "analyze-no-split-field": (["analyze", "--dataset", "{ds}", "--split-field", "nope"],
                               "split field 'nope' does not exist"),
    "analyze-unknown-finder": (["analyze", "--dataset", "{ds}", "--finders", "nope"],
                               "unknown finder 'nope'. Available: mislabels, duplicates"),
    "analyze-no-finders": (["analyze", "--dataset", "{ds}", "--finders", " , "], "--finders"),
    "findings-no-split-field": (["findings", "--dataset", "{ds}", "--out", "{tmp}/f.csv", "--split-field", "nope"],
                                "split field 'nope' does not exist"),
    "queue-unknown-finder": (["queue", "--dataset", "{ds}", "--finders", "nope"], "unknown finder 'nope'"),
    "queue-label-field-not-classification": (["queue", "--dataset", "{ds}", "--label-field", "filepath"],
                                             "--label-field 'filepath' is not a classification field"),
    "decide-label-field-not-classification": (["decide", "--dataset", "{ds}", "--decision", "keep", "--ids", "{id}",
                                               "--label-field", "filepath"],
                                              "--label-field 'filepath' is not a classification field"),
    "decide-relabel-into-non-label-field": (["decide", "--dataset", "{ds}", "--decision", "relabel", "--label", "bag",
                                             "--ids", "{id}", "--label-field", "filepath"],
                                            "--label-field 'filepath' is not a classification field"),
    "decide-max-score-no-field": (["decide", "--dataset", "{ds}", "--decision", "keep", "--max-score", "nope=0.5"],
                                  "'nope' does not exist"),
    "decide-split-field-missing": (["decide", "--dataset", "{ds}", "--decision", "keep", "--split-field", "nope"],
                                   "'nope' does not exist"),
    "split-label-field-not-classification": (["split", "--dataset", "{ds}", "--label-field", "filepath"],
                                             "--label-field 'filepath' is not a classification or detections field"),
    "split-group-field-missing": (["split", "--dataset", "{ds}", "--group-field", "nope", "--dry-run"], "nope"),
    "export-label-field-not-classification": (["export", "--dataset", "{ds}", "--format", "csv", "--out", "{tmp}/e",
                                               "--label-field", "filepath"],
                                              "--label-field 'filepath' is not a classification or detections field"),
    # ids that are not ids, or match nothing
    "decide-bad-id": (["decide", "--dataset", "{ds}", "--decision", "keep", "--ids", "zzz"],
                      "--ids: 'zzz' is not a sample id"),
    "decide-unknown-id": (["decide", "--dataset", "{ds}", "--decision", "keep", "--ids", ZERO_ID],
                          f"not in dataset 'hostile': {ZERO_ID}"),
    "decide-unknown-class": (["decide", "--dataset", "{ds}", "--decision", "keep", "--classes", "nope"],
                             "no sample matches --classes nope"),
    "decide-no-tag-match": (["decide", "--dataset", "{ds}", "--decision", "keep", "--tags", "nope"],
                            "no sample matches --tags nope"),
    "decide-relabel-no-class": (["decide", "--dataset", "{ds}", "--decision", "relabel", "--ids", "{id}"],
                                "expected --label CLASS or --accept-suggestion"),
    "decide-ids-file-missing": (["decide", "--dataset", "{ds}", "--decision", "keep", "--ids-file", "{tmp}/none.txt"],
                                "no such file"),
    "undo-bad-id": (["undo", "--dataset", "{ds}", "--ids", "zzz"], "--ids: 'zzz' is not a sample id"),
    "undo-unknown-id": (["undo", "--dataset", "{ds}", "--ids", ZERO_ID], f"not in dataset 'hostile': {ZERO_ID}"),
    "export-bad-id": (["export", "--dataset", "{ds}", "--format", "csv", "--out", "{tmp}/e", "--ids", "zzz"],
                      "--ids: 'zzz' is not a sample id"),
    # output paths: a directory, a missing folder
    "findings-out-directory": (["findings", "--dataset", "{ds}", "--out", "{tmp}"], "is a directory"),
    "findings-out-missing-folder": (["findings", "--dataset", "{ds}", "--out", "{tmp}/missing/f.csv"],
                                    "missing does not exist"),
    "queue-out-directory": (["queue", "--dataset", "{ds}", "--out", "{tmp}"], "is a directory"),
    "queue-out-missing-folder": (["queue", "--dataset", "{ds}", "--out", "{tmp}/missing/q.csv"],
                                 "missing does not exist"),
    # option values out of range (argparse refuses them before anything runs)
    "calibrate-precision-above-1": (["calibrate", "--dataset", "{ds}", "--target-precision", "2"],
                                    "--target-precision: expected a number in (0, 1], got '2'"),
    "calibrate-precision-nan": (["calibrate", "--dataset", "{ds}", "--target-precision", "nan"],
                                "--target-precision: expected a number in (0, 1], got 'nan'"),
    "calibrate-precision-zero": (["calibrate", "--dataset", "{ds}", "--target-precision", "0"],
                                 "--target-precision: expected a number in (0, 1], got '0'"),
    "calibrate-sample-size-zero": (["calibrate", "--dataset", "{ds}", "--sample-size", "0"],
                                   "--sample-size: expected a whole number >= 1, got '0'"),
    "queue-min-priority-above-1": (["queue", "--dataset", "{ds}", "--min-priority", "1.5"],
                                   "--min-priority: expected a number in [0, 1], got '1.5'"),
    "queue-min-priority-nan": (["queue", "--dataset", "{ds}", "--min-priority", "nan"],
                               "--min-priority: expected a number in [0, 1], got 'nan'"),
    "queue-limit-negative": (["queue", "--dataset", "{ds}", "--limit", "-1"], "--limit: expected a whole number >= 0"),
    "map-n-neighbors-1": (["map", "--dataset", "{ds}", "--n-neighbors", "1"], "--n-neighbors: expected a whole number >= 2"),
    "map-min-dist-negative": (["map", "--dataset", "{ds}", "--min-dist", "-0.1"],
                              "--min-dist: expected a finite number >= 0, got '-0.1'"),
    "map-min-dist-inf": (["map", "--dataset", "{ds}", "--min-dist", "inf"], "--min-dist: expected a finite number >= 0"),
    "embed-batch-size-zero": (["embed", "--dataset", "{ds}", "--batch-size", "0"], "--batch-size: expected a whole number >= 1"),
    "embed-workers-negative": (["embed", "--dataset", "{ds}", "--workers", "-2"], "--workers: expected a whole number >= 0"),
    "embed-image-size-word": (["embed", "--dataset", "{ds}", "--image-size", "huge"],
                              "--image-size: expected a whole number of pixels from 32 to 1024 or 'auto', got 'huge'"),
    "embed-image-size-tiny": (["embed", "--dataset", "{ds}", "--image-size", "8"],
                              "--image-size: expected a whole number of pixels from 32 to 1024 or 'auto', got '8'"),
    "embed-batch-size-word": (["embed", "--dataset", "{ds}", "--batch-size", "many"],
                              "--batch-size: expected a whole number >= 1, got 'many'"),
    "split-cap-zero": (["split", "--dataset", "{ds}", "--balance", "cap", "--cap", "0"], "--cap: expected a whole number >= 1"),
    "split-target-negative": (["split", "--dataset", "{ds}", "--balance", "undersample", "--target", "-5"],
                              "--target: expected a whole number >= 1"),
    "decide-max-score-nan": (["decide", "--dataset", "{ds}", "--decision", "keep", "--max-score", "mislabel_score=nan"],
                             "--max-score"),
    # files that are not what they claim
    "relabel-import-missing-file": (["relabel-import", "--dataset", "{ds}", "--from", "{tmp}/none.xml"], "none.xml"),
    "relabel-import-garbage": (["relabel-import", "--dataset", "{ds}", "--from", "{tmp}/garbage.json"], "garbage.json"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_option_values_exit_non_zero_with_one_line(case, names, tmp_path, capsys):
    argv_template, fragment = HOSTILE[case]
    (tmp_path / "garbage.json").write_text("{not json")
    argv = [part.format(tmp=tmp_path, **names) for part in argv_template]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err, _ = run_cli(argv, capsys)
    assert code not in (0, None), f"{argv} exited 0"
    assert len(err) == 1, err
    assert err[0].startswith(f"curation {argv[0]}: error: "), err[0]
    assert fragment.format(**names) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no partial file left


def test_findings_to_a_directory_leaves_no_partial_file(names, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("untouched")
    code, err, _ = run_cli(["findings", "--dataset", names["ds"], "--out", str(tmp_path)], capsys)
    assert code == 1 and len(err) == 1 and "is a directory" in err[0]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_decide_with_one_unknown_id_decides_nothing(names, capsys):
    from curation.datasets import load_dataset

    dataset = load_dataset(names["ds"])
    # a good id beside a bad one: the whole command is refused, the good sample is not decided
    code, err, _ = run_cli(["decide", "--dataset", names["ds"], "--decision", "remove", "--ids",
                            f"{names['id']},{ZERO_ID}"], capsys)
    assert code == 1 and f"1 of 2 ids are not in dataset 'hostile': {ZERO_ID}" in err[0]
    assert dataset.has_sample_field("decision") is False or dataset[names["id"]]["decision"] is None


def test_undo_of_samples_without_decisions_is_not_an_error(names, capsys):
    code, err, out = run_cli(["undo", "--dataset", names["ds"], "--ids", names["id"]], capsys)
    assert code == 0 and not err
    assert "undid 0 decision(s); nothing to undo for 1 sample" in out


def test_relabel_may_name_a_new_label_field(names, capsys):
    """Labelling an unlabelled dataset from the CLI: relabel creates the field it is told to."""
    from curation.datasets import load_dataset

    dataset = load_dataset(names["raw"])
    sample_id = dataset.first().id
    code, err, out = run_cli(["decide", "--dataset", names["raw"], "--decision", "relabel", "--label", "bag",
                              "--ids", sample_id, "--label-field", "new_labels"], capsys)
    assert code == 0 and not err and "relabel: 1 samples" in out
    assert load_dataset(names["raw"])[sample_id]["new_labels"].label == "bag"


def test_a_real_console_run_prints_one_line_and_no_traceback(names, tmp_path):
    """The installed entry point, as a shell script sees it (tracebacks would show here)."""
    command = [sys.executable, "-m", "curation.cli", "decide", "--dataset", names["ds"], "--decision", "keep",
               "--ids", "zzz"]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0] == "curation decide: error: --ids: 'zzz' is not a sample id (expected 24 hex digits)"
