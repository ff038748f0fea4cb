"""The image-quality finder: planted degradations are flagged by name, clean images are not,
thresholds come from each dataset's own distribution, hostile files never crash it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from curation.finders import get_spec
from curation.finders.image_quality import (PROPERTIES_DTYPE, ImageQualityConfig, cached_properties,
                                            compute_properties, find_image_quality, image_properties)

from finder_helpers import make_context
from bad_images import write_all, write_16bit_grey_png

DEMO = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"


def demo_images(count: int = 60) -> list[Image.Image]:
    paths = sorted(DEMO.glob("*/*.png"))[:count]
    return [Image.open(p).convert("L") for p in paths]


def colour_image(rng: np.random.Generator, side: int = 64) -> Image.Image:
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, side)[:, None, None]
    base = np.broadcast_to(a * (1 - t) + b * t, (side, side, 3)) + rng.normal(0, 0.04, (side, side, 3))
    image = Image.fromarray(np.clip(base * 255, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, side - 16, 2))
        draw.rectangle([x0, y0, x0 + 15, y0 + 15], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def run(folder: Path, images: list[Image.Image], config: ImageQualityConfig = ImageQualityConfig(cache=False)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index:04d}.png"
        image.save(path)
        paths.append(str(path))
    context = make_context(np.eye(len(paths), 4) + 0.1, filepaths=paths, k=2)
    return find_image_quality(context, config)


def degrade(image: Image.Image, kind: str) -> Image.Image:
    array = np.asarray(image, dtype=np.float64) / 255
    if kind == "blurred":
        return image.filter(ImageFilter.GaussianBlur(radius=max(1.5, image.width / 20)))
    if kind == "small":
        return image.resize((max(2, image.width // 3), max(2, image.height // 3)), Image.Resampling.BILINEAR)
    if kind == "dark":
        array = array * 0.2
    elif kind == "overexposed":
        array = 0.75 + 0.25 * array
    elif kind == "near_constant":
        array = np.full_like(array, 0.5)
    elif kind == "odd_aspect_ratio":
        return image.resize((image.width * 4, max(2, image.height // 2)))
    elif kind == "grayscale":
        return image.convert("L").convert("RGB")
    elif kind == "noisy":
        array = array + np.random.default_rng(1).normal(0, 0.2, array.shape)
    return Image.fromarray(np.clip(np.round(array * 255), 0, 255).astype(np.uint8), image.mode)


def issues_of(result, row: int) -> set[str]:
    value = result.table["issues"].iloc[row]
    return set(value.split(",")) if value else set()


GRAY_KINDS = ("dark", "overexposed", "near_constant", "blurred", "small", "odd_aspect_ratio")


def test_planted_degradations_in_real_grayscale_images_are_flagged_by_name(tmp_path):
    images = demo_images(60)
    planted = {i: kind for i, kind in enumerate(GRAY_KINDS)}
    result = run(tmp_path, [degrade(img, planted[i]) if i in planted else img for i, img in enumerate(images)])
    for row, kind in planted.items():
        assert kind in issues_of(result, row), (kind, result.table["reasons"].iloc[row])
        assert result.table["score"].iloc[row] >= 0.5
    clean = [row for row in range(len(images)) if row not in planted]
    assert not result.table["is_issue"].iloc[clean].any(), result.table["reasons"].iloc[clean].tolist()
    # a flat image is near-constant, never blurred (the cleanvision failure)
    assert issues_of(result, GRAY_KINDS.index("near_constant")) == {"near_constant"}
    reason = result.table["reasons"].iloc[GRAY_KINDS.index("blurred")]
    assert reason.startswith("blurred: sharpness") and "MAD below the dataset's median" in reason
    scores = result.table["score"].to_numpy()
    assert np.all((scores >= 0) & (scores <= 1))


def test_planted_degradations_in_colour_images_are_flagged_by_name(tmp_path):
    rng = np.random.default_rng(0)
    images = [colour_image(rng) for _ in range(60)]
    kinds = ("grayscale", "noisy", "dark", "blurred", "near_constant", "small")
    result = run(tmp_path, [degrade(img, kinds[i]) if i < len(kinds) else img for i, img in enumerate(images)])
    for row, kind in enumerate(kinds):
        assert kind in issues_of(result, row), (kind, result.table["reasons"].iloc[row])
    assert not result.table["is_issue"].iloc[len(kinds):].any(), result.table["reasons"].iloc[len(kinds):].tolist()
    assert result.info["colour_set"] is True


def test_grayscale_is_only_an_issue_in_a_colour_set(tmp_path):
    images = [img.convert("RGB") for img in demo_images(30)]
    result = run(tmp_path, images)
    assert result.info["colour_set"] is False and not result.table["is_issue"].any()


def test_thresholds_move_with_the_dataset(tmp_path):
    """The same dim picture is dark among bright ones and ordinary among dim ones."""
    images = demo_images(40)
    dim = degrade(images[0], "dark")
    bright_set = run(tmp_path / "bright", [dim, *images[1:]])
    dim_set = run(tmp_path / "dim", [dim, *[degrade(img, "dark") for img in images[1:]]])
    assert "dark" in issues_of(bright_set, 0)
    assert not dim_set.table["is_issue"].iloc[0]
    assert bright_set.info["thresholds"]["dark"]["median"] > dim_set.info["thresholds"]["dark"]["median"]


def test_hostile_files_never_crash(tmp_path):
    cases = write_all(tmp_path / "bad")
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.new("RGB", (1, 1), (10, 20, 30)).save(extra / "one.png")
    Image.new("L", (2000, 2), 128).save(extra / "wide.png")
    Image.new("L", (1, 300)).save(extra / "tall.png")
    write_16bit_grey_png(extra / "grey16.png")
    paths = [str(c.path) for c in cases] + [str(p) for p in sorted(extra.iterdir())] + [str(tmp_path / "missing.png")]
    rows = compute_properties(paths)
    assert rows.dtype == PROPERTIES_DTYPE and len(rows) == len(paths)
    assert not rows["valid"][paths.index(str(tmp_path / "missing.png"))]
    assert rows["valid"][paths.index(str(extra / "one.png"))]
    context = make_context(np.eye(len(paths), 4) + 0.1, filepaths=paths, k=2)
    result = find_image_quality(context, ImageQualityConfig(cache=False, min_images=3))
    assert len(result.table) == len(paths) and "unreadable" in result.summary
    unreadable = ~rows["valid"]
    assert result.table["score"][unreadable].isna().all() and not result.table["is_issue"][unreadable].any()
    # a single image: nothing to compare with, nothing flagged, no crash
    single = find_image_quality(make_context(np.ones((1, 3)), filepaths=[str(extra / "one.png")], k=1),
                                ImageQualityConfig(cache=False))
    assert not single.table["is_issue"].any() and "fewer than" in single.summary


def test_measurements_are_cached_by_path_mtime_and_size(tmp_path, monkeypatch):
    import curation.finders.image_quality as module

    paths = []
    for index, image in enumerate(demo_images(5)):
        paths.append(str(tmp_path / f"{index}.png"))
        image.save(paths[-1])
    first = cached_properties(paths)
    calls = []
    real = module.image_properties
    monkeypatch.setattr(module, "image_properties", lambda p: calls.append(p) or real(p))
    again = cached_properties(paths)
    assert calls == [] and np.array_equal(first["contrast"], again["contrast"])
    Image.new("L", (28, 28), 7).save(paths[2])
    changed = cached_properties(paths)
    assert calls == [paths[2]] and changed["contrast"][2] < 1e-9
    assert image_properties(paths[2])["valid"]


def test_spec_and_findings_columns_appended_at_the_end():
    from curation.analysis import findings_columns

    spec = get_spec("image_quality")
    assert spec.findings_columns == ("image_issue", "image_quality_score") and spec.findings_version == 2
    columns = findings_columns()  # after every earlier column (finders registered later follow)
    at = columns.index("image_issue")
    assert columns[at - 1:at + 2] == ["leak_score", "image_issue", "image_quality_score"]
    assert spec.flag_field == "image_quality_flag" and spec.queue_score == "image_quality_score"
    assert "blurred: sharpness" in spec.describe({"image_issue": "blurred", "image_quality_score": 0.7,
                                                  "image_issue_reason": "blurred: sharpness 4.1 MAD below the dataset's median"})
    assert spec.describe({"image_issue": "dark", "image_quality_score": 0.6, "image_issue_reason": None}) == "image quality: dark"


def test_analyze_writes_the_fields_and_the_findings_csv_has_the_columns(embedded_dataset):
    from curation.analysis import analyze, findings_table

    dataset = embedded_dataset.clone()
    try:
        report = analyze(dataset, ["image_quality"])
        assert "image_quality" in report.results, report.errors or report.skipped
        issues, scores = dataset.values(["image_issue", "image_quality_score"])
        assert all(isinstance(i, str) for i in issues) and all(0 <= s <= 1 for s in scores)
        table = findings_table(dataset)
        columns = list(table.columns)
        at = columns.index("image_issue")
        assert columns[at - 1:at + 2] == ["leak_score", "image_issue", "image_quality_score"]
        assert table["image_quality_score"].notna().all()
    finally:
        dataset.delete()


@pytest.mark.parametrize("mads", [0, -1])
def test_a_bad_config_is_refused(mads):
    from curation.finders.base import FinderInputError

    with pytest.raises(FinderInputError, match="mads"):
        find_image_quality(make_context(np.ones((2, 3)), k=1), ImageQualityConfig(mads=mads, cache=False))


def test_findings_page_shows_a_gallery_per_issue_type(tmp_path, fresh_name, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from curation.analysis import analyze
    from curation.datasets import load_dataset
    from curation.embeddings import compute_embeddings
    from curation.finders.image_quality import images_by_issue
    from curation.importers import import_dataset

    images = demo_images(40)
    for index, kind in ((3, "dark"), (11, "dark"), (17, "near_constant")):
        images[index] = degrade(images[index], kind)
    folder = tmp_path / "tree" / "things"
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(folder / f"{index:04d}.png")
    import_dataset(tmp_path / "tree", fresh_name, format="classes")
    dataset = load_dataset(fresh_name)
    compute_embeddings(dataset, model="efficientnet-lite0-imagenet", num_workers=0)
    analyze(dataset, ["image_quality"])
    groups = images_by_issue(dataset)
    assert set(groups["dark"]["filepath"].map(lambda p: p.split("/")[-1])) == {"0003.png", "0011.png"}
    assert list(groups["near_constant"]["filepath"].map(lambda p: p.split("/")[-1])) == ["0017.png"]
    assert list(groups)[:2] == ["near_constant", "dark"]  # in the order of ISSUES

    monkeypatch.setenv("CURATION_DATASET", fresh_name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/findings.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    issue = next(box for box in at.selectbox if box.label == "Issue")
    assert issue.options[0].startswith("near constant (1)") and any(o.startswith("dark (2)") for o in issue.options)
    captions = " ".join(c.value for c in at.caption)
    assert "near_constant: contrast" in captions
    dark = issue.set_value("dark").run()
    assert not dark.exception
    assert sum("dark: brightness" in c.value or c.value.startswith("dark") for c in dark.caption) == 2, \
        [c.value for c in dark.caption]
