"""curation.object_images and curation.object_plots: box crops, whole images with their boxes
drawn, their caches, the object map and the object review table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.errors import CurationInputError

DEMO = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"
CLASSES = ("trouser", "bag", "sneaker")
CANVAS = (200, 80)  # width, height
ITEM = 56  # each 28 x 28 demo image pasted at twice its size
HOSTILE_NAMES = ("x" * 5000, "line\nbreak\x00nul\x1b[31m", "\u202egnp.exe", "猫 🐈‍⬛ كلب", "", " \t ")


# ---------------------------------------------------------------------------------------------
# A small detection dataset with planted problems (shared with tests/test_app_objects.py)


def _demo(class_name: str, index: int) -> Path:
    return sorted((DEMO / class_name).glob("*.png"))[index]


def _canvas(path: Path, items: list[tuple[str, int]]) -> list[tuple[str, list[float]]]:
    """Paste demo images of ``items`` (class, index) side by side on a black canvas saved at
    ``path``; returns (class, relative box) for each, the box exactly the pasted item."""
    canvas = Image.new("RGB", CANVAS, (0, 0, 0))
    boxes = []
    for slot, (class_name, index) in enumerate(items):
        left, top = 8 + 64 * slot, 12
        canvas.paste(Image.open(_demo(class_name, index)).convert("RGB").resize((ITEM, ITEM)), (left, top))
        boxes.append((class_name, [left / CANVAS[0], top / CANVAS[1], ITEM / CANVAS[0], ITEM / CANVAS[1]]))
    canvas.save(path)
    return boxes


def build_object_dataset(name: str, folder: Path, images: int = 24):
    """``images`` canvases of three fashion items (trouser, bag, sneaker in turn), a
    ``ground_truth`` Detections field and ``predictions`` that match it, with planted
    problems: two boxes of the wrong class, a box drawn twice, a box nobody annotated (the
    model predicts it). Returns (dataset, {problem: (image index, box position)})."""
    import fiftyone as fo

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    planted = {"wrong": [(6, 1), (15, 0)], "duplicate": (1, 3), "missing": (3, 2)}
    wrong = dict(planted["wrong"])
    for index in range(images):
        items = [(CLASSES[(slot + index) % 3], index) for slot in range(3)]
        truth = _canvas(folder / f"canvas_{index:03d}.png", items)
        annotations = []
        for slot, (label, box) in enumerate(truth):
            if wrong.get(index) == slot:
                label = CLASSES[(CLASSES.index(label) + 1) % 3]
            annotations.append(fo.Detection(label=label, bounding_box=list(box)))
        predictions = [fo.Detection(label=label, bounding_box=list(box), confidence=0.9) for label, box in truth]
        if index == planted["duplicate"][0]:
            label, box = truth[0]
            annotations.append(fo.Detection(label=label, bounding_box=[v + 0.004 for v in box]))
        if index == planted["missing"][0]:
            annotations.pop(planted["missing"][1])
        samples.append(fo.Sample(filepath=str(folder / f"canvas_{index:03d}.png"),
                                 ground_truth=fo.Detections(detections=annotations),
                                 predictions=fo.Detections(detections=predictions)))
    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    dataset.compute_metadata()
    return dataset, planted


def box_id(dataset, index: int, position: int, field: str = "ground_truth") -> str:
    return dataset.skip(index).first()[field].detections[position].id


def build_analysed_dataset(name: str, folder: Path, embedder):
    """:func:`build_object_dataset`, persistent (the app loads it by name), its boxes embedded
    with ``embedder`` and analysed with the predictions (findings written)."""
    from curation.objects import analyze_objects, write_object_findings
    from curation.patches import compute_patch_embeddings

    dataset, planted = build_object_dataset(name, folder)
    dataset.persistent = True
    compute_patch_embeddings(dataset, "ground_truth", embedder=embedder, image_size=96, num_workers=0)
    write_object_findings(dataset, "ground_truth", analyze_objects(dataset, "ground_truth", "predictions"))
    return dataset, planted


@pytest.fixture(scope="session")
def analysed_objects(tmp_path_factory, offline_embedder):
    """:func:`build_analysed_dataset` with the offline EfficientNet. Tests that change it use a clone."""
    dataset, planted = build_analysed_dataset("objects-analysed", tmp_path_factory.mktemp("object-images"),
                                              offline_embedder)
    yield dataset, planted
    dataset.delete()


@pytest.fixture
def picture(tmp_path) -> Path:
    """A 200 x 100 image with a white square at (40..80, 20..60) on dark grey."""
    image = Image.new("RGB", (200, 100), (40, 40, 40))
    image.paste((255, 255, 255), (40, 20, 80, 60))
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "picture.png"
    image.save(path)
    return path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATION_CACHE_DIR", str(tmp_path / "cache"))


SQUARE = (0.2, 0.2, 0.2, 0.4)  # the white square of ``picture``


# ---------------------------------------------------------------------------------------------
# Crops


def test_crop_shows_the_box_with_context_and_is_cached_outside_the_image_folder(picture, tmp_path):
    from curation.object_images import CROP_SIZE, crop_thumbnail_path

    before = set(os.listdir(picture.parent))
    path = crop_thumbnail_path(picture, SQUARE, context=0.25)
    assert path is not None and path.is_file()
    assert str(path).startswith(str(tmp_path / "cache")) and set(os.listdir(picture.parent)) == before
    crop = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert crop.shape == (CROP_SIZE, CROP_SIZE)
    # 40 x 40 box plus 10 px each side: 60 x 60 scaled to 160; the square fills the middle 2/3.
    middle = crop[60:100, 60:100]
    assert middle.mean() > 230
    assert crop[2:12, 80].mean() < 90  # the context above the box is the dark background
    mtime = path.stat().st_mtime_ns
    assert crop_thumbnail_path(picture, SQUARE, context=0.25) == path and path.stat().st_mtime_ns == mtime
    assert crop_thumbnail_path(picture, SQUARE, context=0.1) != path  # another context, another file


def test_crop_of_an_edited_image_is_made_again(picture):
    from curation.object_images import crop_thumbnail_path

    first = crop_thumbnail_path(picture, SQUARE)
    Image.new("RGB", (200, 100), (0, 0, 255)).save(picture)
    os.utime(picture, ns=(picture.stat().st_atime_ns, picture.stat().st_mtime_ns + 10_000_000))
    second = crop_thumbnail_path(picture, SQUARE)
    assert second != first
    centre = np.asarray(Image.open(second))[80, 80]
    assert centre[2] > 200 and centre[0] < 60  # blue now


@pytest.mark.parametrize("box", [(0.5, 0.5, 0.0, 0.2), (1.2, 0.1, 0.1, 0.1), (float("nan"), 0, 0.1, 0.1),
                                 (0.1, 0.1), None, "abcd"])
def test_crop_of_a_degenerate_box_is_none(picture, box):
    from curation.object_images import crop_thumbnail_path

    assert crop_thumbnail_path(picture, box) is None


def test_crop_of_an_unreadable_or_missing_image_is_none(tmp_path):
    from curation.object_images import crop_thumbnail_path

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert crop_thumbnail_path(broken, SQUARE) is None
    assert crop_thumbnail_path(tmp_path / "nope.png", SQUARE) is None


def test_crop_of_a_tiny_box_is_enlarged_and_of_a_huge_image_is_small(tmp_path):
    from curation.object_images import CROP_SIZE, crop_thumbnail_path

    large = tmp_path / "large.png"
    Image.new("RGB", (3000, 2000), (10, 200, 10)).save(large)
    tiny = crop_thumbnail_path(large, (0.5, 0.5, 2 / 3000, 2 / 2000))
    whole = crop_thumbnail_path(large, (0.0, 0.0, 1.0, 1.0))
    for path in (tiny, whole):
        assert Image.open(path).size == (CROP_SIZE, CROP_SIZE)
        assert path.stat().st_size < 50_000


# ---------------------------------------------------------------------------------------------
# Whole images with boxes


def test_image_with_boxes_highlights_the_box_in_question(picture):
    from curation.object_images import HIGHLIGHT_COLOUR, DrawnBox, boxes_image_path

    boxes = [DrawnBox("square", SQUARE), DrawnBox("elsewhere", (0.6, 0.3, 0.3, 0.5))]
    path = boxes_image_path(picture, boxes, highlight=0, size=400)
    image = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    assert image.shape == (200, 400, 3)
    # The highlighted box's left edge (x = 80 at this scale) is magenta; the picture outside
    # it is dimmed, the inside of the box is not.
    edge = image[60:100, 78:83].reshape(-1, 3)
    assert (np.abs(edge - HIGHLIGHT_COLOUR).sum(axis=1) < 90).mean() > 0.3
    assert image[100, 120].mean() > 230  # inside the square: still white
    assert image[190, 20].mean() < 40 * 0.7  # background: dimmed from 40
    plain = boxes_image_path(picture, boxes, highlight=None, size=400)
    assert plain != path
    assert np.asarray(Image.open(plain).convert("RGB"), dtype=int)[190, 20].mean() > 30  # not dimmed


def test_image_with_boxes_is_cached_and_keyed_on_the_boxes(picture):
    from curation.object_images import DrawnBox, boxes_image_path

    boxes = [DrawnBox("square", SQUARE)]
    first = boxes_image_path(picture, boxes, 0)
    assert boxes_image_path(picture, boxes, 0) == first
    assert boxes_image_path(picture, [DrawnBox("relabelled", SQUARE)], 0) != first
    assert boxes_image_path(picture, [DrawnBox("square", SQUARE, "removed")], 0) != first
    assert boxes_image_path(picture, [DrawnBox("square", (0.2, 0.2, 0.3, 0.4))], 0) != first
    assert list(picture.parent.glob("*.jpg")) == []


def test_small_images_are_enlarged_for_drawing(tmp_path):
    from curation.object_images import DrawnBox, boxes_image_path

    path = tmp_path / "tiny.png"
    Image.open(_demo("bag", 0)).save(path)
    out = boxes_image_path(path, [DrawnBox("bag", (0.1, 0.1, 0.8, 0.8))], 0, size=560)
    assert Image.open(out).size == (560, 560)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_class_names_draw(picture, name):
    from curation.object_images import DrawnBox, boxes_image_path, display_label

    shown = display_label(name)
    assert 0 < len(shown) <= 40 and not any(ord(c) < 32 or c == "\u202e" for c in shown)
    boxes = [DrawnBox(name, SQUARE), DrawnBox(name, (0.0, 0.0, 0.99, 0.05)), DrawnBox(None, (0.7, 0.7, 0.5, 0.5))]
    path = boxes_image_path(picture, boxes, highlight=0)
    assert path is not None and Image.open(path).size[0] > 0


def test_hostile_names_draw_with_pillows_own_font(picture, monkeypatch):
    """Without DejaVu (a bare container), Pillow's own scalable font draws the names."""
    from PIL import ImageFont

    from curation import object_images

    real_truetype = ImageFont.truetype

    def no_system_fonts(font=None, *args, **kwargs):
        if isinstance(font, (str, os.PathLike)):
            raise OSError("cannot open resource")
        return real_truetype(font, *args, **kwargs)

    object_images._font.cache_clear()
    monkeypatch.setattr(ImageFont, "truetype", no_system_fonts)
    try:
        boxes = [object_images.DrawnBox(name, SQUARE) for name in HOSTILE_NAMES]
        assert object_images.boxes_image_path(picture, boxes, highlight=2) is not None
    finally:
        object_images._font.cache_clear()


