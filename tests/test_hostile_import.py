"""Hostile input to import, decoding and embedding (issue 8): every bad file or row is named
with a reason, the rest still imports, nothing hangs, a kill loses seconds of work at most,
and a huge image never takes gigabytes to decode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bad_images
from curation.cli import main
from curation.datasets import curation_info, load_dataset
from curation.importers import DatasetImportError, import_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "fashion-mnist-demo"
OFFLINE_MODEL = "efficientnet-lite0-imagenet"
OFFLINE_FIELD = "embeddings_efficientnet_lite0_imagenet"


def _labels(dataset) -> dict[str, str | None]:
    return {Path(path).name: (label.label if label else None)
            for path, label in zip(*dataset.values(["filepath", "ground_truth"]))}


def _warnings_naming(report, *phrases: str) -> list[str]:
    return [warning for warning in report.warnings if all(phrase in warning for phrase in phrases)]


def _with_timeout(function, seconds: float, unblock=None):
    """``function()``, failing the test (instead of hanging it) if it has not returned in time."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the test below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock:
            unblock()
        thread.join(5)
        pytest.fail(f"still running after {seconds} s (it blocks)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _release_fifo(path: Path):
    """Unblock a reader stuck opening the named pipe ``path`` (open for writing, then close)."""
    def release():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    return release


# ---- 1. CSV rows outside the CSV's folder ------------------------------------------------


@pytest.fixture
def project(tmp_path) -> Path:
    """``project/images/{0,1,2}.png`` next to where a test writes ``project/list.csv``."""
    images = tmp_path / "project" / "images"
    images.mkdir(parents=True)
    for index in range(3):
        bad_images.write_rgb_png(images / f"{index}.png", seed=index)
    return tmp_path / "project"


def test_csv_rows_outside_the_csv_folder_are_imported_listed_and_recorded(tmp_path, project, fresh_name, monkeypatch):
    home = tmp_path / "home" / "someone"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    secret = bad_images.write_rgb_png(home / "secret.png", seed=5)
    (tmp_path / "other").mkdir()
    sibling = bad_images.write_rgb_png(tmp_path / "other" / "sibling.png", seed=6)
    absolute = bad_images.write_rgb_png(tmp_path / "absolute.png", seed=7)
    (project / "list.csv").write_text(
        "filepath,label\n"
        "images/0.png,cat\n"
        "../other/sibling.png,dog\n"
        f"{absolute},cat\n"
        "~/secret.png,dog\n"
        "images/../images/1.png,dog\n"  # a dotted path that stays inside is not outside
    )
    report = import_dataset(project / "list.csv", fresh_name)
    assert report.samples == 5, "outside rows are allowed"
    outside = _warnings_naming(report, "3 row(s)", "outside")
    assert len(outside) == 1, report.warnings
    for path in (sibling, absolute, secret):
        assert str(path) in outside[0]
    assert "images/0.png" not in outside[0] and "1.png" not in outside[0]
    recorded = curation_info(load_dataset(fresh_name))["source"]["outside_source"]
    assert recorded["count"] == 3
    assert sorted(recorded["paths"]) == sorted(str(path) for path in (sibling, absolute, secret))


def test_many_outside_rows_are_summarised_with_a_count_and_examples(tmp_path, project, fresh_name):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rows = [str(bad_images.write_rgb_png(elsewhere / f"{index:02d}.png", seed=index)) for index in range(40)]
    (project / "list.csv").write_text("filepath,label\n" + "".join(f"{row},cat\n" for row in rows))
    report = import_dataset(project / "list.csv", fresh_name)
    assert report.samples == 40
    outside = _warnings_naming(report, "40 row(s)", "outside")
    assert len(outside) == 1 and len(report.warnings) == 1, report.warnings
    assert "00.png" in outside[0] and "39.png" not in outside[0], "the first few are examples, not all 40"
    assert curation_info(load_dataset(fresh_name))["source"]["outside_source"]["count"] == 40


def test_one_unusable_row_never_rejects_the_whole_import(tmp_path, project, fresh_name):
    loop = project / "loop.png"
    loop.symlink_to(loop.name)  # resolving it raises, not only reading it
    os.mkfifo(project / "pipe.png")
    (project / "folder.png").mkdir()
    (project / "list.csv").write_text(
        "filepath,label\n"
        "images/0.png,cat\n"
        "~no-such-user-here/x.png,cat\n"   # line 3: unknown user's home
        "loop.png,cat\n"                   # line 4: symlink loop
        f"{'x' * 5000}.png,cat\n"          # line 5: file name too long
        "pipe.png,cat\n"                   # line 6: a named pipe, never to be opened
        "folder.png,cat\n"                 # line 7: a folder
        "images/1.png,dog\n"
    )
    report = _with_timeout(lambda: import_dataset(project / "list.csv", fresh_name), 60,
                           unblock=_release_fifo(project / "pipe.png"))
    assert _labels(load_dataset(fresh_name)) == {"0.png": "cat", "1.png": "dog"}
    for line, phrase in [(3, "no-such-user-here"), (4, "symbolic link loop"), (5, "too long"), (6, "named pipe"),
                         (7, "folder")]:
        assert _warnings_naming(report, f"list.csv:{line}:", phrase, "skipped"), (line, report.warnings)


# ---- 2. files a folder import used to drop silently or choke on ---------------------------


def _hostile_folder(root: Path, fmt: str) -> Path:
    """Two good images plus a dangling symlink, a symlink loop, a FIFO and a non-UTF-8 name."""
    folder = root / "cat" if fmt == "classes" else root
    folder.mkdir(parents=True, exist_ok=True)
    bad_images.write_rgb_png(folder / "good.png")
    bad_images.write_rgb_png(folder / "fine.png", seed=1)
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    (folder / "loop.png").symlink_to("loop.png")
    os.mkfifo(folder / "pipe.png")
    with open(os.path.join(os.fsencode(folder), b"\xff-latin1.png"), "wb") as handle:
        handle.write((folder / "good.png").read_bytes())
    return root


@pytest.mark.parametrize("fmt", ["classes", "images"])
def test_folder_import_names_every_file_it_skips_and_imports_the_rest(tmp_path, fresh_name, fmt):
    source = _hostile_folder(tmp_path / "source", fmt)
    pipe = (source / "cat" if fmt == "classes" else source) / "pipe.png"
    report = _with_timeout(lambda: import_dataset(source, fresh_name, format=fmt), 60, unblock=_release_fifo(pipe))
    dataset = load_dataset(fresh_name)
    assert sorted(Path(path).name for path in dataset.values("filepath")) == ["fine.png", "good.png"]
    for name, phrase in [("dangling.png", "broken symbolic link"), ("loop.png", "symbolic link loop"),
                         ("pipe.png", "named pipe"), ("\\xff-latin1.png", "not valid UTF-8")]:
        assert _warnings_naming(report, name, phrase), (name, report.warnings)
    assert all("\udcff" not in warning for warning in report.warnings), "warnings are printable text"


def test_csv_duplicate_rows_with_different_labels_warn_and_keep_the_first(project, fresh_name):
    (project / "list.csv").write_text(
        "filepath,label\nimages/0.png,cat\nimages/1.png,dog\n./images/0.png,dog\nimages/1.png,dog\n"
    )
    report = import_dataset(project / "list.csv", fresh_name)
    assert _labels(load_dataset(fresh_name)) == {"0.png": "cat", "1.png": "dog"}, "one sample per file"
    conflict = _warnings_naming(report, "0.png", "'cat'", "'dog'", "kept the first")
    assert len(conflict) == 1 and "line 2" in conflict[0] and ":4:" in conflict[0], report.warnings
    assert _warnings_naming(report, "1.png", "listed again"), report.warnings


def test_ragged_csv_rows_are_reported_by_line_number_not_misparsed(project, fresh_name):
    bad_images.write_rgb_png(project / "images" / "a,b.png")
    (project / "list.csv").write_text(
        "filepath,label\n"
        "images/0.png,cat\n"
        "images/a,b.png,dog\n"       # line 3: an unquoted comma in the path
        "images/1.png\n"             # line 4: the label is missing
        "\"images/a,b.png\",dog\n"   # line 5: quoted, fine
    )
    report = import_dataset(project / "list.csv", fresh_name)
    assert _labels(load_dataset(fresh_name)) == {"0.png": "cat", "a,b.png": "dog"}
    assert _warnings_naming(report, "list.csv:3:", "expected 2 fields", "found 3"), report.warnings
    assert _warnings_naming(report, "list.csv:4:", "expected 2 fields", "found 1"), report.warnings


def test_a_csv_whose_rows_all_have_an_extra_field_does_not_shift_its_columns(project, fresh_name):
    # pandas would take the first field as the index and read the label column as paths.
    (project / "list.csv").write_text("filepath,label\nimages/0.png,cat,extra\nimages/1.png,dog,extra\n")
    report = import_dataset(project / "list.csv", fresh_name)
    assert report.samples == 0
    assert len(_warnings_naming(report, "expected 2 fields", "found 3")) == 2, report.warnings


def test_decoding_never_opens_a_named_pipe(tmp_path):
    from curation.images import ImageLoadError, image_info, load_rgb, thumbnail_path

    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    with pytest.raises(ImageLoadError, match="named pipe"):
        _with_timeout(lambda: load_rgb(pipe), 10, unblock=_release_fifo(pipe))
    assert _with_timeout(lambda: image_info(pipe), 10, unblock=_release_fifo(pipe)) is None
    assert _with_timeout(lambda: thumbnail_path(pipe), 10, unblock=_release_fifo(pipe)) is None


def test_a_csv_source_that_is_a_named_pipe_is_an_error_not_a_hang(tmp_path, fresh_name):
    pipe = tmp_path / "list.csv"
    os.mkfifo(pipe)
    with pytest.raises(DatasetImportError, match="not a regular file"):
        _with_timeout(lambda: import_dataset(pipe, fresh_name, format="csv"), 10, unblock=_release_fifo(pipe))


# ---- 3. kill -9 during embed ----------------------------------------------------------------


def _demo_tree(folder: Path, per_class: int) -> int:
    for class_dir in sorted(path for path in DEMO.iterdir() if path.is_dir()):
        (folder / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:per_class]:
            shutil.copy(image, folder / class_dir.name / image.name)
    return per_class * 10


# The CLI in a child process, with the write interval shortened and every batch held back a
# little, so that the test depends on neither how fast this machine embeds (an idle machine
# finished all 200 images before the kill could land) nor the default WRITE_SECONDS.
_EMBED_CLI = (
    "import sys, time; import curation.embeddings as embeddings; embeddings.WRITE_SECONDS = float(sys.argv[1]); "
    "_encode = embeddings._encode_adaptive; "
    "embeddings._encode_adaptive = lambda embedder, batch: (time.sleep(float(sys.argv[2])), _encode(embedder, batch))[1]; "
    "from curation.cli import main; sys.exit(main(sys.argv[3:]))"
)
KILL_TEST_WRITE_SECONDS = 0.5
KILL_TEST_BATCH_PAUSE = 0.2  # seconds added to each batch of 8: 25 batches take 5 s at least


@pytest.mark.slow
def test_embed_killed_midway_keeps_what_it_computed_and_the_rerun_does_only_the_rest(tmp_path, fresh_name, capsys):
    from curation.embeddings import WRITE_SECONDS

    assert WRITE_SECONDS <= 10, "a kill must lose seconds of work at most"
    total = _demo_tree(tmp_path / "tree", per_class=20)
    import_dataset(tmp_path / "tree", fresh_name, format="classes")
    command = [sys.executable, "-c", _EMBED_CLI, str(KILL_TEST_WRITE_SECONDS), str(KILL_TEST_BATCH_PAUSE), "embed", "--dataset", fresh_name,
               "--model", OFFLINE_MODEL, "--workers", "0", "--batch-size", "8", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    progress: list[tuple[float, int]] = []  # (when it was read, images done), one per batch
    output = bytearray()

    def read_progress():
        for chunk in iter(lambda: os.read(process.stderr.fileno(), 4096), b""):
            output.extend(chunk)
            for done in re.findall(rb"(\d+)/%d" % total, chunk):
                if int(done) > 0 and (not progress or int(done) > progress[-1][1]):
                    progress.append((time.monotonic(), int(done)))

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        # Kill once progress has run for a few write intervals (however fast this machine embeds).
        while time.monotonic() < deadline and process.poll() is None and (
                len(progress) < 4 or progress[-1][0] - progress[0][0] < 4 * KILL_TEST_WRITE_SECONDS):
            time.sleep(0.02)
        assert process.poll() is None, f"the run ended before it could be killed: {output.decode(errors='replace')}"
        assert len(progress) >= 4, f"no progress in 120 s: {output.decode(errors='replace')}"
        killed_at = time.monotonic()
        process.kill()  # SIGKILL: no handler runs, nothing is written on the way out
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    reader.join(10)
    seen = progress[-1][1]
    dataset = load_dataset(fresh_name)
    stored = dataset.count(OFFLINE_FIELD) if dataset.has_sample_field(OFFLINE_FIELD) else 0
    # Written at the end of the first batch that finishes a write interval after the last
    # write: everything done an interval plus the slowest batch before the kill is stored.
    slowest_batch = max(later - earlier for (earlier, _), (later, _) in zip(progress, progress[1:]))
    safe = max((done for when, done in progress if when <= killed_at - KILL_TEST_WRITE_SECONDS - slowest_batch),
               default=0)
    assert safe > 0, progress
    assert stored >= safe, (stored, safe, seen, progress)
    assert stored < total

    assert main(["embed", "--dataset", fresh_name, "--model", OFFLINE_MODEL, "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"embedded {total - stored} new samples" in out and f"({stored} already done, 0 skipped)" in out, out
    assert load_dataset(fresh_name).count(OFFLINE_FIELD) == total
    print(f"killed with {seen}/{total} done: {stored} stored ({safe} done before the last write interval); "
          f"the rerun embedded {total - stored}")


# ---- 4. a huge, flat PNG decodes without gigabytes ------------------------------------------

MEMORY_LIMIT_MIB = 1024

_MEASURE = r"""
import json, sys
from pathlib import Path
from curation import embeddings, images

how, path = sys.argv[1], sys.argv[2]
if how == "thumbnail":
    made = images.thumbnail_path(path)
    result = {"size": list(images.Image.open(made).size) if made else None}
elif how == "embedding":
    _, size, reason = embeddings._ImageFiles([path], preprocess=lambda image: list(image.size))[0]
    result = {"size": size, "reason": reason}
else:
    result = {"size": list(images.load_rgb(path, max_side=512).size)}
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        result["peak_mib"] = int(line.split()[1]) / 1024
print(json.dumps(result))
"""


def _decode_in_subprocess(how: str, path: Path, cache: Path) -> dict:
    env = {**os.environ, "CURATION_CACHE_DIR": str(cache)}
    finished = subprocess.run([sys.executable, "-c", _MEASURE, how, str(path)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _flat_16bit_png(path: Path, width: int, height: int) -> Path:
    """16-bit greyscale, flat but for one block: a few hundred KB on disk, ~90 Mpx decoded."""
    image = Image.new("I;16", (width, height), 1000)
    image.paste(3000, (width // 10, height // 10, width // 3, height // 4))
    image.save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """9000 x 9900 = 89.1 Mpx, just under Pillow's decompression-bomb warning (89.5 Mpx)."""
    path = _flat_16bit_png(tmp_path_factory.mktemp("huge") / "huge.png", 9000, 9900)
    assert path.stat().st_size < 1_000_000 and 9000 * 9900 < Image.MAX_IMAGE_PIXELS
    return path


@pytest.mark.slow
@pytest.mark.parametrize("how", ["thumbnail", "reduced"])
def test_a_huge_flat_png_decodes_reduced_within_a_memory_limit(huge_png, tmp_path, how):
    measured = _decode_in_subprocess(how, huge_png, tmp_path / "cache")
    print(f"{how} of 9000x9900 16-bit PNG: peak {measured['peak_mib']:.0f} MiB")
    assert measured["size"] is not None
    width, height = measured["size"]
    assert abs(width / height - 9000 / 9900) < 0.02, "the aspect ratio is kept"
    assert measured["peak_mib"] < MEMORY_LIMIT_MIB, measured


@pytest.mark.slow
def test_embedding_skips_an_image_over_its_pixel_limit_with_a_reason(huge_png, tmp_path):
    from curation.embeddings import MAX_EMBED_PIXELS

    measured = _decode_in_subprocess("embedding", huge_png, tmp_path / "cache")
    print(f"embedding decode of 9000x9900 16-bit PNG: peak {measured['peak_mib']:.0f} MiB")
    assert measured["size"] is None
    assert "too large" in measured["reason"] and "9000x9900" in measured["reason"]
    assert f"{MAX_EMBED_PIXELS:,}" in measured["reason"]
    assert measured["peak_mib"] < MEMORY_LIMIT_MIB, measured


@pytest.mark.slow
def test_embedding_decodes_a_large_image_under_its_limit_reduced(tmp_path):
    path = _flat_16bit_png(tmp_path / "large.png", 6000, 6600)  # 39.6 Mpx, just under the limit
    measured = _decode_in_subprocess("embedding", path, tmp_path / "cache")
    print(f"embedding decode of 6000x6600 16-bit PNG: peak {measured['peak_mib']:.0f} MiB")
    assert measured["reason"] is None
    assert min(measured["size"]) >= 512, "reduced, but never below what the model is fed from"
    assert measured["peak_mib"] < MEMORY_LIMIT_MIB / 2, measured


def test_reduced_decoding_keeps_orientation_and_transparency(tmp_path):
    from curation.images import load_rgb

    rotated = bad_images.write_exif_rotated_jpeg(tmp_path / "r.jpg", width=600, height=200)
    png = tmp_path / "r.png"
    with Image.open(rotated) as image:
        image.save(png, exif=image.getexif().tobytes())
    assert load_rgb(png, max_side=50).size == (50, 150), "reduced by 4, then turned upright"
    palette = bad_images.write_palette_png_with_transparency(tmp_path / "p.png", width=400, height=200)
    array = np.asarray(load_rgb(palette, max_side=50))
    assert array.shape == (50, 100, 3)
    assert np.all(array[:, :50] == 255) and np.all(array[:, 50:] == (0, 0, 255)), "no blended palette colours"


def test_reduced_16bit_decoding_matches_the_full_decode(tmp_path):
    from curation.images import load_rgb

    path = bad_images.write_16bit_grey_png(tmp_path / "g.png", width=400, height=120, low=1000, high=3000)
    reduced = np.asarray(load_rgb(path, max_side=60)).astype(int)
    full = np.asarray(load_rgb(path).resize((200, 60), Image.Resampling.BOX)).astype(int)
    assert reduced.shape == (60, 200, 3)
    assert np.abs(reduced - full).max() <= 2


# ---- 5. bad input is a one-line error, never a traceback ------------------------------------


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("curation import: error:")
    return lines[0]


@pytest.mark.parametrize(
    "make, phrase",
    [
        (lambda root: (root / "empty.csv", (root / "empty.csv").write_text(""))[0], "empty"),
        (lambda root: (root / "blank.csv", (root / "blank.csv").write_text("\n\n  \n"))[0], "empty"),
        (lambda root: (root / "nolabel.csv", (root / "nolabel.csv").write_text("filepath\na.png\n"))[0],
         "expected a column 'label'"),
        (lambda root: (root / "binary.csv", (root / "binary.csv").write_bytes(bytes(range(256)) * 4))[0],
         "expected a column 'filepath'"),
        (lambda root: (root / "coco", (root / "coco").mkdir(), (root / "coco" / "labels.json").write_text("{ no"))[0],
         "could not import as 'coco'"),
        (lambda root: (root / "loop", (root / "loop").symlink_to(root / "loop"))[0], "symbolic link"),
    ],
    ids=["empty-csv", "blank-csv", "csv-without-label-column", "binary-csv", "coco-not-json", "source-symlink-loop"],
)
def test_bad_import_source_is_a_one_line_error(tmp_path, fresh_name, capsys, make, phrase):
    line = _one_line_error(capsys, ["import", str(make(tmp_path)), "--name", fresh_name])
    assert phrase in line, line


def test_a_home_folder_that_cannot_be_found_is_a_one_line_error(fresh_name, capsys):
    line = _one_line_error(capsys, ["import", "~no-such-user-here/list.csv", "--name", fresh_name])
    assert "no-such-user-here" in line


@pytest.mark.parametrize(
    "text",
    ["\ufefffilepath,label\nimages/0.png,cat\nimages/1.png,dog\n",
     "filepath;label\nimages/0.png;cat\nimages/1.png;dog\n",
     "filepath\tlabel\r\nimages/0.png\tcat\r\nimages/1.png\tdog\r\n"],
    ids=["utf8-bom", "semicolons", "tabs-crlf"],
)
def test_csv_with_a_bom_or_another_delimiter_imports(project, fresh_name, capsys, text):
    (project / "list.csv").write_text(text, encoding="utf-8")
    assert main(["import", str(project / "list.csv"), "--name", fresh_name]) == 0, capsys.readouterr().err
    assert _labels(load_dataset(fresh_name)) == {"0.png": "cat", "1.png": "dog"}


def test_a_csv_that_is_not_utf8_names_its_bad_rows(project, fresh_name, capsys):
    (project / "list.csv").write_bytes("filepath,label\nimages/0.png,cat\nimages/1.png,caf\xe9\n".encode("latin-1"))
    assert main(["import", str(project / "list.csv"), "--name", fresh_name]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "list.csv:3:" in err and "UTF-8" in err, err
    assert _labels(load_dataset(fresh_name)) == {"0.png": "cat"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder: permissions cannot be tested")
def test_an_unreadable_class_folder_is_named_and_the_rest_imports(tmp_path, fresh_name):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        bad_images.write_rgb_png(tmp_path / label / "x.png")
    (tmp_path / "a" / "private").mkdir()
    bad_images.write_rgb_png(tmp_path / "a" / "private" / "y.png")
    (tmp_path / "a" / "private").chmod(0)
    try:
        report = import_dataset(tmp_path, fresh_name, format="classes")
    finally:
        (tmp_path / "a" / "private").chmod(0o755)
    assert report.samples == 2
    assert _warnings_naming(report, "private", "cannot list"), report.warnings


def test_a_folder_that_cannot_be_listed_is_named_and_the_rest_imports(tmp_path, fresh_name, monkeypatch):
    """The same as above for any user: listing the folder fails as it would without permission."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        bad_images.write_rgb_png(tmp_path / label / "x.png")
    private = tmp_path / "a" / "private"
    private.mkdir()
    bad_images.write_rgb_png(private / "y.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == private:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = import_dataset(tmp_path, fresh_name, format="classes")
    assert report.samples == 2
    assert _warnings_naming(report, "a/private", "cannot list folder", "Permission denied"), report.warnings
