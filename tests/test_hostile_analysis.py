"""``curation analyze`` killed with ``kill -9`` at any moment: readers see the old run or the
new one, never a mix (new scores beside old flags, new values beside old info).

The dataset has synthetic embeddings (no model to run) and two input states, X and Y, that
make every finder that depends on them answer differently: other labels (mislabels,
label_next), other split tags (leakage) and another near-duplicate threshold (duplicates).
A complete run on each state is the reference. Each try switches the inputs to the state
not analysed yet, starts the CLI in a subprocess and kills it: at a fixed delay, or as soon
as a reader sees anything change (the middle of the write phase, which
``CURATION_TEST_ANALYSIS_WRITE_PAUSE`` stretches). Then every finder's visible values, its
queue flags and its info must all come from one complete reference run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from curation.cli import main

NAME = "t-atomic-analysis"
SAMPLES = 600          # three write batches
FIELD = "embeddings_synthetic"
STATES = ("X", "Y")
# Finder -> the findings-table columns it owns (its queue flag is checked beside them).
COLUMNS = {
    "mislabels": ["mislabel_score", "suggested_label"],
    "duplicates": ["near_duplicate_group", "nearest_neighbor_filepath", "nearest_neighbor_similarity"],
    "leakage": ["leak_filepath", "leak_similarity"],
    "outliers": ["outlier_score"],
    "label_next": ["uncertainty_score"],
}


@pytest.fixture(scope="module")
def dataset():
    """600 demo images in 10 classes with 32-d class-clustered embeddings, near-duplicate
    pairs at two similarity levels (so the threshold matters), and a fixed 1-D signal."""
    import fiftyone as fo

    from conftest import DEMO_SOURCE

    from curation.datasets import load_dataset, update_curation_info

    if fo.dataset_exists(NAME):
        fo.delete_dataset(NAME)
    rng = np.random.default_rng(5)
    classes = sorted(p.name for p in DEMO_SOURCE.iterdir() if p.is_dir())
    per_class = SAMPLES // len(classes)
    centres = rng.normal(size=(len(classes), 32))
    samples, vectors = [], []
    for number, name in enumerate(classes):
        for path in sorted((DEMO_SOURCE / name).glob("*.png"))[:per_class]:
            samples.append(fo.Sample(filepath=str(path), ground_truth=fo.Classification(label=name)))
            vectors.append(centres[number] + rng.normal(scale=0.9, size=32))
    vectors = np.array(vectors)
    for row in range(0, 60, 2):   # near-identical pairs: duplicates under either threshold
        vectors[row + 1] = vectors[row] + rng.normal(scale=0.01, size=32)
    for row in range(300, 360, 2):  # similar pairs: duplicates only under the lower threshold
        vectors[row + 1] = vectors[row] + rng.normal(scale=0.28, size=32)
    created = fo.Dataset(NAME, persistent=True)
    created.add_samples(samples)
    created.add_sample_field(FIELD, fo.VectorField)
    created.set_values(FIELD, [v.astype(np.float32) for v in vectors])
    update_curation_info(created, embeddings={FIELD: {"updated_at": "2026-01-01T00:00:00+00:00"}},
                         default_embeddings=FIELD)
    yield load_dataset(NAME)
    fo.delete_dataset(NAME)


def apply_state(dataset, state: str) -> None:
    """Labels, split tags and the stored near-duplicate threshold of input state X or Y."""
    from curation.datasets import curation_info, update_curation_info

    dataset.reload()  # another process wrote the info; do not write a stale copy back
    labels = dataset.values("ground_truth.label")
    original = [path.split("/")[-2] for path in dataset.values("filepath")]
    if state == "Y":
        rng = np.random.default_rng(11)
        names = sorted(set(original))
        flipped = set(rng.choice(len(original), size=len(original) // 10, replace=False).tolist())
        labels = [names[(names.index(label) + 1) % len(names)] if row in flipped else label
                  for row, label in enumerate(original)]
    else:
        labels = original
    dataset.set_values("ground_truth.label", labels)
    dataset.untag_samples(["train", "test"])
    ids = dataset.values("id")
    test_rows = range(0, len(ids), 2) if state == "X" else range(1, len(ids), 3)
    test_ids = [ids[row] for row in test_rows]
    dataset.select(test_ids).tag_samples("test")
    dataset.exclude(test_ids).tag_samples("train")
    calibration = dict(curation_info(dataset).get("calibration", {}))
    calibration[FIELD] = {"threshold": 0.95 if state == "X" else 0.9}
    update_curation_info(dataset, calibration=calibration)


def _cell(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)):
        return round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _without_timings(value):
    """Settings minus wall-clock timings (``seconds``, ``fit_seconds``...), which differ
    between two runs of the same state."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in str(k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def observe(dataset) -> dict:
    """What readers see: per finder, its info (summary, settings) and per sample its
    findings-table cells plus whether the review queue lists it for that finder."""
    from curation.analysis import findings_table
    from curation.review import QueueFilter, review_queue

    dataset.reload()
    analysis = dataset.info.get("curation", {}).get("analysis", {})
    table = findings_table(dataset)
    queue = review_queue(dataset, "ground_truth", QueueFilter(include_decided=True))
    flagged = {name: set(queue.loc[queue["finders"].map(lambda f, n=name: n in f), "id"]) for name in COLUMNS}
    seen = {}
    for name, columns in COLUMNS.items():
        rows = {}
        for sample_id, *cells in table[["id", *columns]].itertuples(index=False):
            row = (*map(_cell, cells), sample_id in flagged[name])
            if any(cell not in (None, False) for cell in row):
                rows[sample_id] = row
        info = (analysis.get("summaries", {}).get(name), _without_timings(analysis.get("settings", {}).get(name)))
        seen[name] = {"info": info, "rows": rows}
    return seen


