"""curation.relabel against hostile and broken input (issue 8): annotation files that are
malformed, oversized, deeply nested or type-confused; class names that try to escape the
export folder or the XML; CLI runs that must end in one line, never a traceback; and an
import that must never leave the dataset half-updated."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from curation import relabel
from curation.cli import main
from curation.decisions import record_decision
from curation.errors import CurationError, CurationInputError
from curation.files import files_outside
from curation.relabel import AnnotationFileError, export_annotation_task, import_annotations

LABEL_FIELD = "ground_truth"
UNKNOWN_ID = "0123456789abcdef01234567"


@pytest.fixture
def dataset(embedded_dataset):
    """A persistent clone of the 60-sample dataset (the CLI and subprocesses load it by name),
    with 5 samples marked "annotate"."""
    clone = embedded_dataset.clone(f"hostile-relabel-{uuid.uuid4().hex[:8]}")
    clone.persistent = True
    try:
        record_decision(clone, clone.values("id")[::12][:5], "annotate", reason="looks wrong", source="test")
        yield clone
    finally:
        clone.delete()


def _annotate_ids(dataset) -> list[str]:
    from fiftyone import ViewField as F

    return dataset.match(F("decision") == "annotate").values("id")


def _labels(dataset, ids) -> dict[str, str]:
    dataset.reload()
    return dict(zip(ids, dataset.select(ids, ordered=True).values(f"{LABEL_FIELD}.label")))


def _other_class(dataset, label: str) -> str:
    return next(name for name in sorted(dataset.distinct(f"{LABEL_FIELD}.label")) if name != label)


def _ls_task(task_id, sample_id: str, choices) -> dict:
    """One task of a Label Studio JSON export whose latest annotation chose ``choices``."""
    return {"id": task_id, "data": {"image": f"/data/local-files/?d=images/{sample_id}.png", "sample_id": sample_id},
            "annotations": [{"id": 1, "completed_by": 1, "was_cancelled": False,
                             "updated_at": "2024-05-01T10:00:00Z",
                             "result": [{"type": "choices", "from_name": "label", "to_name": "image",
                                         "value": {"choices": choices}}]}]}


def _cvat_xml(images: list[tuple[str, str]]) -> str:
    rows = "\n".join(f'  <image id="{index}" name="{name}" width="28" height="28">'
                     f'<tag label="{label}" source="manual"/></image>' for index, (name, label) in enumerate(images))
    return f'<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n{rows}\n</annotations>\n'


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; an exception escaping main() fails the test (a traceback)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, command: str) -> str:
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"curation {command}: error: "), err
    return lines[0]


# ------------------------------------------------------------ 1. all or nothing


def test_an_empty_label_among_17_corrections_is_reported_before_anything_is_written(dataset, tmp_path):
    """Before: apply_relabel refused the empty class after 5 of the 17 groups were written."""
    ids = dataset.values("id")[:17]
    before = _labels(dataset, ids)
    bad = ids[5]
    tasks = [_ls_task(200 + index, sample_id, [""] if sample_id == bad else [_other_class(dataset, before[sample_id])])
             for index, sample_id in enumerate(ids)]
    # Spread the corrections over many (class, reason) groups: one write per group.
    for index, task in enumerate(tasks):
        task["annotations"][0]["completed_by"] = {"email": f"annotator{index % 4}@example.com"}
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))

    preview = import_annotations(dataset, path, label_field=LABEL_FIELD, dry_run=True)
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)

    for outcome in (preview, result):
        assert outcome.problems == [f"{path}: task 205: expected a class name, got an empty one"]
        assert sorted(sample_id for sample_id, _, _ in outcome.changed) == sorted(set(ids) - {bad})
    after = _labels(dataset, ids)
    assert after[bad] == before[bad] and dataset[bad]["decision"] in (None, "annotate")
    assert all(after[sample_id] == _other_class(dataset, before[sample_id]) for sample_id in ids if sample_id != bad)


def test_a_blank_json_min_label_is_a_problem_not_a_relabel(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    path = tmp_path / "min.json"
    path.write_text(json.dumps([{"id": 1, "sample_id": ids[0], "label": "   "},
                                {"id": 2, "sample_id": ids[1], "label": before[ids[1]]}]))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert result.problems == [f"{path}: task 1: expected a class name, got an empty one"]
    assert result.confirmed == [ids[1]] and result.changed == []
    assert _labels(dataset, ids) == before


def test_importing_the_same_file_twice_changes_nothing_the_second_time(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    new0 = _other_class(dataset, before[ids[0]])
    path = tmp_path / "annotations.xml"
    path.write_text(_cvat_xml([(f"{ids[0]}.png", new0), (f"{ids[1]}.png", before[ids[1]])]))
    first = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert first.changed == [(ids[0], before[ids[0]], new0)] and first.confirmed == [ids[1]]
    history = [len(dataset[sample_id]["decision_history"]) for sample_id in ids[:2]]

    second = import_annotations(dataset, path, label_field=LABEL_FIELD)

    assert second.changed == [] and second.confirmed == [] and sorted(second.already_applied) == sorted(ids[:2])
    assert "already applied 2" in second.summary()
    dataset.reload()
    assert dataset[ids[0]]["decision"] == "relabel" and dataset[ids[0]]["previous_label"] == before[ids[0]]
    assert [len(dataset[sample_id]["decision_history"]) for sample_id in ids[:2]] == history


def test_a_database_failure_midway_says_so_and_a_rerun_finishes_the_import(dataset, tmp_path, monkeypatch):
    from pymongo.errors import AutoReconnect

    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    path = tmp_path / "annotations.xml"
    path.write_text(_cvat_xml([(f"{sample_id}.png", _other_class(dataset, before[sample_id])) for sample_id in ids]))
    real = relabel.apply_relabel
    calls = []

    def fail_on_the_second_write(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise AutoReconnect("connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(relabel, "apply_relabel", fail_on_the_second_write)
    with pytest.raises(CurationError, match=r"database failed after .* rerun the same import to finish"):
        import_annotations(dataset, path, label_field=LABEL_FIELD)
    monkeypatch.setattr(relabel, "apply_relabel", real)

    rerun = import_annotations(dataset, path, label_field=LABEL_FIELD)

    assert rerun.problems == [] and len(rerun.changed) + len(rerun.already_applied) == 5 and rerun.already_applied
    after = _labels(dataset, ids)
    assert all(after[sample_id] == _other_class(dataset, before[sample_id]) for sample_id in ids)
    assert set(dataset.select(ids).values("decision")) == {"relabel"}


# ------------------------------------------------------------ 2. type confusion, bombs, floods


@pytest.mark.parametrize("choices, shown", [([None], "null"), ([["x"]], "list"), ([{"a": 1}], "object"),
                                            ([3], "number 3"), ([True], "boolean true")])
def test_a_label_that_is_not_a_string_is_a_problem_naming_the_task(dataset, tmp_path, choices, shown):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([_ls_task(77, ids[0], choices)]))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert result.changed == [] and result.confirmed == [] and result.new_classes == []
    (problem,) = result.problems
    assert problem.startswith(f"{path}: task 77: ") and "expected a class name (a string)" in problem and shown in problem
    assert _labels(dataset, ids) == before


def test_deeply_nested_json_is_a_clear_error(dataset, tmp_path):
    path = tmp_path / "export.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(AnnotationFileError, match=rf"{path}: JSON nested too deeply"):
        import_annotations(dataset, path, label_field=LABEL_FIELD)


def test_a_nested_value_is_shown_short_in_the_problem(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    nested = json.loads("[" * 400 + "]" * 400)
    path = tmp_path / "min.json"
    path.write_text(json.dumps([{"id": 5, "sample_id": ids[0], "label": nested},
                                {"id": "x" * 5000, "sample_id": ids[1], "label": None}]))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert len(result.problems) == 2 and all(len(line) < 400 for line in result.problems)
    assert result.problems[0].startswith(f"{path}: task 5: ")


def test_deeply_nested_xml_is_a_clear_error(dataset, tmp_path):
    path = tmp_path / "annotations.xml"
    path.write_text("<annotations>" + "<a>" * 100_000 + "</a>" * 100_000 + "</annotations>")
    with pytest.raises(AnnotationFileError, match=rf"{path}: XML nested deeper than \d+ elements"):
        import_annotations(dataset, path, label_field=LABEL_FIELD)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotations><image id="0" name="a.png"><tag label="&lol9;"/></image></annotations>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotations [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotations><image id="0" name="a.png"><tag label="&secret;"/></image></annotations>
"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_xml_entities_are_refused(dataset, tmp_path, xml):
    path = tmp_path / "annotations.xml"
    path.write_text(xml)
    with pytest.raises(AnnotationFileError, match=rf"{path}: .*document type declaration .* is refused"):
        import_annotations(dataset, path, label_field=LABEL_FIELD)


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """A 1 MB zip whose annotations.xml unpacks to 1 GiB (of blanks inside <annotations>)."""
    path = tmp_path_factory.mktemp("bomb") / "task.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("annotations.xml", "w", force_zip64=True) as member:
            member.write(b"<annotations>")
            chunk = b" " * (1 << 20)
            for _ in range(1024):
                member.write(chunk)
            member.write(b"</annotations>")
    assert path.stat().st_size < 2 << 20
    return path


_MEASURE_IMPORT = textwrap.dedent("""
    import json, sys
    from curation import relabel
    import fiftyone as fo

    def peak_mib():  # the process's peak resident memory so far
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    dataset = fo.load_dataset(sys.argv[1])
    data = open(sys.argv[2], "rb").read() if sys.argv[3] == "bytes" else None
    before = peak_mib()
    try:
        if data is None:
            relabel.import_annotations(dataset, sys.argv[2], label_field="ground_truth", dry_run=True)
        else:
            relabel.import_annotations_from_bytes(dataset, data, label_field="ground_truth", name_hint="task.zip", dry_run=True)
        outcome = "imported"
    except relabel.AnnotationFileError as error:
        outcome = str(error)
    print(json.dumps({"before": before, "after": peak_mib(), "outcome": outcome}))