def test_hostile_names_draw_with_a_bitmap_font_as_escaped_text(picture, monkeypatch):
    """Pillow without FreeType has only a Latin-1 bitmap font: other names are drawn escaped."""
    from PIL import Image as PILImage, ImageDraw, ImageFont

    from curation import object_images

    bitmap = ImageFont.load_default_imagefont()
    draw = ImageDraw.Draw(PILImage.new("RGB", (10, 10)))
    with pytest.raises(UnicodeEncodeError):
        draw.textbbox((0, 0), "猫", font=bitmap)  # what the fallback is for
    assert object_images._drawable_text(draw, "猫 cat", bitmap) == "\\u732b cat"
    monkeypatch.setattr(object_images, "_font", lambda size: bitmap)
    boxes = [object_images.DrawnBox(name, SQUARE) for name in HOSTILE_NAMES]
    assert object_images.boxes_image_path(picture, boxes, highlight=3) is not None


def test_boxes_that_cannot_be_drawn_are_left_out_not_fatal(picture):
    from curation.object_images import DrawnBox, boxes_image_path

    boxes = [DrawnBox("nan", (float("nan"), 0.1, 0.2, 0.2)), DrawnBox("flat", (0.5, 0.5, 0.0, 0.3)),
             DrawnBox("negative", (0.6, 0.6, -0.2, -0.2)), DrawnBox("outside", (3.0, 3.0, 0.1, 0.1)),
             DrawnBox("short", (0.1,)), DrawnBox("ok", SQUARE)]
    for highlight in range(len(boxes)):
        assert boxes_image_path(picture, boxes, highlight) is not None


