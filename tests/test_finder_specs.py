"""One spec per finder: the analysis, the findings CSV, the review queue and the pages all
iterate the registered specs, so a new finder is one module plus one registry line."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curation.finders import FINDER_REGISTRY, UnknownFinderError, finder_specs, get_finder, get_spec
from curation.finders.base import FinderContext, FinderResult, FinderSpec, FindingField

README = Path(__file__).resolve().parents[1] / "README.md"


def documented_findings_columns() -> list[str]:
    """The column list of the README's "Findings CSV contract" paragraph."""
    text = " ".join(README.read_text().split())
    match = re.search(r"\*\*Findings CSV contract\*\*.*?the columns (.*?), in that order", text)
    assert match, "README lost its Findings CSV contract paragraph"
    return [name.strip(" `") for name in match.group(1).split(",")]


def test_findings_columns_derived_from_the_specs_match_the_documented_contract():
    from curation.analysis import FINDINGS_COLUMNS, findings_columns

    documented = documented_findings_columns()
    assert documented[:4] == ["id", "filepath", "split", "label"] and "cluster" in documented
    assert findings_columns() == documented == FINDINGS_COLUMNS


def test_every_field_has_one_owner_and_every_finder_a_complete_spec():
    from curation.analysis import fields_by_owner, flag_fields

    owners = fields_by_owner()
    assert list(owners) == [*FINDER_REGISTRY, "cluster"]
    assert flag_fields() == {"mislabels": "mislabel_flag", "duplicates": "duplicate_flag", "leakage": "leak_flag",
                             "outliers": "outlier_flag", "label_next": "label_next_flag",
                             "image_quality": "image_quality_flag", "disagreement": "disagreement_flag"}
    for spec in finder_specs():
        assert get_finder(spec.name) is spec.find and spec.title and 0 < spec.queue_weight <= 1
    assert get_spec("leakage").requires == ("splits",) and get_spec("mislabels").requires == ("labels",)
    assert get_spec("disagreement").requires == ("votes",)
    with pytest.raises(UnknownFinderError, match="unknown finder 'nope'. Available: mislabels, duplicates, leakage"):
        get_spec("nope")


def test_a_spec_that_contradicts_itself_is_refused():
    field = FindingField("x_flag", "bool", column="is_issue")
    with pytest.raises(ValueError, match="flag_field 'y_flag' must be one of its bool fields"):
        FinderSpec(name="x", title="x", find=lambda c: None, fields=(field,), flag_field="y_flag", queue_score="x_flag",
                   describe=str)
    with pytest.raises(ValueError, match="exactly one of column and derive"):
        FindingField("x", "float")
    with pytest.raises(ValueError, match="unknown requirement 'gpu'"):
        FinderSpec(name="x", title="x", find=lambda c: None, fields=(field,), flag_field="x_flag", queue_score="x_flag",
                   describe=str, requires=("gpu",))


# ---------------------------------------------------------------------------- a new finder

def find_dummy(context: FinderContext) -> FinderResult:
    """Flags the last tenth of the samples by a made-up score."""
    score = np.linspace(0.0, 1.0, len(context))
    table = pd.DataFrame({"score": score, "is_issue": score >= 0.9, "note": [f"n{i}" for i in range(len(context))]},
                         index=pd.Index(context.ids, name="id"))
    return FinderResult("dummy", table, "dummy ran", {})


SPEC = FinderSpec(
    name="dummy", title="dummy finding", find=find_dummy,
    fields=(FindingField("dummy_score", "float", column="score"), FindingField("dummy_note", "str", column="note"),
            FindingField("dummy_flag", "bool", column="is_issue")),
    flag_field="dummy_flag", queue_score="dummy_score", queue_weight=0.7, queue_fields=("dummy_note",),
    describe=lambda row: f"dummy says {row['dummy_note']}", findings_columns=("dummy_score",),
)


def test_a_new_finder_is_one_module_plus_one_registry_line(embedded_dataset):
    from curation.analysis import analyze, findings_columns, findings_table
    from curation.review import QueueFilter, curation_status, review_queue

    documented = documented_findings_columns()
    dataset = embedded_dataset.clone()
    FINDER_REGISTRY["dummy"] = __name__  # the one registry line (this module exports SPEC)
    try:
        report = analyze(dataset, ["outliers", "dummy"])
        assert report.results["dummy"].summary == "dummy ran" and not report.errors
        ids = dataset.values("id")
        scores, notes, flags, stamps = dataset.values(["dummy_score", "dummy_note", "dummy_flag", "analysis_run"])
        assert all(isinstance(s, float) for s in scores) and all(n.startswith("n") for n in notes)
        assert sum(flags) >= 1 and all(stamp["dummy"] == report.run_id for stamp in stamps)

        assert findings_columns() == documented + ["dummy_score"]  # added at the end, nothing moved
        table = findings_table(dataset)
        assert list(table.columns) == documented + ["dummy_score"] and table["dummy_score"].notna().all()

        queue = review_queue(dataset, "ground_truth", QueueFilter(finders=("dummy",)))
        flagged = {i for i, f in zip(ids, flags) if f}
        assert set(queue["id"]) == flagged and "dummy_score" in queue.columns
        for row in queue.itertuples():
            assert row.finders == ["dummy"] and row.reason.startswith("dummy says n")
            assert row.priority == pytest.approx(0.7 * row.dummy_score)
        assert curation_status(dataset).flagged["dummy"] == len(flagged)
    finally:
        del FINDER_REGISTRY["dummy"]
        dataset.delete()
    assert findings_columns() == documented
    with pytest.raises(UnknownFinderError):
        get_spec("dummy")


# ---------------------------------------------------------------------------- one classifier

def test_one_out_of_fold_fit_is_shared_by_mislabels_label_next_and_balance(embedded_dataset, monkeypatch):
    from curation.analysis import build_context, run_finders
    from curation.balance import compute_balance
    from curation.finders import classifier

    fits = []
    real = classifier.compute_out_of_fold_predictions

    @functools.wraps(real)  # the context reads the settings' defaults from the signature
    def counting(*args, **kwargs):
        fits.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier, "compute_out_of_fold_predictions", counting)
    context = build_context(embedded_dataset)
    report = run_finders(context, ["mislabels", "label_next"])
    assert set(report.results) == {"mislabels", "label_next"}, report.errors or report.skipped
    compute_balance(context)
    assert len(fits) == 1
    # Other settings, or a context whose labels were replaced, fit again.
    context.out_of_fold(seed=1)
    assert len(fits) == 2
    import dataclasses

    dataclasses.replace(context, labels=np.array(list(context.labels), dtype=object)).out_of_fold()
    assert len(fits) == 3