""")


@pytest.mark.parametrize("how", ["path", "bytes"])
def test_a_zip_bomb_is_refused_without_unpacking_it(dataset, zip_bomb, how):
    """Before: the 1 GiB member was read and parsed whole (about 2.5 GB of memory)."""
    try:
        run = subprocess.run([sys.executable, "-c", _MEASURE_IMPORT, dataset.name, str(zip_bomb), how],
                             capture_output=True, text=True, timeout=300, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        pytest.fail("importing the zip bomb ran for more than 5 minutes")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # FiftyOne alone takes ~350 MiB; the import may add little on top of that.
    assert report["after"] - report["before"] < 100, report
    assert "annotations.xml" in report["outcome"] and "task.zip" in report["outcome"]
    assert "unpacks to 1,073,741,851 bytes" in report["outcome"] and "more than the 268,435,456" in report["outcome"]


def test_an_oversized_file_is_refused_by_its_size(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(relabel, "MAX_ANNOTATION_BYTES", 1000)
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": index, "label": "bag"} for index in range(100)]))
    with pytest.raises(AnnotationFileError, match=rf"{path}: the file holds [\d,]+ bytes, more than the 1,000 bytes"):
        import_annotations(dataset, path, label_field=LABEL_FIELD)
    with pytest.raises(AnnotationFileError, match=r"upload.json: the file holds [\d,]+ bytes, more than the 1,000"):
        relabel.import_annotations_from_bytes(dataset, path.read_bytes(), label_field=LABEL_FIELD, name_hint="upload.json")


def test_many_unknown_ids_are_summarised_not_listed(dataset, tmp_path, capsys):
    """Before: 909,813 unknown ids gave 909,814 lines; a smaller flood shows the same."""
    count = 5_000
    rows = [{"id": index, "sample_id": f"{index:024x}", "label": "bag"} for index in range(count)]
    path = tmp_path / "flood.json"
    path.write_text(json.dumps(rows))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD, dry_run=True)
    assert len(result.problems) == relabel.MAX_LISTED_PROBLEMS and result.n_problems == count
    assert result.problem_kinds == {"unknown sample id": count}
    assert result.summary() == "would change 0 label(s); confirmed 0; 5,000 problem(s): 5,000 unknown sample id"

    code, out, err = _cli(capsys, "relabel-import", "--dataset", dataset.name, "--from", str(path), "--dry-run")
    assert code == 0 and "Traceback" not in err
    assert len(err.splitlines()) == relabel.MAX_LISTED_PROBLEMS + 1
    assert err.splitlines()[-1] == f"problem: ... and {count - relabel.MAX_LISTED_PROBLEMS:,} more problem(s) like these"


# ------------------------------------------------------------ 3. CLI: one line, no traceback


@pytest.fixture
def unlabelled_dataset(small_class_tree):
    import fiftyone as fo

    dataset = fo.Dataset(f"unlabelled-{uuid.uuid4().hex[:8]}")
    dataset.persistent = True
    dataset.add_samples([fo.Sample(filepath=str(path)) for path in sorted(small_class_tree.rglob("*.png"))[:3]])
    yield dataset
    dataset.delete()


def test_cli_relabel_on_a_dataset_without_labels_is_one_line(unlabelled_dataset, tmp_path, capsys):
    name = unlabelled_dataset.name
    code, _, err = _cli(capsys, "relabel-export", "--dataset", name, "--tool", "cvat", "--out", str(tmp_path / "t"))
    line = _assert_one_line_error(code, err, "relabel-export")
    assert f"dataset {name!r} has no classification label field" in line
    (tmp_path / "a.json").write_text("[]")
    code, _, err = _cli(capsys, "relabel-import", "--dataset", name, "--from", str(tmp_path / "a.json"))
    line = _assert_one_line_error(code, err, "relabel-import")
    assert "has no classification label field" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json"]


def test_cli_relabel_export_with_an_id_that_is_not_an_id_is_one_line(dataset, tmp_path, capsys):
    code, _, err = _cli(capsys, "relabel-export", "--dataset", dataset.name, "--tool", "cvat",
                        "--out", str(tmp_path / "t"), "--ids", f"zzz,{dataset.first().id}")
    line = _assert_one_line_error(code, err, "relabel-export")
    assert "sample id" in line and "'zzz'" in line  # the wording is curation.export.build_view's
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe garbage \x89PNG", b"PK\x03\x04 truncated zip",
                                     b"<annotations><image", b'[{"id": 1, "label": ["bag"'],
                         ids=["empty", "binary", "broken-zip", "bad-xml", "bad-json"])
def test_cli_relabel_import_of_a_broken_file_is_one_line(dataset, tmp_path, capsys, content):
    path = tmp_path / "export.dat"
    path.write_bytes(content)
    code, _, err = _cli(capsys, "relabel-import", "--dataset", dataset.name, "--from", str(path))
    line = _assert_one_line_error(code, err, "relabel-import")
    assert str(path) in line


# ------------------------------------------------------------ 4. hostile class names in the export

HOSTILE_NAMES = ["../x", "</label><script>alert(1)</script>", "&", "&amp; \"double\" 'single'",
                 "c" * 10_000, "new\nline\ttab", "/etc/passwd", "..\\..\\win"]


@pytest.mark.parametrize("format", ["cvat", "labelstudio"])
def test_hostile_class_names_stay_inside_the_xml_and_json_and_round_trip(dataset, tmp_path, format):
    import fiftyone as fo

    ids = dataset.values("id")[:len(HOSTILE_NAMES)]
    dataset.set_values(LABEL_FIELD, {sample_id: fo.Classification(label=name)
                                     for sample_id, name in zip(ids, HOSTILE_NAMES)}, key_field="id")
    out_dir = tmp_path / "exports" / "task"

    export = export_annotation_task(dataset, out_dir, format=format, label_field=LABEL_FIELD, sample_ids=ids)

    written = [Path(root) / name for root, _, names in os.walk(tmp_path) for name in names]
    assert files_outside(out_dir, written) == [] and files_outside(out_dir, export.files) == []
    assert sorted(path.name for path in (tmp_path / "exports").iterdir()) == ["task"]
    assert sorted(path.name for path in (out_dir / "images").iterdir()) == sorted(f"{i}.png" for i in ids)
    assert set(HOSTILE_NAMES) <= set(export.classes)
    if format == "cvat":
        root = ET.parse(out_dir / "annotations.xml").getroot()
        assert set(HOSTILE_NAMES) <= {label.findtext("name") for label in root.findall("meta/task/labels/label")}
        assert {image.get("name"): image.find("tag").get("label") for image in root.findall("image")} == \
            {f"{sample_id}.png": name for sample_id, name in zip(ids, HOSTILE_NAMES)}
        with zipfile.ZipFile(out_dir / "task.zip") as archive:
            assert all(not name.startswith(("/", "..")) and ".." not in name.split("/") for name in archive.namelist())
        result = import_annotations(dataset, out_dir / "task.zip", label_field=LABEL_FIELD, dry_run=True)
    else:
        view = ET.parse(out_dir / "label_config.xml").getroot()
        assert set(HOSTILE_NAMES) <= {choice.get("value") for choice in view.iter("Choice")}
        tasks = json.loads((out_dir / "tasks.json").read_text())
        # What Label Studio exports once the annotator accepted every prediction.
        exported = [{"id": index, **task, "annotations": [{"result": task["predictions"][0]["result"]}]}
                    for index, task in enumerate(tasks)]
        result = relabel.import_annotations_from_bytes(dataset, json.dumps(exported).encode(), label_field=LABEL_FIELD,
                                               name_hint="export.json", dry_run=True)
    assert result.problems == [] and result.changed == [] and sorted(result.confirmed) == sorted(ids)


@pytest.mark.parametrize("bad", ["nul\x00byte", "escape\x1b[31m", "form\x0cfeed"])
def test_a_class_name_xml_cannot_carry_is_refused_before_anything_is_written(dataset, tmp_path, bad):
    import fiftyone as fo

    sample_id = dataset.first().id
    dataset.set_values(LABEL_FIELD, {sample_id: fo.Classification(label=bad)}, key_field="id")
    for format in ("cvat", "labelstudio"):
        with pytest.raises(CurationInputError, match=r"class name .* holds the control character U\+00"):
            export_annotation_task(dataset, tmp_path / "task", format=format, label_field=LABEL_FIELD,
                                   sample_ids=[sample_id])
        assert list(tmp_path.iterdir()) == []


def test_an_imported_label_xml_cannot_carry_is_a_problem(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    path = tmp_path / "min.json"
    path.write_text(json.dumps([{"id": 3, "sample_id": ids[0], "label": "a\x00b"}]))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert result.changed == [] and len(result.problems) == 1
    assert result.problems[0].startswith(f"{path}: task 3: class name 'a\\x00b' holds the control character U+0000")


def test_the_export_goes_through_atomic_directory_and_clears_a_killed_exports_leftovers(dataset, tmp_path):
    """One temp-then-rename helper for the whole library (curation.files); a staging folder
    left by an export killed with kill -9 (its process is gone) is removed by the next one."""
    assert not hasattr(relabel, "_move_into_place")
    stale = tmp_path / ".task.partial-999999999-0123abcd"
    (stale / "images").mkdir(parents=True)
    export_annotation_task(dataset, tmp_path / "task", format="cvat", label_field=LABEL_FIELD)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["task"]


# ------------------------------------------------------------ 5. from memory (the web page's upload)


def test_import_from_bytes_detects_xml_zip_and_json_and_writes_nothing(dataset, tmp_path, monkeypatch):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    new0 = _other_class(dataset, before[ids[0]])
    xml = _cvat_xml([(f"{ids[0]}.png", new0), (f"{ids[1]}.png", before[ids[1]])]).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("annotations.xml", xml)
    ls_json = json.dumps([_ls_task(1, ids[0], [new0]), _ls_task(2, ids[1], [before[ids[1]]])]).encode()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    for data, format in ((xml, "cvat"), (buffer.getvalue(), "cvat"), (ls_json, "labelstudio"),
                         (b"\xef\xbb\xbf  " + ls_json, "labelstudio")):
        result = relabel.import_annotations_from_bytes(dataset, data, label_field=LABEL_FIELD,
                                               name_hint="../../escape\x00.json", dry_run=True)
        assert result.format == format and result.problems == []
        assert result.changed == [(ids[0], before[ids[0]], new0)] and result.confirmed == [ids[1]]
    assert list(tmp_path.rglob("*")) == [tmp_path / "work"]

    applied = relabel.import_annotations_from_bytes(dataset, ls_json, label_field=LABEL_FIELD, name_hint="C:\\Users\\me\\export.json")
    assert applied.changed == [(ids[0], before[ids[0]], new0)]
    dataset.reload()
    assert dataset[ids[0]]["decision_source"] == "labelstudio:export.json"
    assert list(tmp_path.rglob("*")) == [tmp_path / "work"]


def test_import_from_bytes_names_the_upload_in_problems(dataset):
    result = relabel.import_annotations_from_bytes(dataset, json.dumps([{"id": 4, "label": "bag"}]).encode(),
                                           label_field=LABEL_FIELD, name_hint="uploads/project 1.json", dry_run=True)
    assert result.problems == ["project 1.json: task 4: no image name or sample id to match it to a sample"]
    unnamed = relabel.import_annotations_from_bytes(dataset, b"[{}]", label_field=LABEL_FIELD, dry_run=True)
    assert unnamed.problems == ["upload: item 0: no label given (expected a 'label' or 'choice' key, or 'annotations')"]


def test_import_from_bytes_refuses_what_is_not_bytes(dataset, tmp_path):
    with pytest.raises(CurationInputError, match="expected the file's content as bytes, got str"):
        relabel.import_annotations_from_bytes(dataset, "[]", label_field=LABEL_FIELD)


# ------------------------------------------------------------ 6. broken files: clear errors


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _zip_with_a_nameless_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("placeholder")
        info.filename = ""  # ZipInfo.is_dir() raises IndexError on it
        archive.writestr(info, b"<annotations/>")
    return buffer.getvalue()


BROKEN_FILES = {
    "empty": (b"", r"the file is empty"),
    "blank": (b"  \n\t ", r"the file is empty"),
    "binary": (bytes(range(256)) * 4, r"cannot tell the format"),
    "bad-xml": (b"<annotations><image id='0' name='a.png'><tag label='bag'></annotations>", r"malformed XML"),
    "not-cvat-xml": (b"<svg><rect/></svg>", r"expected a CVAT for images 1.1 file with <annotations> at the top, got <svg>"),
    "bad-json": (b'[{"id": 1, ', r"malformed JSON"),
    "json-number": (b"42", r"cannot tell the format"),
    "json-string": (b'"hello"', r"cannot tell the format"),
    "not-utf8-json": (b'[{"label": "\xff\xfe"}]', r"malformed JSON"),
    "zip-without-annotations": (_zip({"images/a.png": b"\x89PNG", "readme.txt": b"hi"}),
                                r"expected a zip holding annotations.xml .* it holds images/a.png, readme.txt"),
    "empty-zip": (_zip({}), r"it holds nothing"),
    "corrupt-zip": (_zip({"annotations.xml": b"<annotations/>" * 100})[:60] + b"\x00" * 40, r"cannot tell the format|not a readable zip"),
    "zip-with-bad-xml": (_zip({"annotations.xml": b"<annotations"}), r"\(annotations.xml\): malformed XML"),
    # found by fuzzing: tracebacks (LookupError, ValueError, IndexError) before they were handled
    "unknown-encoding": (b'<?xml version="1.0" encoding="utf98"?><annotations/>', r"cannot read the encoding"),
    "multibyte-encoding": (b'<?xml version="1.0" encoding="shift_jis"?><annotations/>', r"cannot read the encoding"),
    "not-a-text-encoding": (b'<?xml version="1.0" encoding="rot13"?><annotations/>', r"cannot read the encoding"),
    "zip-with-a-nameless-member": (_zip_with_a_nameless_member(), r"it holds nothing"),
}


@pytest.mark.parametrize("name", list(BROKEN_FILES))
def test_a_broken_file_is_an_annotation_file_error_naming_it(dataset, tmp_path, name):
    content, message = BROKEN_FILES[name]
    path = tmp_path / f"{name}.upload"
    path.write_bytes(content)
    with pytest.raises(AnnotationFileError, match=message) as raised:
        import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert str(path) in str(raised.value)
    with pytest.raises(AnnotationFileError, match=message) as raised:
        relabel.import_annotations_from_bytes(dataset, content, label_field=LABEL_FIELD, name_hint=f"{name}.upload")
    assert str(raised.value).startswith(f"{name}.upload")


def test_a_zip_member_with_a_corrupt_stream_is_a_clear_error(dataset, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations.xml", b"<annotations>" + b"<image/>" * 1000 + b"</annotations>")
    data = bytearray(buffer.getvalue())
    start = data.index(b"annotations.xml") + len("annotations.xml")
    data[start + 10:start + 40] = b"\xff" * 30  # inside the deflate stream
    with pytest.raises(AnnotationFileError, match=r"upload.zip \(annotations.xml\): cannot unpack"):
        relabel.import_annotations_from_bytes(dataset, bytes(data), label_field=LABEL_FIELD, name_hint="upload.zip")


def test_json_items_that_are_not_tasks_and_tasks_without_ids_are_problems(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(["a", "b", None, 3, {"data": {"sample_id": ids[0]}, "annotations": "yes"},
                                {"data": {"sample_id": 12345}, "annotations": []},
                                {"data": {"sample_id": ids[1]}, "annotations": [{"result": {"x": 1}}]},
                                {"id": 9, "image": "http://[::1/broken-host.png", "label": "bag"},
                                {"sample_id": ids[2], "label": before[ids[2]]}]))
    result = import_annotations(dataset, path, label_field=LABEL_FIELD)
    assert result.problems == [
        f"{path}: item 0: expected a task object, got a JSON string",
        f"{path}: item 1: expected a task object, got a JSON string",
        f"{path}: item 2: expected a task object, got a JSON null",
        f"{path}: item 3: expected a task object, got a JSON number",
        f"{path}: item 4: expected 'annotations' to be a list, got a JSON string",
        f"{path}: item 5: expected data.sample_id to be a string, got a JSON number",
        f"{path}: item 6: expected the annotation's 'result' to be a list, got a JSON object",
        f"{path}: task 9: unknown image 'http://[::1/broken-host.png' (no sample with this id or file name)",
    ]
    assert result.confirmed == [ids[2]]


def test_a_broken_mapping_json_in_the_zip_is_reported_not_fatal(dataset, tmp_path):
    ids = _annotate_ids(dataset)
    before = _labels(dataset, ids)
    data = _zip({"annotations.xml": _cvat_xml([(f"{ids[0]}.png", before[ids[0]])]).encode(),
                 "mapping.json": b'{"images": ["not", "a", "mapping"]}'})
    result = relabel.import_annotations_from_bytes(dataset, data, label_field=LABEL_FIELD, name_hint="task.zip", dry_run=True)
    assert result.confirmed == [ids[0]]
    assert result.problems == ["task.zip (mapping.json): ignored: expected {\"images\": {image name: "
                               "{\"sample_id\": ...}}}; matching by sample id and file name only"]