def test_bad_highlight_and_kind_are_refused(picture):
    from curation.object_images import DrawnBox, boxes_image_path

    with pytest.raises(CurationInputError, match="highlight: expected an index of the 1 boxes, got 3"):
        boxes_image_path(picture, [DrawnBox("a", SQUARE)], 3)
    with pytest.raises(CurationInputError, match="box kind: expected one of annotation, removed, predicted"):
        boxes_image_path(picture, [DrawnBox("a", SQUARE, "ghost")])


def test_unreadable_image_gives_none(tmp_path):
    from curation.object_images import DrawnBox, boxes_image_path

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    assert boxes_image_path(broken, [DrawnBox("a", SQUARE)], 0) is None


def test_display_label():
    from curation.object_images import display_label

    assert display_label("cat") == "cat"
    assert display_label("a\nb\tc") == "a b c"
    assert display_label(None) == "(no label)" and display_label("\x00\x01") == "(no label)"
    assert display_label("y" * 100) == "y" * 39 + "…"
    assert display_label(7) == "7"


# ---------------------------------------------------------------------------------------------
# Dataset-level: the image of a sample, the review table, the map, tags


def test_image_with_boxes_of_a_sample_highlights_an_annotated_or_a_missing_box(analysed_objects):
    from curation.object_images import image_with_boxes

    dataset, planted = analysed_objects
    sample = dataset.skip(planted["missing"][0]).first()
    missing = sample["ground_truth_missing"].detections[0]
    as_missing = image_with_boxes(dataset, "ground_truth", sample.id, highlight_id=missing.id)
    as_box = image_with_boxes(dataset, "ground_truth", sample.id, highlight_id=sample.ground_truth.detections[0].id)
    plain = image_with_boxes(dataset, "ground_truth", sample.id)
    assert len({as_missing, as_box, plain}) == 3
    with pytest.raises(CurationInputError, match="has no box with id 'nope'"):
        image_with_boxes(dataset, "ground_truth", sample.id, highlight_id="nope")
    with pytest.raises(CurationInputError, match="not Detections"):
        image_with_boxes(dataset, "filepath", sample.id)


