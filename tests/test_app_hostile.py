"""The web app against hostile and broken input (issue 8).

- An upload's name comes from the browser: it must never become a path. The Export page's
  relabel upload is handled by ``pages/relabel_upload.py``; these tests call it with names
  that are paths (``../../tmp/x.xml``, ``/tmp/x.json``, Windows separators, NUL, markdown)
  and check that nothing appears at those paths or in the temporary folder.
- Garbage uploads (binary, empty, malformed XML, JSON that is not a task list, a zip
  without annotations) end in one line that names the upload, never a traceback or a
  server path.
- A library failure while a page draws is one line (``CurationError``, ``OSError``); any
  other exception is logged with its traceback on the server and shown without one.
- Exceptions Streamlit itself shows (outside the pages' handling) show no details either:
  ``client.showErrorDetails`` in ``.streamlit/config.toml``.
"""

from __future__ import annotations

import io
import logging
import tempfile
import tomllib
import uuid
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from curation.errors import CurationInputError

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
LABEL_FIELD = "ground_truth"


# ---------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def dataset(embedded_dataset):
    """A persistent clone of the 60-sample dataset (the app loads it by name)."""
    clone = embedded_dataset.clone(f"app-hostile-{uuid.uuid4().hex[:8]}")
    clone.persistent = True
    try:
        yield clone
    finally:
        clone.delete()


def _upload(name: str, content: bytes, file_id: str = "upload-1"):
    """What ``st.file_uploader`` returns for a browser upload called ``name``."""
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    return UploadedFile(UploadedFileRec(file_id=file_id, name=name, type="application/octet-stream", data=content),
                        None)


def _cvat_xml(images: list[tuple[str, str]]) -> bytes:
    rows = "\n".join(f'  <image id="{index}" name="{name}" width="28" height="28">'
                     f'<tag label="{label}" source="manual"/></image>' for index, (name, label) in enumerate(images))
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n{rows}\n'
            f'</annotations>\n').encode()


def _relabel_one(dataset) -> tuple[str, str, bytes]:
    """(sample id, new label, a CVAT file that gives that sample another class)."""
    sample = dataset.first()
    old = sample[LABEL_FIELD].label
    new = next(name for name in sorted(dataset.distinct(f"{LABEL_FIELD}.label")) if name != old)
    return sample.id, new, _cvat_xml([(f"{sample.id}.png", new)])


def _staging_dirs() -> set[str]:
    return {path.name for path in Path(tempfile.gettempdir()).glob("curation-upload-*")}


def _hostile_names(unique: str) -> dict[str, tuple[str, list[Path]]]:
    """name id -> (the name the browser sends, the paths a naive ``folder / name`` would write)."""
    tmp = Path(tempfile.gettempdir())
    return {
        "traversal": ("../" * 12 + f"tmp/{unique}.xml", [Path("/tmp") / f"{unique}.xml"]),
        "absolute": (f"/tmp/{unique}.json", [Path("/tmp") / f"{unique}.json"]),
        "absolute-tempdir": (str(tmp / f"{unique}.zip"), [tmp / f"{unique}.zip"]),
        "windows": ("..\\" * 12 + f"tmp\\{unique}.xml", [Path("/tmp") / f"{unique}.xml"]),
        "nested": (f"a/../../{unique}/x.xml", [tmp / unique]),
        "empty": ("", []),
        "nul": (f"\x00{unique}.xml", []),
        "markdown": (f"**{unique}** [x](javascript:alert(1)).xml", []),
        "long": ("x" * 5000 + ".xml", []),
    }


HOSTILE_NAME_IDS = list(_hostile_names("u"))


# ---------------------------------------------------------------------------------------
# The relabel upload (pages/relabel_upload.py)


