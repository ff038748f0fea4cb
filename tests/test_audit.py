"""Audits: the estimator on arrays (unbiased, covers), the designs, answers and the CLI round trip."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from curation.audit import (AuditError, allocate, answer, audit_report, estimate, plan, start_audit, verdicts_for_margin,
                            wilson)


def _population(n=4000, rate=0.1, seed=3):
    rng = np.random.default_rng(seed)
    labels = np.array([f"c{k}" for k in rng.integers(0, 5, n)], dtype=object)
    wrong = rng.random(n) < rate
    score = np.where(wrong, rng.beta(4, 2, n), rng.beta(1, 4, n))
    return labels, wrong, score


# ----------------------------------------------------------------------------- arrays


def test_allocation_sums_respects_sizes_and_floor():
    counts = allocate(np.array([5000, 3000, 1000, 500, 500]), 100, np.array([0.1, 0.1, 0.3, 0.5, 0.5]), min_each=5)
    assert counts.sum() == 100 and (counts >= 5).all() and counts[0] > counts[-1]
    assert allocate(np.array([3, 1000]), 50).tolist()[0] == 3  # capped at the stratum size
    assert allocate(np.array([10, 10, 10]), 2).sum() == 2  # fewer draws than strata
    assert allocate(np.array([4, 6]), 10).tolist() == [4, 6]
    with pytest.raises(ValueError, match="larger than"):
        allocate(np.array([4, 6]), 11)


@pytest.mark.parametrize("design", ["uniform", "stratified", "score"])
def test_design_inclusion_probabilities_are_known(design):
    labels, _, score = _population()
    drawn = plan(design, labels, 200, scores=score, seed=1)
    idx = drawn["indices"]
    assert len(idx) == 200 == len(set(idx.tolist()))
    expected = (drawn["counts"] / drawn["sizes"])[drawn["strata"][idx]]
    assert np.allclose(drawn["pi"], expected)
    assert np.isclose((1 / drawn["pi"]).sum(), len(labels))  # HT estimate of N is exact
    if design == "stratified":
        assert len(drawn["names"]) == 5 and (drawn["counts"] >= 5).all()
    if design == "score":  # oversamples high scores
        top = drawn["strata"] == drawn["strata"].max()
        assert drawn["pi"][top[idx]].mean() > drawn["pi"][~top[idx]].mean()
    again = plan(design, labels, 200, scores=score, seed=1)
    assert np.array_equal(again["indices"], idx)


def test_score_design_puts_missing_scores_in_their_own_stratum():
    labels, _, score = _population(500)
    score = score.copy()
    score[:40] = np.nan
    drawn = plan("score", labels, 60, scores=score, seed=0)
    assert drawn["names"][-1] == "no score" and drawn["sizes"][-1] == 40 and drawn["counts"][-1] >= 5


@pytest.mark.parametrize("design", ["uniform", "score", "stratified"])
def test_estimator_is_unbiased_and_covers(design):
    labels, wrong, score = _population()
    truth = wrong.mean()
    estimates, covered, widths = [], [], []
    for seed in range(150):
        drawn = plan(design, labels, 300, scores=score, seed=seed)
        idx = drawn["indices"]
        result = estimate(drawn["strata"][idx], wrong[idx], drawn["sizes"])
        estimates.append(result["rate"])
        covered.append(result["ci_low"] <= truth <= result["ci_high"])
        widths.append(result["ci_high"] - result["ci_low"])
    estimates = np.array(estimates)
    assert abs(estimates.mean() - truth) < 3 * estimates.std() / np.sqrt(len(estimates)) + 1e-3
    assert 0.88 <= np.mean(covered) <= 1.0
    test_estimator_is_unbiased_and_covers.widths[design] = np.mean(widths)


test_estimator_is_unbiased_and_covers.widths = {}


def test_score_design_is_narrower_than_uniform():
    labels, wrong, score = _population()
    widths = {}
    for design in ("uniform", "score"):
        runs = []
        for seed in range(40):
            drawn = plan(design, labels, 300, scores=score, seed=seed)
            idx = drawn["indices"]
            result = estimate(drawn["strata"][idx], wrong[idx], drawn["sizes"])
            runs.append(result["ci_high"] - result["ci_low"])
        widths[design] = np.mean(runs)
    assert widths["score"] < 0.8 * widths["uniform"]


def test_domain_estimate_and_edge_cases():
    strata = np.array([0, 0, 0, 1, 1, 1])
    wrong = np.array([1, 0, 0, 0, 0, 1], dtype=bool)
    sizes = np.array([30, 60])
    result = estimate(strata, wrong, sizes)
    assert np.isclose(result["rate"], (30 * 1 / 3 + 60 * 1 / 3) / 90)
    part = estimate(strata, wrong, sizes, domain=np.array([1, 1, 0, 0, 1, 1], dtype=bool))
    assert np.isclose(part["rate"], (10 * 1 + 20 * 1) / (10 * 2 + 20 * 2)) and part["n"] == 4
    none = estimate(np.zeros(0, dtype=int), np.zeros(0, dtype=bool), sizes)
    assert none["rate"] is None and none["n"] == 0
    zero = estimate(np.zeros(50, dtype=int), np.zeros(50, dtype=bool), np.array([1000]))
    assert zero["rate"] == 0 and zero["ci_low"] == 0 and 0.03 < zero["ci_high"] < 0.1  # never a zero-width interval
    low, high = wilson(0.5, 100)
    assert np.isclose(low, 0.4038, atol=1e-3) and np.isclose(high, 0.5962, atol=1e-3)
    assert verdicts_for_margin(None, 0, 0, 0.05) == 385
    assert verdicts_for_margin(None, 0, 0, 0.05, population=60) <= 60  # never more than the dataset holds
    assert verdicts_for_margin(None, 0, 0, 0.05, population=10_000_000) == 385
    assert verdicts_for_margin(0.1, 100, 200, 0.02) < verdicts_for_margin(0.1, 100, 100, 0.02)


# ----------------------------------------------------------------------------- datasets


def _make_dataset(name, n=60, *, scores=True):
    import fiftyone as fo

    dataset = fo.Dataset(name)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        sample = fo.Sample(filepath=f"/nonexistent/audit/{i}.png",
                           ground_truth=fo.Classification(label=["cat", "dog", "bird"][i % 3]))
        if scores:
            sample["mislabel_score"] = float(rng.random())
        samples.append(sample)
    dataset.add_samples(samples)
    return dataset


def test_start_answer_report(fresh_name):
    from curation.datasets import curation_info

    dataset = _make_dataset(fresh_name)
    started = start_audit(dataset, 20, "score", seed=4)
    audit = curation_info(dataset)["audit"]
    assert audit["id"] == started.audit_id and audit["design"] == "score" and len(audit["samples"]) == 20
    assert all(0 < pi <= 1 for _, pi in audit["samples"].values())
    assert dataset.exists("audit_id").count() == 20 and dataset.exists("audit_verdict").count() == 0
    with pytest.raises(AuditError, match="is open"):
        start_audit(dataset, 10)

    ids = started.ids
    rows = ([{"id": ids[0], "verdict": "wrong", "label": "dog" if dataset[ids[0]].ground_truth.label != "dog" else "cat"}]
            + [{"id": sid, "verdict": "Correct ", "label": ""} for sid in ids[1:15]]
            + [{"id": ids[15], "verdict": "unsure"}]
            + [{"id": "nonsense", "verdict": "wrong"}, {"id": ids[16], "verdict": "maybe"},
               {"id": dataset.exclude(ids).first().id, "verdict": "correct"}, "not a row",
               {"id": "5f" * 12, "verdict": "correct"}])
    result = answer(dataset, rows)
    assert result.recorded == 16 and result.relabeled == 1
    assert result.rejected[0] == "row 17: id 'nonsense' is not a sample id"
    assert "row 18: verdict 'maybe' is not one of correct, wrong, unsure" in result.rejected
    assert any(m.startswith("row 19: sample ") and "is not in audit" in m for m in result.rejected)
    assert "row 20: expected columns id, verdict, label" in result.rejected
    assert any(m.startswith("row 21: no sample 5f5f") for m in result.rejected)
    relabelled = dataset[ids[0]]
    assert relabelled["decision"] == "relabel" and relabelled["decision_source"] == "audit"
    assert relabelled["audit_label"] != relabelled.ground_truth.label  # the audit keeps the label as drawn

    report = audit_report(dataset, margin=0.05)
    assert report["n_answered"] == 15 and report["n_unsure"] == 1 and report["n_pending"] == 4
    assert report["n_wrong"] == 1 and 0 < report["error_rate"] < report["ci_high"] and report["ci_low"] >= 0
    assert set(report["per_class"]) <= {"cat", "dog", "bird"}
    assert sum(part["n_answered"] for part in report["per_class"].values()) == 15
    assert report["more_verdicts_for_margin"] > 0 and report["projected_wrong"] >= 1
    json.dumps(report)

    replaced = start_audit(dataset, 10, "uniform", seed=1, replace=True)
    assert replaced.audit_id != started.audit_id
    assert dataset.exists("audit_id").count() == 10 and dataset.exists("audit_verdict").count() == 0
    history = curation_info(dataset)["audit_history"]
    assert history[-1]["audit_id"] == started.audit_id and history[-1]["n_answered"] == 15


def test_score_design_needs_scores_and_no_audit_errors(fresh_name):
    dataset = _make_dataset(fresh_name, 12, scores=False)
    with pytest.raises(AuditError, match="curation analyze"):
        start_audit(dataset, 5, "score")
    with pytest.raises(AuditError, match="no audit"):
        audit_report(dataset)
    with pytest.raises(ValueError, match="larger than the 12"):
        start_audit(dataset, 13)
    with pytest.raises(ValueError, match="unknown audit design"):
        start_audit(dataset, 5, "random")


# ----------------------------------------------------------------------------- CLI


def _cli(argv):
    from curation import cli
    from curation.cli_audit import register

    original = cli.build_parser

    def build_parser():
        parser = original()
        commands = next(a for a in parser._actions if a.dest == "command")
        if "audit" not in commands.choices:
            register(commands)
        return parser

    cli.build_parser = build_parser
    try:
        return cli.main(argv)
    finally:
        cli.build_parser = original


def test_cli_round_trip(fresh_name, tmp_path, capsys):
    dataset = _make_dataset(fresh_name, 90)
    out = tmp_path / "drawn.csv"
    assert _cli(["audit", "start", "--dataset", fresh_name, "--size", "30", "--design", "stratified",
                 "--seed", "2", "--out", str(out)]) == 0
    assert "drew 30 samples (stratified; bird: 10/30" in capsys.readouterr().out
    with open(out, newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle)]
    assert len(ids) == 30 and not list(tmp_path.glob("*.partial*"))

    assert _cli(["audit", "start", "--dataset", fresh_name, "--size", "5"]) == 1
    assert "curation audit: error: audit" in capsys.readouterr().err

    verdicts = tmp_path / "verdicts.csv"
    lines = ["\ufeffID,Verdict,Label"] + [f"{sid},{'wrong' if k < 3 else 'correct'},{'fish' if k < 3 else ''}"
                                          for k, sid in enumerate(ids)] + ["bogus,wrong,cat"]
    verdicts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _cli(["audit", "answer", "--dataset", fresh_name, "--from", str(verdicts)]) == 1
    captured = capsys.readouterr()
    assert "recorded 30 verdicts; relabelled 3 samples; rejected 1 rows" in captured.out
    assert "rejected row 31: id 'bogus' is not a sample id" in captured.err
    dataset.reload()
    assert dataset.count_values("ground_truth.label")["fish"] == 3

    assert _cli(["audit", "report", "--dataset", fresh_name, "--json", "--margin", "0.05"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_answered"] == 30 and np.isclose(report["error_rate"], 0.1)
    assert report["ci_low"] < 0.1 < report["ci_high"] and set(report["per_class"]) == {"cat", "dog", "bird"}
    assert _cli(["audit", "report", "--dataset", fresh_name]) == 0
    assert "wrong labels: 10.0%" in capsys.readouterr().out

    bad = tmp_path / "bad.csv"
    bad.write_text("sample,answer\nx,y\n")
    assert _cli(["audit", "answer", "--dataset", fresh_name, "--from", str(bad)]) == 1
    assert "expected columns id, verdict" in capsys.readouterr().err
    assert _cli(["audit", "start", "--dataset", fresh_name, "--size", "5", "--replace",
                 "--out", str(tmp_path / "missing" / "x.csv")]) == 1
    with pytest.raises(SystemExit) as exited:
        _cli(["audit", "report", "--dataset", fresh_name, "--margin", "0"])
    assert exited.value.code == 2 and "--margin: expected a number in (0, 1]" in capsys.readouterr().err
    assert _cli(["audit", "report", "--dataset", "no-such-dataset"]) == 1