def test_review_table_has_the_planted_problems_with_scores_and_ids(analysed_objects):
    from curation.object_images import REVIEW_COLUMNS, object_review_table

    dataset, planted = analysed_objects
    table = object_review_table(dataset, "ground_truth")
    assert list(table.columns) == list(REVIEW_COLUMNS)
    boxes = table[table["object_id"].notna()].set_index("object_id")
    assert len(boxes) == 24 * 3 + 1 - 1
    duplicate = box_id(dataset, *planted["duplicate"])
    assert boxes.loc[duplicate, "issue"] == "duplicate" and boxes.loc[duplicate, "issue_score"] > 0.8
    for index, position in planted["wrong"]:
        wrong = boxes.loc[box_id(dataset, index, position)]
        assert wrong["issue"] == "mislabel" and wrong["suggested_label"] != wrong["label"]
        assert wrong["issue_score"] == pytest.approx(wrong["mislabel_score"])
    missing = table[table["object_id"].isna()]
    assert len(missing) >= 1 and missing["missing_id"].notna().all() and set(missing["issue"]) == {"missing"}
    sample = dataset.skip(planted["missing"][0]).first()
    assert missing["missing_id"].iloc[0] == sample["ground_truth_missing"].detections[0].id
    # areas: each box is 56 x 56 px of a 200 x 80 image
    assert boxes["area_px"].median() == pytest.approx(56 * 56, rel=1e-6)
    assert boxes["area"].median() == pytest.approx(56 * 56 / (200 * 80), rel=1e-6)
    assert (table["issue_score"].between(0, 1)).all()
    assert table.loc[table["issue"].isna(), "issue_score"].eq(0).all()