@pytest.mark.parametrize("which", HOSTILE_NAME_IDS)
def test_upload_named_as_a_path_is_read_in_memory_and_never_written(dataset, which, monkeypatch):
    from pages import relabel_upload

    unique = f"curation-hostile-{uuid.uuid4().hex}"
    name, targets = _hostile_names(unique)[which]
    sample_id, new, content = _relabel_one(dataset)
    staging_before = _staging_dirs()
    calls = []
    reader = relabel_upload.import_annotations_from_bytes
    monkeypatch.setattr(relabel_upload, "import_annotations_from_bytes",
                        lambda *args, **kwargs: calls.append(kwargs) or reader(*args, **kwargs))
    state: dict = {}

    preview = relabel_upload.preview_upload(state, dataset, _upload(name, content), label_field=LABEL_FIELD,
                                            data_version=0)

    assert preview.error is None
    assert preview.result.dry_run and preview.result.changed == [(sample_id, dataset.first()[LABEL_FIELD].label, new)]
    assert "/" not in preview.name and "\\" not in preview.name and "\x00" not in preview.name
    assert len(preview.name) <= 120
    for target in targets:
        assert not target.exists(), f"the upload was written to {target}"
    assert _staging_dirs() <= staging_before, "a staging folder was left in the temporary folder"

    # A rerun with the same upload reads the kept preview: the file is not parsed (or written) again.
    again = relabel_upload.preview_upload(state, dataset, _upload(name, b"not read again"), label_field=LABEL_FIELD,
                                          data_version=0)
    assert again is preview and len(calls) == 1
    # A new upload (another file id) or a changed dataset (data version) is read afresh.
    relabel_upload.preview_upload(state, dataset, _upload(name, content, "upload-2"), label_field=LABEL_FIELD,
                                  data_version=0)
    relabel_upload.preview_upload(state, dataset, _upload(name, content, "upload-2"), label_field=LABEL_FIELD,
                                  data_version=1)
    assert len(calls) == 3


def test_applying_an_upload_named_as_a_path_writes_only_the_labels(dataset):
    from pages import relabel_upload

    unique = f"curation-hostile-{uuid.uuid4().hex}"
    name, targets = _hostile_names(unique)["traversal"]
    sample_id, new, content = _relabel_one(dataset)

    result = relabel_upload.apply_upload(dataset, _upload(name, content), label_field=LABEL_FIELD)

    assert not result.dry_run and [change[0] for change in result.changed] == [sample_id]
    dataset.reload()
    sample = dataset[sample_id]
    assert sample[LABEL_FIELD].label == new and sample["decision"] == "relabel"
    assert sample["decision_source"] == f"cvat:{unique}.xml"  # the name's last part, as a label only
    for target in targets:
        assert not target.exists()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return buffer.getvalue()


