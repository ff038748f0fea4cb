"""The curation flow in a real browser: review the queue, then split and export the result.

A clone of the 60-sample test dataset gets a planted label error (a "trouser" labelled
"bag") and every finder's findings. A Streamlit server (started as in test_browser.py,
pointed at this session's own MongoDB) serves it to headless Chromium, which:

1. on the Review page removes the top sample, undoes that, removes it again, filters the
   queue to the suspected mislabels of class "bag" and accepts the planted sample's
   suggested label;
2. on the Export page previews and saves a train/val/test split and exports the curated
   dataset as a folder tree per split.

Every step is checked in FiftyOne (the decisions, labels and splits stored on the samples)
and the export on disk (folders, provenance.json, and FiftyOne re-importing each split).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need the `playwright` package (pip install playwright)")

from test_browser import (  # noqa: E402  (after the skips: test_browser needs the same two)
    CHROMIUM_ARGS, AppServer, _database_uri, _page_text, _table_rows, chromium, screenshot_dir)

__all__ = ["chromium", "screenshot_dir"]  # fixtures shared with test_browser.py

LABEL_FIELD = "ground_truth"
SPLIT_FIELD = "curation_split"
# A rerun of a page takes 10-30 s on a loaded 2-core machine; the first also imports heavy modules.
WAIT_MS = 120_000


# ---------------------------------------------------------------------------------------
# The dataset and the server


@pytest.fixture(scope="module")
def curated(embedded_dataset):
    """A persistent clone of the 60-sample dataset with a planted label error and all findings.

    Yields ``(dataset, planted_id)``: the planted sample is a "trouser" relabelled "bag".
    """
    from curation.analysis import analyze

    dataset = embedded_dataset.clone(f"browser-curate-{uuid.uuid4().hex[:8]}")
    try:
        dataset.persistent = True
        planted = dataset.match({f"{LABEL_FIELD}.label": "trouser"}).first()
        planted[LABEL_FIELD].label = "bag"
        planted.save()
        analyze(dataset)
        dataset.reload()
        yield dataset, planted.id
    finally:
        dataset.delete()


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def curate_server(curated, export_root, tmp_path_factory):
    dataset, _ = curated
    env = dict(os.environ)
    env.update({
        "FIFTYONE_DATABASE_URI": _database_uri(),  # this session's mongod; FIFTYONE_DATABASE_NAME is inherited
        "CURATION_DATASET": dataset.name,
        "CURATION_NO_DEMO": "1",
        "CURATION_EXPORT_DIR": str(export_root),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    })
    server = AppServer(env, tmp_path_factory.mktemp("streamlit-curate"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1300})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    yield page
    context.close()


# ---------------------------------------------------------------------------------------
# Helpers


def _wait(page, server: AppServer, what: str, wait) -> None:
    """Run ``wait()``; if it times out, fail with what the page and the server said."""
    try:
        wait()
    except (sync_api.TimeoutError, AssertionError) as error:
        raise AssertionError(f"{what} did not happen: {error}\n--- page ---\n{_page_text(page)[-3000:]}\n"
                             f"--- server log ---\n{server.log_tail()}") from None


def _expect(locator):
    return sync_api.expect(locator)


def _keyed(page, key: str):
    """The element Streamlit drew for the widget with ``key`` (its container has class ``st-key-<key>``)."""
    return page.locator(f".st-key-{key}")


def _pick_in_multiselect(page, server: AppServer, label: str, option: str) -> None:
    box = page.locator('[data-testid="stMultiSelect"]').filter(has=page.get_by_text(label, exact=True))
    box.click()
    box.locator("input").fill(option)
    choice = page.get_by_role("option", name=option, exact=True)
    _wait(page, server, f"the option {option!r} of {label!r}", choice.wait_for)
    choice.click()
    page.keyboard.press("Escape")
    _wait(page, server, f"the chosen {option!r} in {label!r}",
          lambda: _expect(box).to_contain_text(option))


def _pick_in_selectbox(page, server: AppServer, label: str, option: str) -> None:
    box = page.locator('[data-testid="stSelectbox"]').filter(has=page.get_by_text(label, exact=True))
    box.click()
    choice = page.get_by_role("option", name=option, exact=True)
    _wait(page, server, f"the option {option!r} of {label!r}", choice.wait_for)
    choice.click()
    _wait(page, server, f"{option!r} shown in {label!r}",
          lambda: _expect(box.get_by_role("combobox")).to_have_value(option))


def _field(dataset, sample_id: str, name: str):
    """A sample field as stored in the database now (the server writes it, and may add the field)."""
    dataset.reload()
    return dataset.select([sample_id]).values(name)[0]


def _queue_heading(page):
    return page.locator('[data-testid="stHeading"]').filter(has_text="to review")


def _queue_breakdown(page):
    return page.locator('[data-testid="stCaptionContainer"]').filter(has_text="ranked by priority")


def _wait_for_queue(page, server: AppServer, count: int, *, finders: str | None = None) -> None:
    """Wait until the heading says ``count`` samples (and, given, the caption exactly that breakdown)."""
    noun = "sample" if count == 1 else "samples"
    _wait(page, server, f"the heading '{count} {noun} to review'",
          lambda: _expect(_queue_heading(page)).to_have_text(re.compile(rf"^{count:,} {noun} to review"),
                                                            timeout=WAIT_MS))
    if finders is not None:
        _wait(page, server, f"the breakdown '{finders}'",
              lambda: _expect(_queue_breakdown(page)).to_have_text(
                  re.compile(rf"^{re.escape(finders)} · ranked by priority"), timeout=WAIT_MS))


def _screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, not the document, so
    ``full_page`` alone stops at the viewport; the viewport is stretched to the content."""
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(document.documentElement.scrollHeight, ...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stMainBlockContainer"]')]
        .map(element => element.scrollHeight))""")
    page.set_viewport_size({"width": size["width"], "height": min(max(int(height), size["height"]), 10_000)})
    try:
        page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)


def _success(page, text: str):
    return page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text=text)


# ---------------------------------------------------------------------------------------
# The test


def test_review_then_split_and_export(curate_server, page, curated, tmp_path, screenshot_dir):
    import fiftyone as fo
    from fiftyone import ViewField as F

    from curation.export import ViewSpec, build_view
    from curation.review import QueueFilter, review_queue
    from curation.splits import SplitConfig, make_splits

    dataset, planted_id = curated
    server = curate_server

    # ---------------------------------------------------------------- the review page
    queue = review_queue(dataset, LABEL_FIELD)
    assert planted_id in set(queue["id"]), "the planted label error should be in the review queue"
    # The sample to remove: the top of the queue (the next one if the top is the planted error,
    # which is accepted below).
    remove_index = next(index for index, sample_id in enumerate(queue["id"]) if sample_id != planted_id)
    removed_id = queue["id"].iloc[remove_index]

    page.goto(f"{server.url}/review", wait_until="domcontentloaded")
    _wait(page, server, "the review page's title",
          page.get_by_role("heading", name=f"Review queue · {dataset.name}").wait_for)
    _wait_for_queue(page, server, len(queue))
    remove_buttons = page.get_by_role("button", name="Remove", exact=True)
    _wait(page, server, "a card per queued sample (20 a page)",
          lambda: _expect(remove_buttons).to_have_count(min(20, len(queue)), timeout=WAIT_MS))
    _screenshot(page, screenshot_dir / "curate-review.png")

    # The n-th card's Remove button is the one keyed by that sample's id: cards follow the queue.
    remove = remove_buttons.nth(remove_index)
    _expect(_keyed(page, f"rv_remove_{removed_id}").get_by_role("button")).to_have_text("Remove")
    assert remove.evaluate("(button, key) => !!button.closest('.st-key-' + key)", f"rv_remove_{removed_id}")
    remove.click()
    _wait(page, server, "the success message '1 sample removed'",
          lambda: _success(page, "1 sample removed").wait_for())
    _wait_for_queue(page, server, len(queue) - 1)
    assert _field(dataset, removed_id, "decision") == "remove"
    assert _field(dataset, removed_id, "decision_source") == "review"
    assert removed_id not in set(review_queue(dataset, LABEL_FIELD)["id"])

    undo = _keyed(page, "rv_undo_last").get_by_role("button", name="Undo")
    undo.click()
    _wait_for_queue(page, server, len(queue))
    _wait(page, server, "the success message to go", lambda: _expect(_success(page, "remove:")).to_have_count(0))
    assert _field(dataset, removed_id, "decision") is None
    assert removed_id in set(review_queue(dataset, LABEL_FIELD)["id"])

    # Remove it again: the export below must leave it out and say so in its provenance.
    _keyed(page, f"rv_remove_{removed_id}").get_by_role("button", name="Remove").click()
    _wait(page, server, "the second removal's success message",
          lambda: _success(page, "1 sample removed").wait_for())
    _wait_for_queue(page, server, len(queue) - 1)
    assert _field(dataset, removed_id, "decision") == "remove"

    # Filter to the suspected mislabels of class "bag" and accept the planted sample's suggestion.
    mislabels = review_queue(dataset, LABEL_FIELD, QueueFilter(finders=("mislabels",)))
    _pick_in_multiselect(page, server, "Finders", "suspected mislabel")
    _wait_for_queue(page, server, len(mislabels), finders=f"suspected mislabel {len(mislabels)}")
    bags = review_queue(dataset, LABEL_FIELD, QueueFilter(finders=("mislabels",), classes=("bag",)))
    assert planted_id in set(bags["id"]) and bags.set_index("id").at[planted_id, "suggested_label"] == "trouser"
    _pick_in_multiselect(page, server, "Classes", "bag")
    _wait_for_queue(page, server, len(bags), finders=f"suspected mislabel {len(bags)}")
    _wait(page, server, "one card per filtered sample",
          lambda: _expect(page.get_by_role("button", name="Remove", exact=True)).to_have_count(min(20, len(bags))))
    # The card: the innermost block holding both the planted sample's Accept button and a description.
    card = page.locator('[data-testid="stVerticalBlock"]').filter(
        has=_keyed(page, f"rv_accept_{planted_id}")).filter(has_text="priority").last
    _expect(card).to_contain_text(re.compile(r"^bag → suggested trouser · priority"))
    _screenshot(page, screenshot_dir / "curate-review-filtered.png")
    _keyed(page, f"rv_accept_{planted_id}").get_by_role("button", name="Accept").click()
    _wait(page, server, "the success message '1 sample relabelled to the suggested label'",
          lambda: _success(page, "1 sample relabelled to the suggested label").wait_for())
    _wait_for_queue(page, server, len(bags) - 1)
    assert _field(dataset, planted_id, f"{LABEL_FIELD}.label") == "trouser"
    assert _field(dataset, planted_id, "previous_label") == "bag"
    assert _field(dataset, planted_id, "decision") == "relabel"
    assert _field(dataset, planted_id, "decision_source") == "review"

    # ---------------------------------------------------------------- the export page: splits
    page.goto(f"{server.url}/export", wait_until="domcontentloaded")
    _wait(page, server, "the export page's title",
          page.get_by_role("heading", name=f"Export · {dataset.name}").wait_for)
    metrics = page.locator('[data-testid="stMetric"]')
    _wait(page, server, "the export page's metrics", lambda: _expect(metrics).to_have_count(4))
    shown = dict(zip(metrics.locator('[data-testid="stMetricLabel"]').all_inner_texts(),
                     metrics.locator('[data-testid="stMetricValue"]').all_inner_texts()))
    assert {k.strip(): v.strip() for k, v in shown.items()} == {
        "Samples": "60", "Decided remove": "1", "Relabelled": "1", "Sent to annotation": "0"}

    _expect(page.get_by_role("tab", name="Splits")).to_have_attribute("aria-selected", "true")
    page.get_by_role("button", name="Preview split").click()
    chart = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot')
    _wait(page, server, "the split preview's chart", lambda: page.wait_for_function(
        "() => { const gd = document.querySelector('[data-testid=\"stPlotlyChart\"] .js-plotly-plot');"
        " return gd && gd._fullData && gd._fullData.length > 0; }", timeout=WAIT_MS))
    expected = make_splits(dataset, LABEL_FIELD, SplitConfig(ratios=(("train", 0.8), ("val", 0.1), ("test", 0.1)),
                                                            seed=0, use_duplicate_groups=True))
    # gd.data holds the figure as sent (arrays base64-encoded); gd._fullData the decoded traces.
    traces = chart.evaluate(
        "gd => gd._fullData.map(trace => [trace.name, Array.from(trace.y).reduce((a, b) => a + b, 0)])")
    assert {name: total for name, total in traces} == expected.counts()
    rows = _table_rows(page, server, first_column="class")
    distribution = expected.distribution
    assert {row[0]: tuple(int(cell) for cell in row[1:]) for row in rows} == {
        str(name): tuple(int(v) for v in values) for name, values in distribution.iterrows()}
    assert sum(int(row[-1]) for row in rows) == 1  # excluded: the removed sample
    _screenshot(page, screenshot_dir / "curate-export-split.png")

    page.get_by_role("button", name="Save split to the dataset").click()
    kept = len(dataset) - 1
    _wait(page, server, "the split's success message",
          lambda: _success(page, f"Wrote the split of {kept:,} samples to field '{SPLIT_FIELD}'").wait_for())
    dataset.reload()
    assert dataset.has_sample_field(SPLIT_FIELD)
    stored = dict(zip(dataset.values("id"), dataset.values(SPLIT_FIELD)))
    assert stored == dict(zip(expected.ids, expected.split))
    assert stored[removed_id] is None and stored[planted_id] in ("train", "val", "test")
    per_split = Counter(value for value in stored.values() if value)
    assert per_split == Counter(expected.counts()) and sum(per_split.values()) == kept

    # ---------------------------------------------------------------- the export page: a folder tree per split
    page.get_by_role("tab", name="Export a subset").click()
    _pick_in_selectbox(page, server, "Split field", SPLIT_FIELD)
    _pick_in_selectbox(page, server, "Format", "folders")
    _wait(page, server, "the folder format's description",
          page.get_by_text("image classification folder tree: <split>/<class>/<image>").wait_for)
    out_input = page.locator('[data-testid="stTextInput"]').filter(
        has=page.get_by_text("Export to (a new directory)", exact=True)).locator("input")
    # The input is keyed by format: the fiftyone format's one lingers (stale) until the rerun ends.
    _wait(page, server, "the folder export's proposed directory", lambda: (
        _expect(out_input).to_have_count(1), _expect(out_input).to_have_value(re.compile(r"/folders-\d{8}-\d{6}$"))))
    out = tmp_path / "curated-folders"
    out_input.fill(str(out))
    out_input.press("Enter")
    count = len(build_view(dataset, LABEL_FIELD, ViewSpec(split_field=SPLIT_FIELD)))
    assert count == kept
    export = page.get_by_role("button", name=f"Export {count:,} samples")
    export.click()
    _wait(page, server, "the export's success message",
          lambda: _success(page, f"Exported {count:,} samples to {out}").wait_for())
    _wait(page, server, "the provenance expander", page.get_by_text(
        "Provenance of the last export: 1 removed, 1 relabelled").wait_for)
    _screenshot(page, screenshot_dir / "curate-export-done.png")

    # On disk: a folder per split, provenance naming both changes, each split readable by FiftyOne.
    assert sorted(path.name for path in out.iterdir()) == ["provenance.json", "test", "train", "val"]
    manifest = json.loads((out / "provenance.json").read_text())
    assert manifest["format"] == "folders" and manifest["samples"] == count
    assert manifest["per_split"] == dict(per_split)
    assert manifest["removed"] == 1 and manifest["relabelled"] == 1
    changes = {change["id"]: change for change in manifest["changes"]}
    assert set(changes) == {removed_id, planted_id}
    assert changes[removed_id]["decision"] == "remove" and changes[removed_id]["source"] == "review"
    relabel = changes[planted_id]
    assert (relabel["decision"], relabel["previous_label"], relabel["label"], relabel["source"]) == (
        "relabel", "bag", "trouser", "review")

    removed_file = Path(_field(dataset, removed_id, "filepath")).name
    planted_file = Path(_field(dataset, planted_id, "filepath")).name
    reimported = []
    try:
        for split in ("train", "val", "test"):
            copy = fo.Dataset.from_dir(dataset_dir=str(out / split),
                                       dataset_type=fo.types.ImageClassificationDirectoryTree,
                                       name=f"{dataset.name}-reimport-{split}")
            reimported.append(copy)
            in_split = dataset.match(F(SPLIT_FIELD) == split)
            assert len(copy) == per_split[split] == len(in_split)
            assert copy.count_values(f"{LABEL_FIELD}.label") == in_split.count_values(f"{LABEL_FIELD}.label")
            names = {Path(path).name for path in copy.values("filepath")}
            assert removed_file not in names
            if split == stored[planted_id]:
                assert (out / split / "trouser" / planted_file).is_file()
    finally:
        for copy in reimported:
            copy.delete()