def test_review_table_carries_decisions_tags_and_accepted_missing_boxes(analysed_objects):
    from curation.object_decisions import accept_missing, remove_objects, undo_objects
    from curation.object_images import object_review_table, tag_objects, untag_objects

    source, planted = analysed_objects
    dataset = source.clone()
    try:
        duplicate = box_id(dataset, *planted["duplicate"])
        remove_objects(dataset, "ground_truth", [duplicate], reason="twice")
        missing_id = dataset.skip(planted["missing"][0]).first()["ground_truth_missing"].detections[0].id
        added = accept_missing(dataset, "ground_truth", [missing_id])
        assert tag_objects(dataset, "ground_truth", [duplicate, box_id(dataset, 0, 0)], " check ") == 2
        table = object_review_table(dataset, "ground_truth")
        boxes = table[table["object_id"].notna()].set_index("object_id")
        assert boxes.loc[duplicate, "decision"] == "remove" and boxes.loc[duplicate, "tags"] == ["check"]
        row = table[table["missing_id"] == missing_id].iloc[0]
        assert row["decision"] == "added" and row["added_id"] == added[0]
        assert boxes.loc[added[0], "decision"] == "added"
        assert dataset.count_label_tags() == {"check": 2}
        assert untag_objects(dataset, "ground_truth", [duplicate], "check") == 1
        assert dataset.count_label_tags() == {"check": 1}
        undo_objects(dataset, "ground_truth", [added[0]])
        table = object_review_table(dataset, "ground_truth")
        row = table[table["missing_id"] == missing_id].iloc[0]
        assert row["decision"] is None and row["added_id"] is None
        with pytest.raises(CurationInputError, match="tag: expected a non-empty string"):
            tag_objects(dataset, "ground_truth", [duplicate], "  ")
    finally:
        dataset.delete()


def test_object_map_places_every_embedded_box_and_groups_classes(analysed_objects):
    from curation.object_images import object_map

    dataset, planted = analysed_objects
    frame = object_map(dataset, "ground_truth")
    assert len(frame) == 24 * 3  # the duplicate is embedded too; the missing box has no embedding
    assert frame[["x", "y"]].notna().all().all()
    for column in ("label", "area", "area_px", "issue", "issue_score", "mislabel_score"):
        assert column in frame.columns
    # The map keeps classes apart: most boxes' nearest neighbour on the map has their class.
    coords = frame[["x", "y"]].to_numpy()
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argmin(axis=1)
    agree = (frame["label"].to_numpy() == frame["label"].to_numpy()[nearest]).mean()
    assert agree > 0.8
    again = object_map(dataset, "ground_truth")
    assert np.array_equal(again[["x", "y"]].to_numpy(), coords)  # read back from the disk cache