GARBAGE = {
    "binary": ("garbage.xml", bytes(range(256)) * 4),
    "empty": ("empty.json", b""),
    "malformed-xml": ("annotations.xml", b"<annotations><image id='0' name='a.png'><tag label='bag'></annotations>"),
    "json-numbers": ("export.json", b"[1, 2, 3]"),
    "json-object": ("export.json", b'{"tasks": 3}'),
    "zip-without-annotations": ("task.zip", _zip({"images/a.png": b"\x89PNG", "README.txt": b"hello"})),
    "truncated-zip": ("task.zip", _zip({"annotations.xml": b"<annotations/>" * 100})[:60]),
    "svg": ("annotations.xml", b"<svg><rect/></svg>"),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_upload_is_one_line_naming_the_upload(dataset, kind):
    """Each garbage file is either refused with one line that names it, or read as a file
    with nothing usable in it (every item a listed problem); never an exception."""
    from pages import relabel_upload

    name, content = GARBAGE[kind]
    staging_before = _staging_dirs()

    preview = relabel_upload.preview_upload({}, dataset, _upload(name, content), label_field=LABEL_FIELD,
                                            data_version=0)

    if preview.error is not None:
        assert preview.result is None
        assert "\n" not in preview.error and "Traceback" not in preview.error
        assert name in preview.error
        assert tempfile.gettempdir() not in preview.error and "/work/" not in preview.error
    else:
        assert not preview.result.changed and not preview.result.confirmed
        assert preview.result.n_problems or preview.result.problems
    assert _staging_dirs() <= staging_before


# ---------------------------------------------------------------------------------------
# Pages: library failures are one line; anything else is logged, not rendered


@pytest.fixture
def app(dataset, monkeypatch, tmp_path):
    monkeypatch.setenv("CURATION_DATASET", dataset.name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    monkeypatch.setenv("CURATION_EXPORT_DIR", str(tmp_path / "exports"))

    def make(page: str | None = None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=180)
        at.run()
        if page:
            at.switch_page(page)
            at.run()
        return at

    return make


def _no_traceback(at: AppTest) -> None:
    for exception in at.exception:
        assert not exception.stack_trace, "a traceback is shown in the page:\n" + "\n".join(exception.stack_trace)


def test_a_library_error_while_a_page_draws_is_one_line(app, monkeypatch):
    from curation import datasets

    def broken(*args, **kwargs):
        raise CurationInputError("summarize: field 'ground_truth' holds 7, expected a Classification")

    monkeypatch.setattr(datasets, "summarize", broken)
    at = app()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["summarize: field 'ground_truth' holds 7, expected a Classification"]


def test_an_unexpected_error_is_logged_with_its_traceback_and_shown_without_it(app, monkeypatch, caplog):
    from curation import datasets

    def broken(*args, **kwargs):
        raise KeyError("/srv/secret/path")

    monkeypatch.setattr(datasets, "summarize", broken)
    with caplog.at_level(logging.ERROR):
        at = app()
    _no_traceback(at)
    assert len(at.exception) == 1
    shown = at.exception[0]
    assert shown.proto.type == "KeyError"
    assert "/srv/secret" not in shown.value and "server log" in shown.value
    logged = [record for record in caplog.records if record.exc_info and record.exc_info[0] is KeyError]
    assert logged, "the traceback was not logged on the server"


def test_a_failing_action_is_one_line_and_the_page_goes_on(app, monkeypatch):
    from curation import splits

    def broken(*args, **kwargs):
        raise CurationInputError("make_splits: group field 'patient' holds lists, expected one value per sample")

    monkeypatch.setattr(splits, "make_splits", broken)
    at = app("pages/export.py")
    at.button(key="sp_preview").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["make_splits: group field 'patient' holds lists, expected one value per "
                                           "sample"]
    # The rest of the page is drawn: the other tabs' widgets are there.
    assert at.button(key="ex_go") and at.button(key="rl_export")


def test_export_into_a_path_under_a_file_is_one_line(app, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    at = app("pages/export.py")
    at.selectbox(key="ex_split_field").select("(no splits)").run()
    at.text_input(key="ex_out_fiftyone").set_value(str(blocker / "export")).run()
    next(button for button in at.button if button.label.startswith("Export ")).click().run()
    _no_traceback(at)
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and str(blocker) in errors[0]
    assert blocker.read_text() == "not a folder"


def test_relabel_task_into_a_path_under_a_file_is_one_line(app, dataset, tmp_path):
    from curation.decisions import record_decision

    record_decision(dataset, dataset.values("id")[:3], "annotate", reason="test", source="test")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    at = app("pages/export.py")
    at.text_input(key="rl_out_cvat").set_value(str(blocker / "task")).run()
    at.button(key="rl_export").click().run()
    _no_traceback(at)
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and str(blocker) in errors[0]


# ---------------------------------------------------------------------------------------
# Streamlit's own display of an uncaught exception


def test_config_hides_uncaught_exception_details():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] in ("type", "none")


def test_an_exception_no_page_handles_shows_no_traceback_or_message(monkeypatch):
    """What Streamlit shows for an exception that escapes the script, with the project's config."""
    from streamlit import config

    monkeypatch.chdir(ROOT)
    config.get_config_options(force_reparse=True)  # read ./.streamlit/config.toml, as `streamlit run` does
    try:
        def script():
            raise RuntimeError("secret at /srv/data/private.db")

        at = AppTest.from_function(script)
        at.run()
        assert len(at.exception) == 1
        assert not at.exception[0].stack_trace
        assert "secret" not in at.exception[0].value and "/srv" not in at.exception[0].value
    finally:
        config.get_config_options(force_reparse=True)
