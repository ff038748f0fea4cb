"""AppTests on degenerate datasets: every page opens, its main action runs, and nothing raises.

The datasets (built once per module from the demo PNGs, embedded with the offline model):

- ``one_class``: 8 images, all labelled "bag";
- ``no_labels``: 8 images imported as an unlabelled image folder;
- ``singleton_class``: 5 bags, 5 trousers and 1 coat (a class with a single sample);
- ``two_samples``: 1 bag and 1 trouser;
- ``broken_embeddings``: 5 bags, 5 trousers, 5 sneakers; 3 samples have no embedding, one
  has a NaN vector and one an all-zero vector;
- ``none_embedded``: 2 bags and 1 trouser whose embedding field exists but holds no vector
  (every one unset): the pages that need embeddings say so and stop.

Each test runs on its own clone of the dataset, so a page's action (an analysis, a split
preview) never changes what another test sees.
"""

from __future__ import annotations

import re

import math
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import DEMO_SOURCE

APP = str(Path(__file__).resolve().parents[1] / "app.py")
MODEL = "efficientnet-lite0-imagenet"

# dataset -> {class folder: number of images}; None as the class means "no labels" (one folder).
LAYOUTS = {
    "one_class": {"bag": 8},
    "no_labels": {None: 8},
    "singleton_class": {"bag": 5, "trouser": 5, "coat": 1},
    "two_samples": {"bag": 1, "trouser": 1},
    "broken_embeddings": {"bag": 5, "trouser": 5, "sneaker": 5},
    "none_embedded": {"bag": 2, "trouser": 1},
}
DATASETS = list(LAYOUTS)
PAGES = ["overview", "map", "findings", "review", "mislabels", "agreement", "audit", "duplicates", "balance", "export",
         "data"]
UNEMBEDDED = 3  # broken_embeddings: samples with the vector unset; the next two get a NaN and a zero vector


def _copy_images(target: Path, layout: dict) -> str:
    """Copy the demo images for ``layout`` under ``target``; returns the import format."""
    if None in layout:
        pool = sorted(p for d in sorted(DEMO_SOURCE.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:1])
        target.mkdir(parents=True)
        for image in pool[: layout[None]]:
            shutil.copy(image, target / image.name)
        return "images"
    for name, count in layout.items():
        (target / name).mkdir(parents=True)
        for image in sorted((DEMO_SOURCE / name).glob("*.png"))[:count]:
            shutil.copy(image, target / name / image.name)
    return "classes"


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory):
    """{dataset kind: FiftyOne dataset name}, each imported and embedded once."""
    import fiftyone as fo
    import numpy as np

    from curation.datasets import load_dataset
    from curation.embeddings import compute_embeddings
    from curation.importers import import_dataset

    root = tmp_path_factory.mktemp("degenerate")
    names = {}
    for kind, layout in LAYOUTS.items():
        name = f"rb-{kind.replace('_', '-')}"
        data_format = _copy_images(root / kind, layout)
        import_dataset(root / kind, name, format=data_format, overwrite=True)
        dataset = load_dataset(name)
        run = compute_embeddings(dataset, model=MODEL, num_workers=0)
        assert run.embedded == sum(layout.values()), run
        if kind == "broken_embeddings":
            field = run.field
            ids = dataset.values("id")
            dimension = len(dataset.first()[field])
            dataset.set_values(field, {sample_id: None for sample_id in ids[:UNEMBEDDED]}, key_field="id")
            dataset.set_values(field, {ids[UNEMBEDDED]: [math.nan] * dimension,
                                       ids[UNEMBEDDED + 1]: [0.0] * dimension}, key_field="id")
            stored = dataset.values(field)
            assert sum(v is None for v in stored) == UNEMBEDDED
            assert np.isnan(np.asarray(stored[UNEMBEDDED])).all() and not np.any(stored[UNEMBEDDED + 1])
        if kind == "none_embedded":  # the embedding field exists, but no sample has a vector
            dataset.set_values(run.field, {sample_id: None for sample_id in dataset.values("id")}, key_field="id")
        names[kind] = name
    yield names
    for name in names.values():
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


@pytest.fixture
def clone(degenerate, request):
    """A persistent clone of the test's dataset, deleted afterwards."""
    from curation.datasets import load_dataset

    kind = request.node.callspec.params["kind"]
    page = request.node.callspec.params["page"]
    dataset = load_dataset(degenerate[kind]).clone(f"{degenerate[kind]}-{page}", persistent=True)
    yield kind, dataset
    dataset.delete()