def consistent_state(seen: dict, references: dict) -> str | None:
    """The state whose complete run explains everything seen (info and every visible row of
    every finder), or None when none does: a mix."""
    for state, reference in references.items():
        if all(seen[name]["info"] == reference[name]["info"]
               and all(reference[name]["rows"].get(sample_id) == row for sample_id, row in seen[name]["rows"].items())
               for name in COLUMNS):
            return state
    return None


def _start_analyze(pause: float) -> subprocess.Popen:
    env = {**os.environ, "CURATION_TEST_ANALYSIS_WRITE_PAUSE": str(pause)}
    return subprocess.Popen([sys.executable, "-m", "curation.cli", "analyze", "--dataset", NAME],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


# How each try ends: killed after a fixed number of seconds, killed as soon as a reader sees
# something change (inside the write phase), or left to finish (None).
TRIES = [("after", 3.0), ("change", None), ("change", None), ("change", None), ("finish", None)]


def test_killed_analyze_leaves_the_old_run_or_the_new_one(dataset):
    from curation.analysis import analyze

    references = {}
    for state in STATES:
        apply_state(dataset, state)
        report = analyze(dataset)
        assert not report.errors and set(report.results) == set(FINDER_NAMES)
        references[state] = observe(dataset)
    for name in ("mislabels", "duplicates", "leakage"):  # the states really differ for these finders
        assert references["X"][name] != references["Y"][name], name
    assert consistent_state(observe(dataset), references) == "Y"

    committed, outcomes = "Y", []
    for how, seconds in TRIES:
        target = "X" if committed == "Y" else "Y"
        apply_state(dataset, target)
        before = observe(dataset)
        process = _start_analyze(pause=0.6)
        try:
            if how == "after":
                time.sleep(seconds)
            elif how == "change":
                deadline = time.monotonic() + 60
                while observe(dataset) == before and process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
            else:
                process.wait(timeout=120)
        finally:
            _kill(process)
        stderr = process.stderr.read()
        if how == "finish":
            assert process.returncode == 0, stderr
        seen = observe(dataset)
        state = consistent_state(seen, references)
        outcomes.append((how, seconds, process.returncode, state))
        assert state is not None, f"readers see a mix of runs after {outcomes}"
        if state == target:  # the new run was committed: all of it is visible
            for name in COLUMNS:
                assert seen[name]["rows"] == references[target][name]["rows"], (name, outcomes)
        committed = state
    assert committed == outcomes[-1][3] and outcomes[-1][2] == 0


FINDER_NAMES = ("duplicates", "leakage", "mislabels", "outliers", "label_next", "image_quality")  # no votes: no disagreement


def test_analysis_write_pause_hook_is_validated(dataset, monkeypatch, capsys):
    """The test hook only takes a number of seconds; anything else is refused, not ignored."""
    monkeypatch.setenv("CURATION_TEST_ANALYSIS_WRITE_PAUSE", "soon")
    assert main(["analyze", "--dataset", NAME, "--finders", "outliers"]) == 1
    assert "CURATION_TEST_ANALYSIS_WRITE_PAUSE: expected seconds" in capsys.readouterr().err


def test_findings_and_leakage_read_the_split_that_curation_split_wrote(embedded_dataset, tmp_path, capsys):
    """After ``curation split`` the findings CSV's ``split`` column holds that split (not the
    import's tags), a later split to another field takes over, ``--split-field`` overrides
    both, and ``analyze``'s leakage finder uses the same split."""
    import pandas as pd

    dataset = embedded_dataset.clone("t-split-source", persistent=True)
    try:
        ids = dataset.values("id")
        dataset.select(ids[::2]).tag_samples("train")  # the import's own split, overridden below
        dataset.select(ids[1::2]).tag_samples("test")
        assert main(["split", "--dataset", dataset.name, "--seed", "1"]) == 0
        out = tmp_path / "findings.csv"
        assert main(["findings", "--dataset", dataset.name, "--out", str(out)]) == 0
        by_id = dict(zip(dataset.values("id"), dataset.values("curation_split")))
        table = pd.read_csv(out, keep_default_na=False)
        assert table["split"].tolist() == [by_id[sample_id] or "" for sample_id in table["id"]]
        assert set(table["split"]) >= {"train", "val", "test"}

        assert main(["analyze", "--dataset", dataset.name, "--finders", "leakage"]) == 0
        dataset.reload()
        assert dataset.info["curation"]["analysis"]["split_source"] == "field 'curation_split'"
        assert "leakage" in dataset.info["curation"]["analysis"]["summaries"]

        time.sleep(1.1)  # written_at has one-second resolution
        assert main(["split", "--dataset", dataset.name, "--seed", "2", "--field", "later_split"]) == 0
        assert main(["findings", "--dataset", dataset.name, "--out", str(out)]) == 0
        later = dict(zip(dataset.values("id"), dataset.values("later_split")))
        table = pd.read_csv(out, keep_default_na=False)
        assert table["split"].tolist() == [later[sample_id] or "" for sample_id in table["id"]]

        assert main(["findings", "--dataset", dataset.name, "--out", str(out), "--split-field", "curation_split"]) == 0
        table = pd.read_csv(out, keep_default_na=False)
        assert table["split"].tolist() == [by_id[sample_id] or "" for sample_id in table["id"]]
        capsys.readouterr()
    finally:
        dataset.delete()


@pytest.fixture
def analysed_clone(embedded_dataset):
    from curation.analysis import analyze

    dataset = embedded_dataset.clone("t-analysed-clone", persistent=True)
    analyze(dataset, ["duplicates", "mislabels", "outliers"])
    yield dataset
    dataset.delete()


def test_values_of_a_run_that_was_not_committed_are_not_shown(analysed_clone):
    """Samples stamped by a run the info does not name (what a killed analyze leaves) read as
    not analysed: in the findings table, both queues, the status counts and accept-suggestion."""
    from curation.analysis import RUN_FIELD, findings_table
    from curation.decisions import accept_suggestions
    from curation.review import mislabel_queue, review_queue

    dataset = analysed_clone
    flagged = dataset.match({"outlier_flag": True}).values("id")
    mislabelled = dataset.values("id")[:3]
    assert flagged
    stale = list(dict.fromkeys(flagged[:2] + mislabelled))
    for sample_id in stale:
        sample = dataset[sample_id]
        sample[RUN_FIELD] = {**sample[RUN_FIELD], "outliers": "killed-run", "mislabels": "killed-run"}
        sample["suggested_label"] = "zebra"
        sample.save()
    table = findings_table(dataset).set_index("id")
    assert table.loc[stale, ["outlier_score", "mislabel_score", "suggested_label"]].isna().all().all()
    others = table.drop(index=stale)
    assert others["outlier_score"].notna().all() and others["mislabel_score"].notna().all()
    queue = review_queue(dataset, "ground_truth")
    assert not set(stale) & set(queue.loc[queue["finders"].map(lambda f: "outliers" in f), "id"])
    assert set(flagged[2:]) <= set(queue["id"])
    assert not set(stale) & set(mislabel_queue(dataset, "ground_truth")["id"])
    assert accept_suggestions(dataset, stale, label_field="ground_truth") == 0  # "zebra" is not committed


def test_a_failed_finder_loses_its_earlier_results_with_its_summary(analysed_clone, monkeypatch):
    from curation.analysis import analyze, findings_table
    from curation.finders import outliers
    from curation.review import curation_status

    dataset = analysed_clone
    assert findings_table(dataset)["outlier_score"].notna().all()
    monkeypatch.setattr(outliers, "find_outliers", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    report = analyze(dataset, ["outliers"])
    assert report.errors == {"outliers": "RuntimeError: boom"}
    table = findings_table(dataset)
    assert table["outlier_score"].isna().all() and table["mislabel_score"].notna().all()
    analysis = dataset.info["curation"]["analysis"]
    assert "outliers" not in analysis["summaries"] and "outliers" not in analysis["runs"]
    assert analysis["errors"] == {"outliers": "RuntimeError: boom"} and "mislabels" in analysis["summaries"]
    assert "outliers" not in curation_status(dataset).flagged
    assert dataset.exists("outlier_score").count() == 0  # cleared on the samples too (the FiftyOne App)


def test_results_stored_before_run_ids_stay_readable(analysed_clone):
    """A dataset analysed by an older version (no stamps, no ``runs``): everything is read as
    stored, and a run of one finder keeps the others' unstamped results readable."""
    from curation.analysis import RUN_FIELD, UNSTAMPED, analyze, findings_table
    from curation.datasets import update_curation_info
    from curation.review import review_queue

    dataset = analysed_clone
    dataset.delete_sample_field(RUN_FIELD)
    legacy = {key: value for key, value in dataset.info["curation"]["analysis"].items() if key not in ("runs", "run_id")}
    update_curation_info(dataset, analysis=legacy)
    before = findings_table(dataset)
    assert before["mislabel_score"].notna().all() and before["outlier_score"].notna().all()
    assert len(review_queue(dataset, "ground_truth"))
    analyze(dataset, ["outliers"])
    runs = dataset.info["curation"]["analysis"]["runs"]
    assert runs["mislabels"] == runs["duplicates"] == UNSTAMPED and runs["outliers"] != UNSTAMPED
    after = findings_table(dataset)
    assert after["mislabel_score"].tolist() == before["mislabel_score"].tolist()
    assert after["outlier_score"].notna().all()


def test_an_info_update_keeps_what_another_process_wrote_meanwhile(analysed_clone):
    """The app holds a dataset open while `curation analyze` commits its runs in a terminal;
    the app's next info write (a split, a calibration) must not put the old runs back."""
    from curation.datasets import curation_info, update_curation_info

    analysed_clone.reload()
    code = ("import curation; from curation.datasets import load_dataset, update_curation_info;"
            f"update_curation_info(load_dataset({analysed_clone.name!r}), written_elsewhere='yes')")
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(), capture_output=True, timeout=120)
    update_curation_info(analysed_clone, written_here="yes")
    stored = curation_info(analysed_clone)
    assert stored["written_elsewhere"] == "yes" and stored["written_here"] == "yes"
    assert "analysis" in stored  # the rest of the info is intact


def test_exports_read_only_committed_scores(analysed_clone, tmp_path):
    """A score left by a killed run neither appears in the export manifest nor decides a
    ``max_scores`` cut-off (it counts as no score, like a sample the finder never saw)."""
    import pandas as pd

    from curation.analysis import RUN_FIELD
    from curation.export import ViewSpec, export_dataset

    dataset = analysed_clone
    stale = dataset.values("id")[:2]
    for sample_id in stale:
        sample = dataset[sample_id]
        sample[RUN_FIELD] = {**sample[RUN_FIELD], "outliers": "killed-run"}
        sample["outlier_score"] = 0.99
        sample.save()
    export_dataset(dataset, tmp_path / "out", format="csv", label_field="ground_truth",
                   spec=ViewSpec(max_scores=(("outlier_score", 0.5),)))
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("id")
    assert set(stale) <= set(manifest.index)  # kept: their 0.99 is not a committed score
    assert manifest.loc[stale, "outlier_score"].isna().all()
    assert (manifest["outlier_score"].dropna() < 0.5).all()


def test_a_first_analyze_killed_before_its_commit_shows_nothing(embedded_dataset):
    """No committed run yet, but stamped values (a first analyze killed mid-write): hidden."""
    from curation.analysis import RUN_FIELD, findings_table

    dataset = embedded_dataset.clone("t-first-run-killed", persistent=True)
    try:
        dataset.info = {k: v for k, v in dataset.info.items() if k != "curation"} | {
            "curation": {k: v for k, v in dataset.info.get("curation", {}).items() if k != "analysis"}}
        dataset.save()
        if dataset.has_sample_field(RUN_FIELD):  # stamps of an earlier analysis of the session's dataset
            dataset.delete_sample_field(RUN_FIELD)
        ids = dataset.values("id")
        dataset.set_values("outlier_score", dict(zip(ids, [0.5] * len(ids))), key_field="id")
        dataset.set_values(RUN_FIELD, dict(zip(ids[:10], [{"outliers": "killed"}] * 10)), key_field="id")
        table = findings_table(dataset).set_index("id")
        assert table.loc[ids[:10], "outlier_score"].isna().all()
        assert (table.loc[ids[10:], "outlier_score"] == 0.5).all()  # written outside analyze: as stored
    finally:
        dataset.delete()


def test_pages_read_what_another_process_committed(analysed_clone):
    """The analysis record and the unchecked-mislabel counts come from the database as it is
    now (a terminal `analyze` while the app holds the dataset), committed runs only."""
    from curation.analysis import RUN_FIELD, analysis_record
    from curation.review import unchecked_mislabel_reasons

    dataset = analysed_clone
    code = ("import curation; from curation.datasets import load_dataset, update_curation_info, curation_info;"
            f"d = load_dataset({analysed_clone.name!r}); a = dict(curation_info(d)['analysis']);"
            "a['summaries'] = {**a['summaries'], 'outliers': 'from the terminal'}; update_curation_info(d, analysis=a)")
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(), capture_output=True, timeout=120)
    assert analysis_record(dataset)["summaries"]["outliers"] == "from the terminal"

    ids = dataset.values("id")[:3]
    for position, sample_id in enumerate(ids):
        sample = dataset[sample_id]
        sample["mislabel_score"] = None
        sample["mislabel_reason"] = "cannot be checked: its class has one sample"
        if position == 0:  # written by a run that was never committed: not counted
            sample[RUN_FIELD] = {**sample[RUN_FIELD], "mislabels": "killed-run"}
        sample.save()
    assert unchecked_mislabel_reasons(dataset) == {"its class has one sample": 2}