def test_object_map_without_embeddings_says_how_to_make_them(tmp_path, fresh_name):
    from curation.embeddings import NoEmbeddingRecordError
    from curation.object_images import object_map

    dataset, _ = build_object_dataset(fresh_name, tmp_path / "images", images=3)
    with pytest.raises(NoEmbeddingRecordError, match="--patches ground_truth"):
        object_map(dataset, "ground_truth")


def test_detections_fields_leave_out_the_missing_fields(analysed_objects):
    from curation.object_images import detections_fields

    dataset, _ = analysed_objects
    assert detections_fields(dataset) == ["ground_truth", "predictions"]


def test_object_scatter_colours(analysed_objects):
    from curation.object_images import object_map
    from curation.object_plots import COLOR_OPTIONS, object_colors, object_scatter

    dataset, _ = analysed_objects
    frame = object_map(dataset, "ground_truth")
    for option in COLOR_OPTIONS:
        figure = object_scatter(frame, option)
        ids = [point for trace in figure.data for point in trace.customdata]
        assert sorted(ids) == sorted(frame["object_id"])
    assert set(object_colors(frame, "class")) == set(CLASSES)
    assert set(object_colors(frame, "issue")) >= {"(no issue)", "duplicate", "mislabel"}
    assert object_colors(frame, "box area (pixels, log10)").median() == pytest.approx(np.log10(56 * 56))
    with pytest.raises(ValueError, match="unknown colour 'size'. Available: class, issue"):
        object_colors(frame, "size")
    assert len(object_scatter(frame.iloc[:0], "class").data) == 0


def test_object_queue_ranks_flagged_boxes_and_filters(analysed_objects):
    from curation.object_images import object_queue, object_review_table

    dataset, planted = analysed_objects
    table = object_review_table(dataset, "ground_truth")
    queue = object_queue(table)
    assert len(queue) == int(table["issue"].notna().sum()) == 4  # two wrong classes, one duplicate, one missing
    assert list(queue["issue_score"]) == sorted(queue["issue_score"], reverse=True)
    assert list(object_queue(table, issues=["duplicate"])["object_id"]) == [box_id(dataset, *planted["duplicate"])]
    wrong = box_id(dataset, *planted["wrong"][0])
    assert list(object_queue(table, object_ids=[wrong, box_id(dataset, 0, 0)])["object_id"]) == [wrong]
    suggested = table.set_index("object_id").loc[wrong, "suggested_label"]
    assert wrong in set(object_queue(table, classes=[suggested])["object_id"])  # by the suggested class too
    assert object_queue(table, min_score=1.01).empty
    decided = table.assign(decision=table["decision"].where(table["object_id"] != wrong, "relabel"))
    assert wrong not in set(object_queue(decided)["object_id"])
    assert wrong in set(object_queue(decided, include_decided=True)["object_id"])


def test_annotation_reason_names_the_boxes_and_why(analysed_objects):
    from curation.object_images import annotation_reason, object_review_table

    dataset, planted = analysed_objects
    table = object_review_table(dataset, "ground_truth")
    duplicate = box_id(dataset, *planted["duplicate"])
    rows = table[table["object_id"] == duplicate]
    reason = annotation_reason("ground_truth", rows)
    original = box_id(dataset, planted["duplicate"][0], 0)
    assert reason == f"fix boxes of ground_truth: {rows['label'].iloc[0]} box {duplicate} (duplicate of {original})"
    missing = table[table["issue"] == "missing"]
    assert "missing: predicted at [" in annotation_reason("ground_truth", missing)
    assert "model confidence 0.90" in annotation_reason("ground_truth", missing)
    hostile = rows.assign(label="a\nb\x00" + "z" * 100)
    assert "\n" not in annotation_reason("ground_truth", hostile) and "\x00" not in annotation_reason("ground_truth", hostile)
