"""Versions and Quality in a real browser: the diff of v1 -> v2 with its transition matrix and
galleries, a restore of v1 and its undo (each checked in FiftyOne), and the quality trend
with the current state as the last point. Screenshots go to the screenshot folder."""

from __future__ import annotations

import os
import re
import uuid

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from test_browser_curate import (  # noqa: E402  (it skips the module when Chromium or playwright is missing)
    WAIT_MS, AppServer, _database_uri, _expect, _keyed, _screenshot, _success, _table_rows, _wait, chromium, page,
    screenshot_dir, sync_api)

__all__ = ["chromium", "page", "screenshot_dir"]  # fixtures shared with test_browser_curate.py

FLAGGED = 8  # suspected mislabels in v1
RELABELLED = 5  # of them relabelled before v2


def _labels(dataset) -> dict[str, str]:
    dataset.reload()
    return dict(zip(*dataset.values(["id", "ground_truth.label"])))


@pytest.fixture(scope="module")
def versioned(embedded_dataset):
    """A persistent clone with snapshots v1 (8 suspected mislabels) and v2 (5 of them relabelled,
    two samples removed, two tagged). Yields ``(dataset, labels_v1, labels_v2)``."""
    from curation.analysis import RUN_FIELD, flag_fields
    from curation.decisions import DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD, apply_relabel, \
        record_decision
    from curation.snapshots import create_snapshot

    ours = [*DECISION_FIELDS, HISTORY_FIELD, PREVIOUS_LABEL_FIELD, RUN_FIELD, *flag_fields().values()]
    present = [field for field in ours if embedded_dataset.has_sample_field(field)]
    dataset = embedded_dataset.exclude_fields(present).clone(f"browser-versions-{uuid.uuid4().hex[:8]}")
    try:
        dataset.persistent = True
        ids, labels = dataset.values(["id", "ground_truth.label"])
        flagged = [sample_id for sample_id, label in zip(ids, labels) if label not in ("bag", "coat")][:FLAGGED]
        dataset.set_values("mislabel_flag", [sample_id in flagged for sample_id in ids])  # unstamped: a finding
        create_snapshot(dataset, "v1", note="imported")
        labels_v1 = _labels(dataset)
        apply_relabel(dataset, flagged[:3], "bag", label_field="ground_truth", source="test")
        apply_relabel(dataset, flagged[3:RELABELLED], "coat", label_field="ground_truth", source="test")
        record_decision(dataset, ids[-2:], "remove", reason="blurry", source="test")
        dataset.select(ids[20:22]).tag_samples("checked")
        create_snapshot(dataset, "v2", note="first review pass")
        yield dataset, labels_v1, _labels(dataset)
    finally:
        dataset.delete()


@pytest.fixture(scope="module")
def bare(embedded_dataset):
    """A persistent clone without snapshots."""
    dataset = embedded_dataset.clone(f"browser-versions-bare-{uuid.uuid4().hex[:8]}")
    try:
        dataset.persistent = True
        yield dataset
    finally:
        dataset.delete()


@pytest.fixture(scope="module")
def versions_server(versioned, tmp_path_factory):
    dataset, *_ = versioned
    env = dict(os.environ)
    env.update({"FIFTYONE_DATABASE_URI": _database_uri(), "CURATION_DATASET": dataset.name, "CURATION_NO_DEMO": "1",
                "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"})
    server = AppServer(env, tmp_path_factory.mktemp("streamlit-versions"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _pick(page, server: AppServer, key: str, option: str) -> None:
    """Choose the option starting with ``option`` (a snapshot's name; its time and note follow) in the keyed selectbox."""
    box = _keyed(page, key)
    choice = page.get_by_role("option", name=re.compile(rf"^{re.escape(option)}( ·|$)"))
    for _ in range(3):  # a click right after a rerun sometimes only focuses the box
        box.get_by_role("combobox").click()
        try:
            choice.wait_for(timeout=5_000)
            break
        except sync_api.TimeoutError:
            page.keyboard.press("Escape")
    _wait(page, server, f"the option {option!r} of {key}", choice.wait_for)
    choice.click()
    _wait(page, server, f"{option!r} shown in {key}",
          lambda: _expect(box.get_by_role("combobox")).to_have_value(re.compile(rf"^{re.escape(option)}( ·|$)")))


def _metric(page, label: str):
    return page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(rf"^{re.escape(label)}$")))