def _open(dataset_name: str, page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    _no_exception(at)
    if page != "overview":
        at.switch_page(f"pages/{page}.py")
        at.run()
    _no_exception(at)
    assert at.session_state["dataset_name"] == dataset_name
    return at


def _no_exception(at: AppTest) -> None:
    assert not at.exception, "\n\n".join(e.value + "\n" + "\n".join(e.stack_trace) for e in at.exception)


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def _texts(at: AppTest, *kinds: str) -> list[str]:
    return [element.value for kind in kinds for element in getattr(at, kind)]


def _metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


# ---------------------------------------------------------------------------- pages
# One check per page: run its main action where it has one, then look for the message or
# result that fits the dataset. ``_open`` has already asserted that the page did not raise.

FIELD = f"embeddings_{MODEL.replace('-', '_')}"
NEEDS_EMBEDDINGS = {"map", "findings", "review", "mislabels", "duplicates", "balance"}
UNTRAINABLE = ("one_class", "two_samples")  # no classifier can be cross-validated on these labels


def _embedded(kind: str) -> int:
    total = sum(LAYOUTS[kind].values())
    return {"broken_embeddings": total - UNEMBEDDED, "none_embedded": 0}.get(kind, total)


def check_overview(at, kind, dataset):
    metrics = _metrics(at)
    total = sum(LAYOUTS[kind].values())
    assert metrics["Samples"] == str(total)
    if kind == "no_labels":
        assert metrics["Classes"] == "—"
        assert "No classification label field: the dataset is unlabelled." in _texts(at, "caption")
    else:
        assert metrics["Classes"] == str(len(LAYOUTS[kind]))
    assert metrics["Embedded"] == f"{_embedded(kind)} / {total}"


def check_map(at, kind, dataset):
    embedded = _embedded(kind)
    assert any(text.startswith(f"{embedded} samples.") for text in _texts(at, "caption")), _texts(at, "caption")
    for colour in ("cluster (k-means)", "cluster (HDBSCAN)", "tags", "label"):
        at.selectbox(key="map_color_by").select(colour).run()
        _no_exception(at)
    chosen = dataset.exists(FIELD).values("id")[:2]  # a lasso selection: thumbnails and the tag controls
    at.session_state["selected_ids"] = chosen
    at.run()
    _no_exception(at)
    assert f"Selection ({len(chosen)} samples)" in _texts(at, "subheader")


def check_findings(at, kind, dataset):
    from curation.finders import FINDER_REGISTRY

    _button(at, "Run analysis").click().run()
    _no_exception(at)
    assert not at.error, _texts(at, "error")  # no finder failed
    listed = " ".join(_texts(at, "markdown"))
    for name in FINDER_REGISTRY:  # every finder either ran or says why not
        assert f"- **{name}**:" in listed, listed
    assert "- **leakage**: not run (no splits" in listed
    assert "- **label_next**: " in listed and "- **label_next**: not run" not in listed
    assert len(at.dataframe[0].value) == sum(LAYOUTS[kind].values())
    if kind == "no_labels":
        assert "- **mislabels**: not run (no label field)" in listed
    elif kind in UNTRAINABLE:
        assert "- **mislabels**: not run (labels: expected at least" in listed
    else:
        assert "- **mislabels**: 0 of" in listed
    if kind == "broken_embeddings":
        assert "2 samples without a usable embedding were not scored" in listed  # the NaN and the zero vector


def check_review(at, kind, dataset):
    _button(at, "Run all finders").click().run()
    _no_exception(at)
    assert not any("No findings yet" in text for text in _texts(at, "info"))
    heading = " ".join(_texts(at, "subheader"))
    queue = " ".join(_texts(at, "caption"))
    assert re.search(r"\d+ samples? to review", heading), heading
    assert "label next" in queue, queue  # the cold start still proposes samples


def check_mislabels(at, kind, dataset):
    if kind == "no_labels":
        assert "This dataset has no classification labels, so there is nothing to check." in _texts(at, "info")
        return
    _button(at, "Check labels now").click().run()
    _no_exception(at)
    if kind in UNTRAINABLE:
        # Nothing can be cross-validated: the page says why instead of silently asking again.
        warnings = _texts(at, "warning")
        assert any(w.startswith("Labels could not be checked: labels: expected at least") for w in warnings), warnings
        assert (kind == "one_class") == any("a single class 'bag'" in w for w in warnings)
    else:
        assert any("samples match" in text for text in _texts(at, "caption")), _texts(at, "caption")
        at.slider(key="ml_min_score").set_value(0.0).run()  # every scored sample, with its neighbours
        _no_exception(at)
        unchecked = {"singleton_class": "1 labelled samples could not be checked: class 'coat' has a single sample (1).",
                     "broken_embeddings": "2 labelled samples could not be checked: no usable embedding (2)."}
        assert unchecked[kind] in _texts(at, "caption"), _texts(at, "caption")


def check_agreement(at, kind, dataset, tmp_path):
    """No votes: says how to import them. With labels: two annotators (the second votes on one
    sample only, against the label) and the page shows agreement, the table and the split sample."""
    from curation.annotators import import_annotations

    assert any("curation import-annotations --dataset" in text for text in _texts(at, "info")), _texts(at, "info")
    if kind == "no_labels":
        return
    ids, labels = dataset.values(["id", "ground_truth.label"])
    rows = ["id,annotator,label"] + [f"{sample_id},a,{label}" for sample_id, label in zip(ids, labels)]
    rows.append(f"{ids[0]},b,{'other' if labels[0] != 'other' else 'bag'}")
    (tmp_path / "votes.csv").write_text("\n".join(rows) + "\n")
    import_annotations(dataset, tmp_path / "votes.csv", format="csv")
    at.run()
    _no_exception(at)
    metrics = _metrics(at)
    assert metrics["Votes"] == str(len(ids) + 1) and metrics["Annotators"] == "2", metrics
    assert list(at.dataframe[0].value["annotator"].sort_values()) == ["a", "b"]
    assert "Samples annotators disagree on (1)" in _texts(at, "subheader")
    for method in ("auto", "majority", "dawid-skene"):
        at.selectbox(key="ag_method").select(method)
        _button(at, "Compute and write consensus").click().run()
        _no_exception(at)
        assert not at.error, _texts(at, "error")  # auto falls back to what the data allows
        assert any(f"consensus of {len(ids)} samples" in text for text in _texts(at, "success"))


def check_audit(at, kind, dataset, tmp_path):
    if kind == "no_labels":
        assert "This dataset has no classification labels, so there is nothing to audit." in _texts(at, "info")
        return
    total = sum(LAYOUTS[kind].values())
    at.number_input(key="au_size").set_value(min(4, total))
    _button(at, "Start audit").click().run()
    _no_exception(at)
    assert not at.error, _texts(at, "error")
    assert _metrics(at)["Pending"] == str(min(4, total))
    _button(at, "Correct").click().run()
    _no_exception(at)
    _button(at, "Wrong").click().run()  # with one class, "wrong" keeps the only label there is
    _no_exception(at)
    metrics = _metrics(at)
    assert metrics["Answered"] == f"2 / {min(4, total)}", metrics
    assert metrics["Error rate"] != "—" and " – " in metrics["95% interval"], metrics


def check_duplicates(at, kind, dataset):
    assert set(_metrics(at)) == {"Groups", "Samples in groups", "Suggested for removal"}
    assert any("Leakage check unavailable" in text for text in _texts(at, "info"))
    at.slider[0].set_value(0.80).run()  # the loosest threshold: groups appear on most of these datasets
    _no_exception(at)
    apply = [b for b in at.button if b.label == "Apply suggestion"]
    assert bool(apply) == (_metrics(at)["Groups"] != "0")
    if apply:
        apply[0].click().run()
        _no_exception(at)
        assert any(text.endswith("· **keep**") for text in _texts(at, "caption")), _texts(at, "caption")


def check_balance(at, kind, dataset):
    if kind == "no_labels":
        assert any("balance needs labels" in text for text in _texts(at, "info")), _texts(at, "info")
        return
    metrics = _metrics(at)
    assert metrics["Classes"] == str(len(LAYOUTS[kind])), metrics
    suggestions = [text for text in _texts(at, "markdown") if text.startswith("- ")]
    # Regions hold at least 5 samples on average: no wall of one-sample "thinly covered" regions.
    assert sum(text.startswith("- Cluster ") for text in suggestions) <= 2, suggestions
    if kind in UNTRAINABLE:
        assert "Not available: no classifier can be cross-validated on these labels (see the suggestions)." \
            in _texts(at, "caption")
    if kind == "one_class":
        assert metrics["Imbalance (largest / smallest)"] == "1.0x"
        assert suggestions[0].startswith("- Only one class ('bag')"), suggestions
    if kind == "two_samples":
        assert suggestions[0].startswith("- Too few samples to cross-validate"), suggestions


def check_export(at, kind, dataset):
    at.button(key="sp_preview").click().run()
    _no_exception(at)
    assert at.session_state["split_preview"][0] == dataset.name
    counts = " ".join(text for text in _texts(at, "markdown") if text.startswith("**train**"))
    assert "excluded 0" in counts, counts


def check_data(at, kind, dataset):
    statuses = at.dataframe[0].value
    assert statuses["field"].tolist() == [FIELD]
    assert statuses["embedded"].tolist() == [_embedded(kind)]


def check_no_vectors(at, kind, dataset):
    """Pages that need embeddings stop with a message when the field exists but holds none."""
    assert any(text.startswith("None of the 3 samples has an embedding in") for text in _texts(at, "warning")), \
        _texts(at, "warning")
    assert all(b.label not in ("Run analysis", "Run all finders", "Check labels now") for b in at.button)


CHECKS = {page: globals()[f"check_{page}"] for page in PAGES}


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("kind", DATASETS)
def test_page_on_degenerate_dataset(clone, kind, page, monkeypatch, tmp_path):
    _, dataset = clone
    monkeypatch.setenv("CURATION_DATASET", dataset.name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    monkeypatch.setenv("CURATION_EXPORT_DIR", str(tmp_path / "exports"))
    at = _open(dataset.name, page)
    if kind == "none_embedded" and page in NEEDS_EMBEDDINGS:
        check_no_vectors(at, kind, dataset)
    else:
        if page in ("agreement", "audit"):
            CHECKS[page](at, kind, dataset, tmp_path)
        else:
            CHECKS[page](at, kind, dataset)
