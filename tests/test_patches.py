"""curation.patches: object embeddings are stored per detection, incremental, and never
stopped by a bad box or a bad image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.cli import main
from curation.datasets import curation_info
from curation.embeddings import NoEmbeddingRecordError
from curation.errors import CurationInputError, MissingFieldError
from curation.images import load_rgb
from curation.patches import (
    PAD_COLOUR,
    _decode_max_side,
    box_problem,
    compute_patch_embeddings,
    crop_patch,
    load_patch_embeddings,
    patch_embedding_failures,
    patch_region,
    square_patch,
)

DEMO = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"
CANVAS = (96, 64)  # width, height
BACKGROUND = (70, 70, 70)
SMALL = 32  # model input for the tests that check bookkeeping, not quality: fast on 2 cores


@pytest.fixture(scope="module")
def fo():
    import fiftyone

    return fiftyone


def _demo(class_name: str, index: int) -> Path:
    return sorted((DEMO / class_name).glob("*.png"))[index]


def _canvas(path: Path, items: list[tuple[str, int, tuple[int, int]]]) -> list[tuple[str, list[float]]]:
    """Paste demo images (class, index, (left, top)) onto a grey canvas saved at ``path``;
    returns (class, relative box) for each, the box exactly the pasted 28 x 28 square."""
    canvas = Image.new("RGB", CANVAS, BACKGROUND)
    boxes = []
    for class_name, index, (left, top) in items:
        canvas.paste(Image.open(_demo(class_name, index)).convert("RGB"), (left, top))
        boxes.append((class_name, [left / CANVAS[0], top / CANVAS[1], 28 / CANVAS[0], 28 / CANVAS[1]]))
    canvas.save(path)
    return boxes


LAYOUTS = [
    [("bag", 0, (2, 3)), ("sneaker", 0, (60, 30))],
    [("trouser", 0, (30, 10)), ("bag", 1, (68, 36))],  # the bag touches the right and bottom borders
    [("sneaker", 1, (0, 0)), ("trouser", 1, (40, 20)), ("bag", 2, (66, 2))],
    [("trouser", 2, (5, 33)), ("sneaker", 2, (50, 5))],
]


def _detection_dataset(fo, name: str, folder: Path, layouts=LAYOUTS):
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, layout in enumerate(layouts):
        path = folder / f"canvas-{index}.png"
        objects = _canvas(path, layout)
        samples.append(fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=[
            fo.Detection(label=label, bounding_box=box) for label, box in objects])))
    dataset = fo.Dataset(name)
    dataset.add_samples(samples)
    return dataset


def _vectors(dataset) -> dict[str, np.ndarray]:
    ids, vectors = dataset.values(["ground_truth.detections.id", "ground_truth.detections.embedding"], unwind=True)
    return {detection_id: vector for detection_id, vector in zip(ids, vectors) if vector is not None}


# ---- crops ---------------------------------------------------------------------------------


def test_patch_region_adds_context_and_clips_at_the_border():
    # A 20 x 10 box at (10, 20) in a 100 x 50 image; 0.1 context: 2 px left/right, 1 px up/down.
    assert patch_region([0.1, 0.4, 0.2, 0.2], 100, 50, 0.1) == (8, 19, 32, 31)
    assert patch_region([0.1, 0.4, 0.2, 0.2], 100, 50, 0.0) == (10, 20, 30, 30)
    # Touching the bottom-right corner: the margin stops at the image's edge.
    assert patch_region([0.8, 0.8, 0.2, 0.2], 100, 50, 0.25) == (75, 37, 100, 50)
    # Partly outside: only the visible part counts, and its margin is clipped too.
    assert patch_region([-0.1, -0.2, 0.3, 0.4], 100, 50, 0.5) == (0, 0, 30, 15)
    assert patch_region([1.2, 0.1, 0.1, 0.1], 100, 50, 0.1) is None


def test_crop_is_the_pixels_of_the_box_and_its_context():
    pixels = np.random.default_rng(0).integers(0, 256, size=(50, 100, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    crop = crop_patch(image, [0.1, 0.4, 0.2, 0.2], context=0.1)
    assert np.array_equal(np.asarray(crop), pixels[19:31, 8:32])
    corner = crop_patch(image, [0.8, 0.8, 0.2, 0.2], context=0.25)
    assert np.array_equal(np.asarray(corner), pixels[37:50, 75:100])
    with pytest.raises(CurationInputError, match="no part inside the 100 x 50 image"):
        crop_patch(image, [1.5, 0.0, 0.1, 0.1])


def test_square_patch_centres_the_crop_on_the_mean_colour():
    crop = Image.fromarray(np.full((30, 10, 3), 200, dtype=np.uint8))
    square = np.asarray(square_patch(crop))
    assert square.shape == (30, 30, 3)
    assert (square[:, 10:20] == 200).all()
    assert (square[:, :10] == PAD_COLOUR).all() and (square[:, 20:] == PAD_COLOUR).all()
    already = Image.new("RGB", (7, 7))
    assert square_patch(already) is already


def test_large_images_are_decoded_only_as_small_as_their_smallest_crop_allows(tmp_path):
    # 2000 x 1200: the smallest crop is 400 px long, so a 160 px input allows shrinking by 2.
    regions = [(0, 0, 400, 300), (100, 100, 1100, 900)]
    assert _decode_max_side((2000, 1200), regions, 160) == 600
    assert _decode_max_side((2000, 1200), regions, 224) is None  # 400 // 224 = 1: full size
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 1200), (10, 20, 30)).save(path)
    decoded = load_rgb(path, max_side=600)
    box = [0.0, 0.0, 400 / 2000, 300 / 1200]
    assert max(crop_patch(decoded, box, 0.0).size) >= 160


@pytest.mark.parametrize("box, reason", [
    (None, "no bounding box"),
    ([0.1, 0.1, 0.2], "has 3 values, expected 4"),
    ([0.1, float("nan"), 0.2, 0.2], "not a finite number"),
    ([0.1, 0.1, 0.0, 0.2], "zero or negative size"),
    ([0.1, 0.1, 0.3, -0.2], "zero or negative size"),
    ([1.0, 0.1, 0.3, 0.2], "outside the image"),
    ([-0.5, 0.1, 0.4, 0.2], "outside the image"),
    (["a", 1, 2, 3], "not four numbers"),
])
def test_box_problems_say_what_is_wrong(box, reason):
    assert reason in box_problem(box)


def test_good_boxes_have_no_problem():
    assert box_problem([0.0, 0.0, 1.0, 1.0]) is None
    assert box_problem([-0.1, 0.9, 0.5, 0.5]) is None  # partly outside: the visible part is used


# ---- runs ----------------------------------------------------------------------------------


def test_embeddings_are_stored_per_detection_and_seen_by_patch_views(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _detection_dataset(fo, fresh_name, tmp_path)
    seen = []
    run = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=SMALL,
                                   num_workers=0, batch_size=4, progress=lambda done, total: seen.append((done, total)))
    assert (run.embedded, run.already_done, run.failed, run.skipped, run.failures) == (9, 0, 0, [], [])
    assert (run.model, run.image_size, run.dimension, run.context) == ("efficientnet-lite0-imagenet", SMALL, 1280, 0.1)
    assert seen[-1] == (9, 9)

    patches = dataset.to_patches("ground_truth")
    vectors = patches.values("ground_truth.embedding")
    assert len(vectors) == 9 and all(v.shape == (1280,) and abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors)
    record = curation_info(dataset)["patch_embeddings"]["ground_truth"]
    assert record["model"] == "efficientnet-lite0-imagenet" and record["image_size"] == SMALL
    assert (record["embedded"], record["skipped"], record["failed"], record["complete"]) == (9, 0, 0, True)
    assert (record["objects"], record["objects_embedded"]) == (9, 9)

    sample_ids, detection_ids, labels, boxes, matrix = load_patch_embeddings(dataset, "ground_truth")
    assert matrix.shape == (9, 1280) and matrix.dtype == np.float32 and boxes.shape == (9, 4)
    expected_ids = dataset.values("ground_truth.detections.id", unwind=True)
    assert detection_ids == expected_ids  # sample order, then detection order
    assert labels[:2] == ["bag", "sneaker"] and sample_ids[0] == sample_ids[1] != sample_ids[2]
    by_id = _vectors(dataset)
    assert all(np.array_equal(matrix[row], by_id[detection_id]) for row, detection_id in enumerate(detection_ids))
    assert load_patch_embeddings(dataset, "ground_truth")[1] == detection_ids

    # Each vector is the model's embedding of the padded crop, here the bag at the borders.
    sample = dataset.skip(1).first()
    bag = sample.ground_truth.detections[1]
    crop = crop_patch(load_rgb(sample.filepath), bag.bounding_box, 0.1)
    # 2.8 px of context, rounded out to 3, on the left and top only: (65, 33) to the corner (96, 64).
    assert patch_region(bag.bounding_box, *CANVAS, 0.1) == (65, 33, 96, 64) and crop.size == (31, 31)
    small = offline_embedder.with_input(image_size=SMALL)
    expected = small.encode_images(small.preprocess(square_patch(crop))[None])[0]
    assert np.allclose(by_id[bag.id], expected, atol=1e-5)


def test_reruns_embed_only_new_moved_or_touched_objects(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _detection_dataset(fo, fresh_name, tmp_path)
    compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=SMALL, num_workers=0)
    before = _vectors(dataset)
    again = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (again.embedded, again.already_done, again.image_size) == (0, 9, SMALL)
    assert again.input_reason == "the field's earlier run"

    # Move one box onto the other object of its image: only it is re-embedded, and its vector changes.
    sample = dataset.first()
    moved = sample.ground_truth.detections[0]
    moved.bounding_box = list(sample.ground_truth.detections[1].bounding_box)
    sample.save()
    edited = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (edited.embedded, edited.already_done) == (1, 8)
    after = _vectors(dataset)
    assert not np.allclose(after[moved.id], before[moved.id])
    assert all(np.array_equal(after[key], before[key]) for key in before if key != moved.id)
    # The moved box now shows the sneaker, as its neighbour does: the same crop, the same vector.
    assert np.allclose(after[moved.id], after[sample.ground_truth.detections[1].id], atol=1e-5)

    # A new box, and an image file written again (its modification time changes).
    sample = dataset.skip(3).first()
    sample.ground_truth.detections.append(fo.Detection(label="trouser", bounding_box=[0.0, 0.0, 0.5, 0.5]))
    sample.save()
    touched = dataset.skip(2).first().filepath
    os.utime(touched, ns=(os.stat(touched).st_atime_ns, os.stat(touched).st_mtime_ns + 10**9))
    later = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (later.embedded, later.already_done) == (1 + 3, 9 - 3)

    # Another context changes every crop: every detection is embedded again.
    wider = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, context=0.3, num_workers=0)
    assert (wider.embedded, wider.already_done) == (10, 0)
    assert curation_info(dataset)["patch_embeddings"]["ground_truth"]["context"] == 0.3
    assert load_patch_embeddings(dataset, "ground_truth")[4].shape == (10, 1280)


def test_an_interrupted_run_keeps_its_work_and_the_next_one_resumes(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _detection_dataset(fo, fresh_name, tmp_path)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=SMALL, num_workers=0,
                                 batch_size=4, progress=interrupt)
    assert len(_vectors(dataset)) == 4  # the first batch: the first two images
    assert curation_info(dataset)["patch_embeddings"]["ground_truth"]["complete"] is False
    resumed = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (resumed.embedded, resumed.already_done, resumed.image_size) == (5, 4, SMALL)


def test_a_view_embeds_only_the_objects_it_shows(fo, tmp_path, fresh_name, offline_embedder):
    from fiftyone import ViewField as F

    dataset = _detection_dataset(fo, fresh_name, tmp_path)
    bags = dataset.filter_labels("ground_truth", F("label") == "bag")
    run = compute_patch_embeddings(bags, "ground_truth", embedder=offline_embedder, image_size=SMALL, num_workers=0)
    assert run.embedded == 3 and load_patch_embeddings(bags, "ground_truth")[2] == ["bag"] * 3
    assert load_patch_embeddings(dataset, "ground_truth")[2] == ["bag"] * 3
    rest = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (rest.embedded, rest.already_done) == (6, 3)


def test_degenerate_boxes_are_skipped_with_reasons_and_the_rest_is_embedded(fo, tmp_path, fresh_name,
                                                                            offline_embedder):
    dataset = _detection_dataset(fo, fresh_name, tmp_path, LAYOUTS[:1])
    sample = dataset.first()
    bad = {
        "zero": [0.1, 0.1, 0.0, 0.3],
        "negative": [0.5, 0.5, -0.1, 0.2],
        "outside": [1.1, 0.2, 0.2, 0.2],
        "nan": [0.2, float("nan"), 0.2, 0.2],
        "one-pixel": [0.5, 0.5, 1 / CANVAS[0], 0.3],
    }
    for name, box in bad.items():
        sample.ground_truth.detections.append(fo.Detection(label=name, bounding_box=box))
    sample.save()
    ids = {detection.label: detection.id for detection in dataset.first().ground_truth.detections}

    run = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=SMALL, num_workers=0)
    assert (run.embedded, run.failed, len(run.skipped)) == (2, 0, 5)
    reasons = {detection_id: reason for _, detection_id, reason in run.skipped}
    assert "zero or negative size" in reasons[ids["zero"]] and "zero or negative size" in reasons[ids["negative"]]
    assert "outside the image" in reasons[ids["outside"]] and "not a finite number" in reasons[ids["nan"]]
    assert reasons[ids["one-pixel"]] == "box is 1.0 x 19.2 px in the 96 x 64 image, under min_side=2"
    stored = {detection_id: reason for _, detection_id, reason in patch_embedding_failures(dataset, "ground_truth")}
    assert stored == reasons
    record = curation_info(dataset)["patch_embeddings"]["ground_truth"]
    assert record["skipped"] == 5 and len(record["skipped_boxes"]) == 5
    assert load_patch_embeddings(dataset, "ground_truth")[2] == ["bag", "sneaker"]

    rerun = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (rerun.embedded, rerun.already_done, rerun.skipped) == (0, 7, [])
    assert (rerun.objects, rerun.objects_embedded) == (7, 2)
    # A lower min_side retries only the box it was too small for.
    lower = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0, min_side=1)
    assert (lower.embedded, lower.already_done, lower.skipped) == (1, 6, [])
    assert "one-pixel" in load_patch_embeddings(dataset, "ground_truth")[2]


def test_unreadable_images_are_counted_and_listed_and_the_rest_completes(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _detection_dataset(fo, fresh_name, tmp_path, LAYOUTS[:2])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    missing = tmp_path / "deleted.png"
    box = [0.1, 0.1, 0.3, 0.3]
    dataset.add_samples([
        fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=[
            fo.Detection(label="x", bounding_box=box), fo.Detection(label="y", bounding_box=box)]))
        for path in (corrupt, missing)])
    dataset.add_sample(fo.Sample(filepath=str(tmp_path / "no-objects.png")))  # no field value: nothing to do

    run = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=SMALL, num_workers=0)
    assert (run.embedded, run.failed) == (4, 4)
    failures = dict(run.failures)
    assert set(failures) == {str(corrupt), str(missing)}
    assert failures[str(missing)] == "file not found"
    assert failures[str(corrupt)].startswith(("truncated or corrupt", "cannot decode", "not an image"))
    record = curation_info(dataset)["patch_embeddings"]["ground_truth"]
    assert record["failed"] == 4 and sorted(path for path, _ in record["failures"]) == sorted(failures)

    again = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (again.embedded, again.failed, again.already_done) == (0, 0, 8)
    # The missing file appears: its objects are embedded on the next run.
    _canvas(missing, LAYOUTS[0])
    healed = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert (healed.embedded, healed.failed, healed.already_done) == (2, 0, 6)
    assert (healed.objects, healed.objects_embedded) == (8, 6)
    assert not any(str(missing) == path for path, _, _ in patch_embedding_failures(dataset, "ground_truth"))


def test_wrong_fields_and_settings_are_refused_with_what_was_expected(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _detection_dataset(fo, fresh_name, tmp_path, LAYOUTS[:1])
    sample = dataset.first()
    sample["kind"] = fo.Classification(label="bag")
    sample["note"] = "text"
    sample.save()
    with pytest.raises(MissingFieldError, match=r"has no field 'boxes'; its Detections fields: ground_truth"):
        compute_patch_embeddings(dataset, "boxes", embedder=offline_embedder)
    with pytest.raises(CurationInputError, match=r"field 'kind' .* is a Classification field, not Detections"):
        compute_patch_embeddings(dataset, "kind", embedder=offline_embedder)
    with pytest.raises(CurationInputError, match=r"field 'note' .* is a StringField field, not Detections"):
        compute_patch_embeddings(dataset, "note", embedder=offline_embedder)
    for context in (float("nan"), -0.1, 1.5, "wide", True):
        with pytest.raises(CurationInputError, match=r"context: expected a fraction of the box in \[0, 1\]"):
            compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, context=context)
    for min_side in (0, 1.5, None):
        with pytest.raises(CurationInputError, match=r"min_side: expected a whole number of pixels >= 1"):
            compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, min_side=min_side)
    with pytest.raises(CurationInputError, match=r"image_size: expected a whole number of pixels in 16\.\.1024"):
        compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=8, num_workers=0)
    with pytest.raises(NoEmbeddingRecordError, match=f"curation embed --dataset {fresh_name} --patches ground_truth"):
        load_patch_embeddings(dataset, "ground_truth")
    with pytest.raises(MissingFieldError, match="has no field 'boxes'"):
        load_patch_embeddings(dataset, "boxes")


def test_an_attribute_of_another_type_is_not_overwritten(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _detection_dataset(fo, fresh_name, tmp_path, LAYOUTS[:1])
    sample = dataset.first()
    sample.ground_truth.detections[0]["embedding"] = "from another tool"
    sample.save()
    dataset.add_dynamic_sample_fields()
    with pytest.raises(CurationInputError, match=r"ground_truth.detections.embedding already holds StringField"):
        compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=SMALL, num_workers=0)
    assert dataset.first().ground_truth.detections[0]["embedding"] == "from another tool"


def test_objects_of_a_class_are_nearest_to_each_other(fo, tmp_path, fresh_name, offline_embedder):
    """Quality floor at the automatic input size (28 px objects -> 160 px): the nearest other
    crop of each object shows the same kind of thing."""
    dataset = _detection_dataset(fo, fresh_name, tmp_path)
    run = compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, num_workers=0)
    assert run.image_size == 160 and run.input_reason.startswith("auto: median longer side of the crops 34 px")
    _, _, labels, _, matrix = load_patch_embeddings(dataset, "ground_truth")
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    hits = sum(labels[row] == labels[column] for row, column in enumerate(nearest))
    assert hits >= 8, (hits, labels)


def test_fiftyone_brain_reads_the_object_embeddings(fo, tmp_path, fresh_name, offline_embedder):
    import fiftyone.brain as fob

    dataset = _detection_dataset(fo, fresh_name, tmp_path, LAYOUTS[:2])
    compute_patch_embeddings(dataset, "ground_truth", embedder=offline_embedder, image_size=SMALL, num_workers=0)
    index = fob.compute_similarity(dataset, patches_field="ground_truth", embeddings="embedding",
                                   backend="sklearn", brain_key="objects")
    assert index.total_index_size == 4
    patches = dataset.to_patches("ground_truth")
    nearest = patches.sort_by_similarity(patches.first().id, k=2, brain_key="objects")
    assert nearest.first().id == patches.first().id


def test_default_model_is_the_fields_earlier_one_else_the_images(fo, tmp_path, fresh_name, offline_embedder,
                                                                   tiny_clip, monkeypatch):
    from curation import embeddings
    from curation.embeddings import compute_embeddings

    loaded = []

    def load_embedder(spec, *, device, allow_fallback):  # the real model, without loading it again
        loaded.append((spec.name, allow_fallback))
        return offline_embedder

    dataset = _detection_dataset(fo, fresh_name, tmp_path, LAYOUTS[:1])
    compute_embeddings(dataset, embedder=offline_embedder, image_size=SMALL, num_workers=0)
    monkeypatch.setattr(embeddings, "load_embedder", load_embedder)
    run = compute_patch_embeddings(dataset, "ground_truth", device="cpu", image_size=SMALL, num_workers=0)
    assert loaded == [("efficientnet-lite0-imagenet", True)]
    assert run.model == run.requested_model == "efficientnet-lite0-imagenet" and run.embedded == 2

    # Images embedded since with another model: the objects keep theirs (and no fallback).
    checkpoint, _ = tiny_clip
    monkeypatch.undo()
    compute_embeddings(dataset, model="tiny-clip-test", checkpoint=str(checkpoint), device="cpu", num_workers=0)
    monkeypatch.setattr(embeddings, "load_embedder", load_embedder)
    loaded.clear()
    again = compute_patch_embeddings(dataset, "ground_truth", device="cpu", num_workers=0)
    assert loaded == [("efficientnet-lite0-imagenet", False)] and (again.embedded, again.already_done) == (0, 2)


# ---- command line --------------------------------------------------------------------------


def test_cli_embeds_objects_incrementally_and_explains_problems(fo, tmp_path, fresh_name, capsys):
    dataset = _detection_dataset(fo, fresh_name, tmp_path, LAYOUTS[:2])
    sample = dataset.first()
    sample.ground_truth.detections.append(fo.Detection(label="flat", bounding_box=[0.1, 0.1, 0.0, 0.2]))
    sample.save()
    base = ["embed", "--dataset", fresh_name, "--patches", "ground_truth", "--model", "efficientnet-lite0-imagenet",
            "--image-size", "32"]
    assert main(base + ["--context", "0.2"]) == 0  # default workers: decoding in a DataLoader worker process
    captured = capsys.readouterr()
    assert "embedded 4 objects of 'ground_truth' with efficientnet-lite0-imagenet at 32 px, context 0.2, on cpu" \
        in captured.out and "(0 already done, 1 boxes skipped, 0 on unreadable images)" in captured.out
    assert "skipped: " in captured.err and "box has zero or negative size" in captured.err
    assert main(["embed", "--dataset", fresh_name, "--patches", "ground_truth", "--context", "0.2"]) == 0
    assert "embedded 0 objects" in capsys.readouterr().out  # default model and size: the field's earlier ones
    assert load_patch_embeddings(dataset, "ground_truth")[4].shape == (4, 1280)

    assert main(["embed", "--dataset", fresh_name, "--patches", "filepath"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a StringField field, not Detections" in err[0]
    assert main(["embed", "--dataset", fresh_name, "--context", "0.2"]) == 1
    assert "add --patches FIELD" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(base + ["--context", "2"])
    assert exited.value.code == 2 and "expected a number in [0, 1], got '2'" in capsys.readouterr().err


def test_nan_context_is_refused_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--dataset", "x", "--patches", "ground_truth", "--context", "nan"])
    assert "expected a number in [0, 1], got 'nan'" in capsys.readouterr().err