def test_diff_restore_undo_and_the_quality_trend(versions_server, page, versioned, screenshot_dir):
    dataset, labels_v1, labels_v2 = versioned
    server = versions_server

    # ---------------------------------------------------------------- the diff of v1 -> v2
    page.goto(f"{server.url}/versions", wait_until="domcontentloaded")
    _wait(page, server, "the versions page's title",
          page.get_by_role("heading", name=f"Versions · {dataset.name}").wait_for)
    _wait(page, server, "the snapshot list heading",
          lambda: _expect(page.get_by_role("heading", name="Snapshots (2)")).to_be_visible(timeout=WAIT_MS))
    rows = _table_rows(page, server, first_column="name")
    assert [row[0] for row in rows] == ["v1", "v2"] and [row[3] for row in rows] == ["imported", "first review pass"]
    _pick(page, server, "ve_a", "v1")
    _pick(page, server, "ve_b", "v2")
    _wait(page, server, "the relabelled count",
          lambda: _expect(_metric(page, "Relabelled").locator('[data-testid="stMetricValue"]')).to_have_text(
              str(RELABELLED), timeout=WAIT_MS))
    _expect(_metric(page, "Decisions changed").locator('[data-testid="stMetricValue"]')).to_have_text(
        str(RELABELLED + 2))
    _expect(_metric(page, "Tag changes").locator('[data-testid="stMetricValue"]')).to_have_text("2")
    _expect(_metric(page, "Suspected mislabels").locator('[data-testid="stMetricValue"]')).to_have_text(
        str(FLAGGED - RELABELLED))
    _wait(page, server, "the transition matrix", lambda: page.wait_for_function(
        "() => { const gd = document.querySelector('[data-testid=\"stPlotlyChart\"] .js-plotly-plot');"
        " return gd && gd._fullData && gd._fullData.length > 0 && gd._fullData[0].type === 'heatmap'; }",
        timeout=WAIT_MS))
    matrix = page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first.evaluate(
        "gd => [Array.from(gd._fullData[0].x), gd._fullData[0].z.flat().reduce((a, b) => a + (b || 0), 0)]")
    assert matrix == [["bag", "coat"], RELABELLED]
    for heading in (f"Relabelled ({RELABELLED})", f"Decision changes ({RELABELLED + 2})", "Tag changes (2)"):
        _expect(page.get_by_text(heading, exact=True)).to_be_visible()
    flagged_from = next(iter(sorted({labels_v1[i] for i in labels_v1 if labels_v1[i] != labels_v2[i]})))
    _expect(page.get_by_text(f"{flagged_from} → ", exact=False).first).to_be_visible()
    _expect(page.get_by_text("+checked", exact=True).first).to_be_visible()
    _screenshot(page, screenshot_dir / "versions-diff.png")

    # ---------------------------------------------------------------- restore v1, then undo
    _pick(page, server, "ve_restore", "v1")
    restore = page.get_by_role("button", name="Restore", exact=True)
    _expect(restore).to_be_disabled()
    _keyed(page, "ve_confirm").get_by_text(re.compile("^Yes, replace")).click()
    _expect(restore).to_be_enabled(timeout=WAIT_MS)
    restore.click()
    _wait(page, server, "the restore's summary", lambda: _success(page, "Restored snapshot v1").wait_for())
    _wait(page, server, "the last restore named", page.get_by_text(re.compile(r"^Last restore: v1 at ")).wait_for)
    assert _labels(dataset) == labels_v1
    assert dataset.match({"decision": "remove"}).count() == 0 and not dataset.match_tags("checked").count()
    _screenshot(page, screenshot_dir / "versions-restored.png")
    page.get_by_role("button", name="Undo last restore").click()
    _wait(page, server, "the undo's summary", lambda: _success(page, "Undid the last restore").wait_for())
    _wait(page, server, "the undo named as the last restore",
          page.get_by_text(re.compile(r"^Last restore: v2 at ")).wait_for)
    assert _labels(dataset) == labels_v2
    assert dataset.match({"decision": "remove"}).count() == 2 and dataset.match_tags("checked").count() == 2
    _screenshot(page, screenshot_dir / "versions-undone.png")

    # ---------------------------------------------------------------- the quality trend
    page.goto(f"{server.url}/quality", wait_until="domcontentloaded")
    _wait(page, server, "the quality page's title",
          page.get_by_role("heading", name=f"Quality · {dataset.name}").wait_for)
    _wait(page, server, "the trend table",
          lambda: _expect(page.get_by_role("heading", name="Figures per snapshot")).to_be_visible(timeout=WAIT_MS))
    _wait(page, server, "eight line charts", lambda: page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .js-plotly-plot')]"
        ".filter(gd => gd._fullData && gd._fullData.length).length === 8", timeout=WAIT_MS))
    rows = _table_rows(page, server, first_column="name")
    assert [row[0] for row in rows] == ["v1", "v2", "current"]
    charts = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')]
        .map(gd => [gd._fullLayout.title && gd._fullLayout.title.text, gd._fullData.map(trace => Array.from(trace.y))])""")
    charts = {re.sub(r"</?b>", "", title or ""): traces for title, traces in charts}  # Streamlit's theme bolds titles
    assert "Suspected mislabels" in charts, list(charts)
    mislabels = charts["Suspected mislabels"][:2]
    assert mislabels == [[FLAGGED, FLAGGED - RELABELLED], [FLAGGED - RELABELLED, FLAGGED - RELABELLED]]
    _expect(_metric(page, "Suspected mislabels").locator('[data-testid="stMetricValue"]')).to_have_text(
        str(FLAGGED - RELABELLED))
    _screenshot(page, screenshot_dir / "quality.png")


def test_without_snapshots_both_pages_say_so(versions_server, page, bare, screenshot_dir):
    server = versions_server
    page.goto(f"{server.url}/versions", wait_until="domcontentloaded")
    _wait(page, server, "the versions page", page.get_by_role("heading", name=re.compile(r"^Versions · ")).wait_for)
    # The dataset picker (a page load starts a new session, so the pages are reached through the sidebar).
    picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first
    picker.get_by_role("combobox").click()
    choice = page.get_by_role("option", name=bare.name, exact=True)
    _wait(page, server, "the bare dataset in the picker", choice.wait_for)
    choice.click()
    _wait(page, server, "the bare dataset's versions page",
          page.get_by_role("heading", name=f"Versions · {bare.name}").wait_for)
    _wait(page, server, "the empty state", page.get_by_text(re.compile(rf"^No snapshots of {bare.name} yet")).wait_for)
    _expect(page.get_by_role("button", name="Create snapshot")).to_be_enabled()
    _expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(0)
    _screenshot(page, screenshot_dir / "versions-empty.png")

    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Quality").click()
    _wait(page, server, "the bare dataset's quality page",
          page.get_by_role("heading", name=f"Quality · {bare.name}").wait_for)
    _wait(page, server, "the empty state", page.get_by_text(re.compile(r"^No snapshots yet, so the charts show")).wait_for)
    rows = _table_rows(page, server, first_column="name")
    assert [row[0] for row in rows] == ["current"]
    _wait(page, server, "eight line charts", lambda: page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .js-plotly-plot')]"
        ".filter(gd => gd._fullData && gd._fullData.length).length === 8", timeout=WAIT_MS))
    _screenshot(page, screenshot_dir / "quality-empty.png")
