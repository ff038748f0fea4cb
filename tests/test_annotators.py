"""Several annotations per sample: import (CSV, Label Studio, CVAT, fields), agreement,
consensus (majority, Dawid-Skene, CROWDLAB), gold accuracy, and the CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation import annotators as ann
from curation.errors import CurationInputError

CLASSES = ["cat", "dog", "bird"]


def _cli(argv):
    """curation.cli.main with the annotator commands registered (until cli.py registers them)."""
    import curation.cli as cli
    from curation.cli_annotators import register

    original = cli.build_parser

    def build():
        parser = original()
        commands = next(a for a in parser._subparsers._group_actions if hasattr(a, "choices"))
        if "agreement" not in commands.choices:
            register(commands)
        return parser

    cli.build_parser = build
    try:
        return cli.main(argv)
    finally:
        cli.build_parser = original


@pytest.fixture
def dataset(fresh_name, tmp_path):
    import fiftyone as fo

    dataset = fo.Dataset(fresh_name)
    dataset.persistent = True
    samples = []
    for i in range(30):
        sample = fo.Sample(filepath=str(tmp_path / "images" / f"img{i:02d}.png"))
        sample["ground_truth"] = fo.Classification(label=CLASSES[i % 3])
        samples.append(sample)
    dataset.add_samples(samples)
    return dataset


def _simulated_rows(dataset, seed=0):
    """3 annotators on every sample: ann-good 100% right, ann-ok ~80%, ann-bad random."""
    rng = np.random.default_rng(seed)
    rows = []
    for sample in dataset:
        truth = sample.ground_truth.label
        for name, accuracy in (("ann-good", 1.0), ("ann-ok", 0.8), ("ann-bad", 0.0)):
            label = truth if rng.random() < accuracy else CLASSES[rng.integers(3)]
            rows.append((sample.filepath, name, label))
    return rows


def _write_csv(path, rows, header="filepath,annotator,label"):
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


# ------------------------------------------------------------ statistics against textbooks


def test_krippendorff_alpha_matches_krippendorffs_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal data: 0.743.
    m = -1
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, m, m, m],
              [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, m, 3],
              [m, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, m],
              [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, m]]
    assert ann.krippendorff_alpha(np.array(coders).T) == pytest.approx(0.743, abs=5e-4)


def test_fleiss_kappa_matches_fleiss_example():
    # The worked example of Fleiss' kappa (Wikipedia; 10 subjects, 14 raters): 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert ann.fleiss_kappa(np.array(table)) == pytest.approx(0.210, abs=5e-4)
    per_class = ann.fleiss_kappa_per_class(np.array(table))
    assert per_class.shape == (5,) and np.all(np.isfinite(per_class))


def test_perfect_agreement_and_wilson():
    votes = ann.votes_from_table([(str(i), a, CLASSES[i % 3]) for i in range(9) for a in "xyz"])
    assert ann.krippendorff_alpha(votes.matrix) == pytest.approx(1.0)
    assert ann.fleiss_kappa(votes.counts) == pytest.approx(1.0)
    low, high = ann.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert ann.wilson_interval(0, 0) == (0.0, 1.0)


def test_dawid_skene_recovers_truth_and_ranks_annotators():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 400)
    accuracy = {"a": 0.9, "b": 0.8, "c": 0.65, "d": 0.35}
    rows = [(str(i), name, str(t if rng.random() < q else rng.integers(0, 4)))
            for i, t in enumerate(truth) for name, q in accuracy.items()]
    votes = ann.votes_from_table(rows)
    majority = ann.majority_vote(votes)
    ds = ann.dawid_skene(votes)
    truth_text = truth.astype(str)
    assert np.mean(np.array(ds.labels) == truth_text) > np.mean(np.array(majority.labels) == truth_text)
    ranked = sorted(ds.annotator_quality, key=ds.annotator_quality.get, reverse=True)
    assert ranked == ["a", "b", "c", "d"]
    assert np.allclose(ds.probabilities.sum(axis=1), 1) and ((ds.quality > 0) & (ds.quality <= 1)).all()


def test_crowdlab_with_pred_probs():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 120)
    rows = [(str(i), name, CLASSES[t if rng.random() < q else rng.integers(0, 3)])
            for i, t in enumerate(truth) for name, q in (("a", 0.95), ("b", 0.7), ("c", 0.4))]
    votes = ann.votes_from_table(rows)
    probs = np.full((120, 3), 0.1)
    probs[np.arange(120), [votes.classes.index(CLASSES[t]) for t in truth]] = 0.8
    result = ann.consensus(votes, pred_probs=probs)
    assert result.method == "crowdlab"
    assert np.mean(np.array(result.labels) == np.array([CLASSES[t] for t in truth])) > 0.95
    assert result.annotator_quality["a"] > result.annotator_quality["b"] > result.annotator_quality["c"]
    assert set(result.worst_class) == {"a", "b", "c"}
    with pytest.raises(CurationInputError, match="embeddings"):
        ann.consensus(votes, "crowdlab")
    assert ann.consensus(votes).method == "dawid-skene"  # no embeddings: chosen by what the data allows


# ------------------------------------------------------------ import


def test_import_csv_agreement_consensus_gold(dataset, tmp_path):
    rows = _simulated_rows(dataset)
    report = ann.import_annotations(dataset, _write_csv(tmp_path / "votes.csv", rows))
    assert report.n_votes == 90 and report.n_samples == 30 and not report.n_problems
    sample = dataset.first()
    assert {c.annotator for c in sample.annotations.classifications} == {"ann-good", "ann-ok", "ann-bad"}
    assert sample.annotations.classifications[0].source == "csv:votes.csv"
    # re-importing replaces the same annotators' votes instead of adding more
    ann.import_annotations(dataset, tmp_path / "votes.csv")
    assert len(dataset.first().annotations.classifications) == 3

    votes = ann.read_votes(dataset)
    result = ann.agreement(votes)
    assert set(result) >= {"alpha", "kappa", "annotators", "per_class", "pairs", "confused"}
    by_name = {row["annotator"]: row for row in result["annotators"]}
    assert by_name["ann-good"]["quality"] > by_name["ann-bad"]["quality"]
    assert all(row["n"] == 30 for row in result["annotators"])
    json.dumps(result)  # JSON-ready

    cons = ann.consensus(votes, "dawid-skene")
    ann.write_consensus(dataset, cons)
    assert dataset.count("consensus") == 30 and dataset.count("consensus_quality") == 30
    gold = ann.gold_labels(dataset, field_name="ground_truth")
    table = {row["annotator"]: row for row in ann.gold_accuracy(votes, gold)}
    assert table["ann-good"]["accuracy"] == 1.0 and table["ann-good"]["n"] == 30
    assert table["ann-good"]["ci_low"] > 0.85 and table["ann-bad"]["ci_high"] < 0.8
    dataset.take(5, seed=0).tag_samples("gold")
    assert len(ann.gold_labels(dataset, tag="gold")) == 5


def test_import_by_id_with_time_and_tab_delimiter(dataset, tmp_path):
    ids = dataset.values("id")
    path = tmp_path / "votes.tsv"
    path.write_text("id\tannotator\tlabel\ttime\n" + "".join(f"{i}\tamy\tcat\t2024-01-01\n" for i in ids[:4]))
    report = ann.import_annotations(dataset, path, format="csv")
    assert report.n_votes == 4
    assert dataset[ids[0]].annotations.classifications[0].time == "2024-01-01"


def test_hostile_csv_rows_are_named_and_rest_imported(dataset, tmp_path):
    good = dataset.first().filepath
    path = tmp_path / "bad.csv"
    lines = ["filepath,annotator,label",
             f"{good},amy,cat",
             f"{good},../../etc/passwd,cat",          # path-like annotator
             f"{good},bob,",                           # empty label
             "/nowhere/missing.png,amy,cat",           # unknown file
             f"{good},carl,{'x' * 500}",               # label too long
             f"{good},dan",                            # too few fields
             f"{good},eve\x07,dog",                    # control character
             f"{good},amy,dog"]                        # a second vote of amy: kept the later
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"/x/y.png,fr\xe9d,cat\n")
    report = ann.import_annotations(dataset, path)
    text = "\n".join(report.problems)
    assert report.n_votes == 1 and report.n_problems == 8
    assert "bad.csv:3" in text and "looks like a file path" in text
    assert "bad.csv:4: label is empty" in text
    assert "no sample of dataset" in text and "missing.png" in text
    assert "at most 200" in text and "expected 3" in text and "control characters" in text
    assert "kept the later vote" in text
    assert dataset.first().annotations.classifications[0].label == "dog"
    assert "8 problem(s)" in report.summary()


def test_hostile_files(dataset, tmp_path):
    with pytest.raises(CurationInputError, match="no such file"):
        ann.import_annotations(dataset, tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CurationInputError, match="empty"):
        ann.import_annotations(dataset, tmp_path / "empty.csv")
    (tmp_path / "cols.csv").write_text("path,who,what\na,b,c\n")
    with pytest.raises(CurationInputError, match="lacks the column"):
        ann.import_annotations(dataset, tmp_path / "cols.csv")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CurationInputError, match="not Label Studio JSON"):
        ann.import_annotations(dataset, tmp_path / "x.json")
    (tmp_path / "x.xml").write_text("<annotations><image")
    with pytest.raises(CurationInputError, match="not CVAT XML"):
        ann.import_annotations(dataset, tmp_path / "x.xml")
    (tmp_path / "x.bin").write_text("a")
    with pytest.raises(CurationInputError, match="cannot tell the format"):
        ann.import_annotations(dataset, tmp_path / "x.bin")
    with pytest.raises(CurationInputError, match="expected a regular file"):
        ann.import_annotations(dataset, tmp_path)
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as handle:  # sparse: no disk used
        handle.truncate(ann.MAX_FILE_BYTES + 1)
    with pytest.raises(CurationInputError, match="MiB"):
        ann.import_annotations(dataset, huge)
    with pytest.raises(CurationInputError, match="format"):
        ann.import_annotations(dataset, tmp_path / "x.json", format="yaml")
    assert not dataset.has_sample_field("annotations")  # nothing was written


def test_import_labelstudio(dataset, tmp_path):
    samples = list(dataset.limit(3))
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=" + samples[0].filepath},
         "annotations": [{"completed_by": 1, "result": [{"value": {"choices": ["cat"]}}]},
                         {"completed_by": {"email": "b@x.org"}, "result": [{"value": {"choices": ["dog"]}}]},
                         {"completed_by": 3, "was_cancelled": True, "result": []}]},
        {"id": 2, "data": {"sample_id": samples[1].id},
         "annotations": [{"completed_by": 1, "result": [{"value": {"choices": ["bird"]}}]},
                         {"completed_by": 2, "result": []}]},
        {"id": 3, "data": {"image": "s3://bucket/unknown.png"}, "annotations": [{"completed_by": 1, "result": [
            {"value": {"choices": ["cat"]}}]}]},
        "junk",
    ]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(tasks))
    report = ann.import_annotations(dataset, path)
    assert report.n_votes == 3 and report.annotators == ["1", "b@x.org"]
    text = "\n".join(report.problems)
    assert "task 2 annotation 2: label is missing" in text and "unknown.png" in text and "task 4" in text
    first = samples[0].reload() or dataset[samples[0].id]
    assert sorted(c.label for c in first.annotations.classifications) == ["cat", "dog"]


def test_import_cvat_and_fields(dataset, tmp_path):
    names = [s.filepath.rsplit("/", 1)[-1] for s in dataset.limit(2)]
    xml = ("<annotations><meta><job><id>7</id><assignee>anna</assignee></job></meta>"
           f"<image id='0' name='{names[0]}'><tag label='cat'/></image>"
           f"<image id='1' name='{names[1]}'><tag label='dog'/></image>"
           "<image id='2' name='ghost.png'><tag label='dog'/></image></annotations>")
    (tmp_path / "job7.xml").write_text(xml)
    report = ann.import_annotations(dataset, tmp_path / "job7.xml")
    assert report.n_votes == 2 and report.annotators == ["anna"] and report.n_problems == 1

    import fiftyone as fo

    for sample in dataset:
        sample["rater2"] = fo.Classification(label="bird")
        sample.save()
    report = ann.import_annotations(dataset, format="fields", fields=["ground_truth", "rater2"])
    assert report.n_votes == 60 and report.annotators == ["ground_truth", "rater2"]
    with pytest.raises(KeyError, match="no field"):
        ann.import_annotations(dataset, format="fields", fields=["nope"])


# ------------------------------------------------------------ CLI


def test_cli_import_agreement_consensus(dataset, tmp_path, capsys):
    name = dataset.name
    path = _write_csv(tmp_path / "votes.csv", _simulated_rows(dataset) + [("/x/ghost.png", "amy", "cat")])
    assert _cli(["import-annotations", "--dataset", name, "--from", str(path)]) == 0
    captured = capsys.readouterr()
    assert "imported 90 annotation(s) on 30 sample(s) from 3 annotator(s)" in captured.out
    assert "votes.csv:92" in captured.err and "ghost.png" in captured.err

    assert _cli(["agreement", "--dataset", name, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"alpha", "kappa", "annotators"} <= set(result)
    assert {tuple(sorted(row)) for row in result["annotators"]} == {
        ("agreement", "annotator", "n", "quality", "worst_class")}
    assert _cli(["agreement", "--dataset", name]) == 0
    assert "Krippendorff's alpha" in capsys.readouterr().out
    dataset.limit(10).tag_samples("gold")
    assert _cli(["agreement", "--dataset", name, "--json", "--gold-tag", "gold"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_gold"] == 10 and {r["annotator"]: r["n"] for r in result["gold"]}["ann-good"] == 10
    assert _cli(["agreement", "--dataset", name, "--gold-field", "ground_truth"]) == 0
    assert "gold: ann-good: 30/30 right" in capsys.readouterr().out

    assert _cli(["consensus", "--dataset", name, "--method", "majority", "--into", "cons"]) == 0
    assert dataset.count("cons") == 30 and dataset.count("cons_quality") == 30
    assert _cli(["consensus", "--dataset", name]) == 0  # no embeddings: Dawid-Skene, with a note
    captured = capsys.readouterr()
    assert "dawid-skene" in captured.out and "CROWDLAB needs embeddings" in captured.err
    assert dataset.count("consensus") == 30

    for bad in ("filepath", "a.b", "../x", "ground_truth"):  # built-in, dotted, path, other type
        assert _cli(["consensus", "--dataset", name, "--method", "majority", "--into", bad]) == 1
        err = capsys.readouterr().err
        assert ("expected letters" in err) if bad != "ground_truth" else ("no consensus wrote" in err)
    assert dataset.distinct("ground_truth.label") == sorted(CLASSES)  # the ground truth is untouched
    assert _cli(["import-annotations", "--dataset", name, "--from", str(path), "--into", "ground_truth"]) == 1
    assert "holds fiftyone.core.labels.Classification" in capsys.readouterr().err
    assert _cli(["consensus", "--dataset", name, "--method", "crowdlab"]) == 1
    assert "has no embeddings" in capsys.readouterr().err
    assert _cli(["import-annotations", "--dataset", name, "--from", str(tmp_path / "none.csv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    assert _cli(["agreement", "--dataset", name, "--field", "nothing"]) == 1
    assert "import-annotations" in capsys.readouterr().err


def test_cli_crowdlab_with_embeddings(dataset, tmp_path, capsys):
    rng = np.random.default_rng(0)
    centres = {c: rng.normal(size=16) * 4 for c in CLASSES}
    for sample in dataset:
        sample["embedding"] = (centres[sample.ground_truth.label] + rng.normal(size=16)).astype(np.float32)
        sample.save()
    from curation.datasets import update_curation_info

    update_curation_info(dataset, default_embeddings="embedding")
    by_path = dict(zip(*dataset.values(["filepath", "id"])))
    table = [(by_path[fp], a, lab) for fp, a, lab in _simulated_rows(dataset)]
    ann.import_annotations(dataset, _write_csv(tmp_path / "ids.csv", table, header="id,annotator,label"))
    assert _cli(["consensus", "--dataset", dataset.name]) == 0
    out = capsys.readouterr().out
    assert "crowdlab consensus" in out
    truth = dict(zip(*dataset.values(["id", "ground_truth.label"])))
    got = dict(zip(*dataset.values(["id", "consensus.label"])))
    assert np.mean([got[s] == truth[s] for s in truth]) >= 0.9



def test_too_many_sample_annotator_cells_is_refused(monkeypatch):
    monkeypatch.setattr(ann, "MAX_VOTE_CELLS", 100)
    rows = [(str(i), f"annotator-{i}", "cat") for i in range(20)]  # 20 x 20 cells
    with pytest.raises(CurationInputError, match="sample-annotator cells"):
        ann.votes_from_table(rows)
