"""Label quality in a real browser: the Annotators page computes a consensus, the Audit page
starts an audit and records a verdict (each checked in FiftyOne), and the Findings page shows
the image-quality gallery with planted dark images explained."""

from __future__ import annotations

import os
import re
import uuid

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from test_browser_curate import (  # noqa: E402  (it skips the module when Chromium or playwright is missing)
    WAIT_MS, AppServer, _database_uri, _expect, _screenshot, _success, _wait, chromium, page, screenshot_dir)

__all__ = ["chromium", "page", "screenshot_dir"]  # fixtures shared with test_browser_curate.py


@pytest.fixture(scope="module")
def voted(embedded_dataset, tmp_path_factory):
    """A persistent clone of the 60-sample dataset with three annotators' votes (the first ten
    samples split two against one)."""
    from curation.annotators import import_annotations

    dataset = embedded_dataset.clone(f"browser-quality-{uuid.uuid4().hex[:8]}")
    try:
        dataset.persistent = True
        ids, labels = dataset.values(["id", "ground_truth.label"])
        lines = ["id,annotator,label"]
        for index, (sample_id, label) in enumerate(zip(ids, labels)):
            for annotator in ("ann", "bob", "cy"):
                wrong = index < 10 and annotator == "cy"
                lines.append(f"{sample_id},{annotator},{('bag' if label != 'bag' else 'coat') if wrong else label}")
        votes = tmp_path_factory.mktemp("votes") / "votes.csv"
        votes.write_text("\n".join(lines) + "\n")
        import_annotations(dataset, votes, format="csv")
        _add_degraded_copies(dataset, tmp_path_factory.mktemp("degraded"))
        from curation.analysis import analyze

        analyze(dataset, ["image_quality"])
        yield dataset
    finally:
        dataset.delete()


def _add_degraded_copies(dataset, folder) -> None:
    """Two darkened copies of dataset images as new samples (same label and embedding)."""
    import fiftyone as fo
    from PIL import Image, ImageEnhance

    field = next(name for name in dataset.get_field_schema() if name.startswith("embeddings_"))
    for index, sample in enumerate(dataset.limit(2)):
        target = folder / f"dark-{index}.png"
        ImageEnhance.Brightness(Image.open(sample.filepath).convert("L")).enhance(0.15).save(target)
        dataset.add_sample(fo.Sample(filepath=str(target), ground_truth=fo.Classification(label=sample.ground_truth.label),
                                     **{field: sample[field]}))


@pytest.fixture(scope="module")
def quality_server(voted, tmp_path_factory):
    env = dict(os.environ)
    env.update({"FIFTYONE_DATABASE_URI": _database_uri(), "CURATION_DATASET": voted.name, "CURATION_NO_DEMO": "1",
                "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"})
    server = AppServer(env, tmp_path_factory.mktemp("streamlit-quality"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_consensus_and_an_audit_verdict(quality_server, page, voted, screenshot_dir):
    server = quality_server
    page.goto(f"{server.url}/agreement", wait_until="domcontentloaded")
    _wait(page, server, "the agreement metrics",
          lambda: _expect(page.get_by_text("Krippendorff's alpha")).to_be_visible(timeout=WAIT_MS))
    _wait(page, server, "the disagreement gallery",
          lambda: _expect(page.get_by_text(re.compile(r"Samples annotators disagree on \(10\)"))).to_be_visible(
              timeout=WAIT_MS))
    page.get_by_role("button", name="Compute and write consensus").click()
    _wait(page, server, "the consensus written", lambda: _expect(_success(page, "consensus")).to_be_visible(timeout=WAIT_MS))
    voted.reload()
    assert voted.has_sample_field("consensus") and voted.exists("consensus").count() == 60  # the voted samples
    _screenshot(page, screenshot_dir / "annotators.png")

    page.goto(f"{server.url}/audit", wait_until="domcontentloaded")
    start = page.get_by_role("button", name="Start audit")
    _wait(page, server, "the audit form", lambda: start.wait_for(timeout=WAIT_MS))
    start.click()
    _wait(page, server, "the audit report", lambda: _expect(page.get_by_text("Error rate")).to_be_visible(timeout=WAIT_MS))
    correct = page.get_by_role("button", name="Correct").first
    _wait(page, server, "a sample to review", lambda: correct.wait_for(timeout=WAIT_MS))
    correct.click()

    def answered() -> None:
        voted.reload()
        assert voted.match({"audit_verdict": "correct"}).count() == 1

    _wait(page, server, "the verdict stored", lambda: _expect(page.get_by_text(re.compile(r"^1 / "))).to_be_visible(
        timeout=WAIT_MS))
    answered()
    _screenshot(page, screenshot_dir / "audit.png")

    page.goto(f"{server.url}/findings", wait_until="domcontentloaded")
    _wait(page, server, "the image-quality gallery",
          lambda: _expect(page.get_by_role("heading", name="Image quality")).to_be_visible(timeout=WAIT_MS))
    _wait(page, server, "a dark image explained",
          lambda: _expect(page.get_by_text(re.compile(r"^dark: .* MAD below the dataset.s median")).first).to_be_visible(
              timeout=WAIT_MS))
