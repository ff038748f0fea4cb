"""The app in a real browser against hostile input and a hostile shutdown (issue 8).

1. The Export page's relabel upload, sent by Chromium with a file name that is a path
   (``../../…/tmp/<unique>.xml``, ``/tmp/<unique>.json``): nothing may appear at those paths
   and no staging folder may be left in the server's temporary folder; the preview and the
   apply work and name the file by its last component only.
2. Garbage uploads (binary, empty, malformed XML, a JSON list of numbers, a zip without
   annotations): one line each in the page, never a traceback or a server path.
3. SIGTERM: the server exits within a few seconds, also when its MongoDB has already gone
   (as when ``docker stop`` or Ctrl-C signals every process of the app at once).

The servers are started as in test_browser.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="browser tests need the `playwright` package (pip install playwright)")

from test_browser import (  # noqa: E402  (after the skips: test_browser needs the same two)
    AppServer, _database_uri, _page_text, chromium, screenshot_dir)

__all__ = ["chromium", "screenshot_dir"]  # fixtures shared with test_browser.py

LABEL_FIELD = "ground_truth"
WAIT_MS = 120_000
# How long the server may take to exit after SIGTERM (it takes 1-3 s on a loaded 2-core machine).
EXIT_WITHIN_S = 5.0


# ---------------------------------------------------------------------------------------
# The dataset and the servers


@pytest.fixture(scope="module")
def hostile_dataset(embedded_dataset):
    dataset = embedded_dataset.clone(f"browser-hostile-{uuid.uuid4().hex[:8]}")
    try:
        dataset.persistent = True
        yield dataset
    finally:
        dataset.delete()


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory) -> Path:
    """The server's own temporary folder (TMPDIR), so what it leaves there can be checked."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def hostile_server(hostile_dataset, server_tmp, tmp_path_factory):
    env = dict(os.environ)
    env.update({
        "FIFTYONE_DATABASE_URI": _database_uri(),  # this session's mongod; FIFTYONE_DATABASE_NAME is inherited
        "CURATION_DATASET": hostile_dataset.name,
        "CURATION_NO_DEMO": "1",
        "CURATION_EXPORT_DIR": str(tmp_path_factory.mktemp("exports")),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "TMPDIR": str(server_tmp),
    })
    server = AppServer(env, tmp_path_factory.mktemp("streamlit-hostile"))
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
    try:
        wait()
    except (sync_api.TimeoutError, AssertionError) as error:
        raise AssertionError(f"{what} did not happen: {error}\n--- page ---\n{_page_text(page)[-3000:]}\n"
                             f"--- server log ---\n{server.log_tail()}") from None


def _open_relabel_tab(page, server: AppServer, dataset) -> None:
    page.goto(f"{server.url}/export", wait_until="domcontentloaded")
    _wait(page, server, "the export page's title",
          page.get_by_role("heading", name=f"Export · {dataset.name}").wait_for)
    page.get_by_role("tab", name="Relabel round trip").click()
    _wait(page, server, "the upload box",
          lambda: page.locator('[data-testid="stFileUploaderDropzoneInput"]').wait_for(state="attached"))


def _upload(page, name: str, content: bytes, mime: str = "application/octet-stream") -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        {"name": name, "mimeType": mime, "buffer": content})


def _cvat_xml(images: list[tuple[str, str]]) -> bytes:
    rows = "\n".join(f'  <image id="{index}" name="{name}" width="28" height="28">'
                     f'<tag label="{label}" source="manual"/></image>' for index, (name, label) in enumerate(images))
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n{rows}\n'
            f'</annotations>\n').encode()


def _staging_dirs(*folders: Path) -> set[Path]:
    return {path for folder in folders for path in folder.glob("curation-upload-*")}


def _settle(page, server: AppServer) -> None:
    """Wait until the rerun has finished: no element is left over (stale) from the run before."""
    _wait(page, server, "the rerun to finish",
          lambda: page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')", timeout=WAIT_MS))


def _screenshot(page, path: Path) -> None:
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    page.screenshot(path=str(path), full_page=True)


def _assert_no_traceback(page) -> None:
    text = _page_text(page)
    assert "Traceback" not in text, text[-3000:]
    assert 'File "/' not in text, text[-3000:]


# ---------------------------------------------------------------------------------------
# 1-2. Uploads


def test_upload_named_as_a_path_writes_nothing_outside(hostile_server, page, hostile_dataset, server_tmp,
                                                      screenshot_dir):
    dataset = hostile_dataset
    unique = f"curation-hostile-{uuid.uuid4().hex}"
    system_tmp = Path(tempfile.gettempdir())
    staging_before = _staging_dirs(system_tmp)
    sample = dataset.first()
    old = sample[LABEL_FIELD].label
    new = next(name for name in sorted(dataset.distinct(f"{LABEL_FIELD}.label")) if name != old)
    content = _cvat_xml([(f"{sample.id}.png", new)])
    # Deep enough to reach / from any temporary folder; then the absolute form.
    names = {"../" * 16 + f"tmp/{unique}.xml": Path("/tmp") / f"{unique}.xml",
             f"/tmp/{unique}-abs.xml": Path("/tmp") / f"{unique}-abs.xml"}

    _open_relabel_tab(page, hostile_server, dataset)
    for name, target in names.items():
        _upload(page, name, content, "application/xml")
        shown = target.name  # the name's last component, never the path
        preview = page.locator('[data-testid="stMarkdownContainer"]').filter(
            has_text=f"{shown}: would change 1 label(s)")
        _wait(page, hostile_server, f"the preview of {name!r}", preview.wait_for)
        _settle(page, hostile_server)
        assert not target.exists(), f"the upload was written to {target}"
        assert "/tmp" not in preview.inner_text()
        _assert_no_traceback(page)
    _screenshot(page, screenshot_dir / "hostile-upload-preview.png")

    page.get_by_role("button", name="Apply these corrections").click()
    success = page.locator('[data-testid="stAlertContentSuccess"]').filter(has_text="changed 1 label(s)")
    _wait(page, hostile_server, "the apply's success message", success.wait_for)
    _settle(page, hostile_server)
    _screenshot(page, screenshot_dir / "hostile-upload-applied.png")
    dataset.reload()
    applied = dataset[sample.id]
    assert applied[LABEL_FIELD].label == new and applied["previous_label"] == old
    assert applied["decision_source"] == f"cvat:{unique}-abs.xml"

    for target in names.values():
        assert not target.exists(), f"the upload was written to {target}"
    assert not list(system_tmp.glob(f"{unique}*")) and not list(server_tmp.rglob(f"{unique}*"))
    assert not _staging_dirs(server_tmp), "the server left a staging folder in its temporary folder"
    assert _staging_dirs(system_tmp) <= staging_before
    _assert_no_traceback(page)


def _zip_without_annotations() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images/a.png", b"\x89PNG")
        archive.writestr("README.txt", b"hello")
    return buffer.getvalue()


GARBAGE = [
    ("binary.xml", bytes(range(256)) * 8, "application/xml"),
    ("empty.json", b"", "application/json"),
    ("malformed.xml", b"<annotations><image id='0' name='a.png'><tag label='bag'></annotations>", "application/xml"),
    ("numbers.json", b"[1, 2, 3]", "application/json"),
    ("no-annotations.zip", _zip_without_annotations(), "application/zip"),
]


def test_garbage_uploads_show_one_line_each(hostile_server, page, hostile_dataset, server_tmp, screenshot_dir):
    _open_relabel_tab(page, hostile_server, hostile_dataset)
    for name, content, mime in GARBAGE:
        _upload(page, name, content, mime)
        # One line that names the file: a refusal (error), or the preview listing what it could not use.
        said = page.locator('[data-testid="stAlertContentError"], [data-testid="stMarkdownContainer"]').filter(
            has_text=name)
        _wait(page, hostile_server, f"the page's answer to {name}", said.first.wait_for)
        _settle(page, hostile_server)
        _assert_no_traceback(page)
        for error in page.locator('[data-testid="stAlertContentError"]').all_inner_texts():
            assert "\n" not in error.strip(), error
            assert name in error and str(server_tmp) not in error and "/work/" not in error
        assert not page.locator('[data-testid="stException"]').count()
        _screenshot(page, screenshot_dir / f"hostile-garbage-{name.replace('.', '-')}.png")
    assert not _staging_dirs(server_tmp)


# ---------------------------------------------------------------------------------------
# 3. SIGTERM


@pytest.fixture
def private_mongod(tmp_path):
    """A mongod of the test's own (stopping it must not touch the session's database)."""
    from curation.database import start_private_mongod, stop_private_mongod

    names = ("FIFTYONE_DATABASE_URI", "FIFTYONE_DATABASE_DIR")
    saved = {name: os.environ.get(name) for name in names}
    process = start_private_mongod(tmp_path)  # sets both variables for child processes
    uri = os.environ["FIFTYONE_DATABASE_URI"]
    for name, value in saved.items():  # ... but this process keeps the session's
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    yield process, uri
    if process.poll() is None:
        stop_private_mongod(process)


def _start_connected_server(uri: str, log_dir: Path, page) -> AppServer:
    env = dict(os.environ)
    env.update({"FIFTYONE_DATABASE_URI": uri, "CURATION_NO_DEMO": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"})
    server = AppServer(env, log_dir)
    server.start()
    # The sidebar lists the datasets: FiftyOne has connected to the database.
    page.goto(server.url, wait_until="domcontentloaded")
    _wait(page, server, "the overview's 'No dataset yet'", page.get_by_text("No dataset yet").wait_for)
    return server


def _seconds_to_exit_after_sigterm(server: AppServer) -> float:
    process = server.process
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    return time.monotonic() - started


@pytest.mark.parametrize("database", ["running", "gone"])
def test_server_exits_soon_after_sigterm(private_mongod, page, tmp_path, database):
    from curation.database import stop_private_mongod

    mongod, uri = private_mongod
    server = _start_connected_server(uri, tmp_path, page)
    try:
        if database == "gone":
            stop_private_mongod(mongod)
        elapsed = _seconds_to_exit_after_sigterm(server)
    finally:
        server.stop()
    assert elapsed < EXIT_WITHIN_S, (f"the server took {elapsed:.1f} s to exit after SIGTERM (database {database})\n"
                                     f"--- server log ---\n{server.log_tail()}")
