"""curation.embeddings: runs are incremental, resumable, and never stopped by a bad file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import bad_images
from curation import embeddings, images
from curation.datasets import curation_info
from curation.embeddings import (
    NoEmbeddingRecordError,
    compute_embeddings,
    default_embedding_field,
    embedder_for_field,
    embedding_failures,
    load_embeddings,
)
from curation.importers import import_dataset
from curation.errors import CurationError
from curation.models import DEFAULT_MODEL, FALLBACK_MODEL, MODEL_REGISTRY, ModelUnavailableError

DEMO = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"
FIELD = MODEL_REGISTRY[FALLBACK_MODEL].field_name
ERROR_FIELD = f"{FIELD}_error"


@pytest.fixture(scope="module")
def fo():
    import fiftyone

    return fiftyone


def _demo_copies(folder: Path, count: int, offset: int = 0) -> list[Path]:
    """``count`` demo images (cycling through the classes) copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = sorted(p for p in DEMO.iterdir() if p.is_dir())
    copies = []
    for index in range(offset, offset + count):
        source = sorted(classes[index % len(classes)].glob("*.png"))[index // len(classes)]
        copies.append(Path(shutil.copy(source, folder / f"{index:03d}-{source.parent.name}.png")))
    return copies


def _dataset(fo, name: str, paths) -> "fo.Dataset":
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=str(path)) for path in paths])
    return dataset


def _vectors_by_id(dataset, field: str = FIELD) -> dict[str, np.ndarray]:
    return {sample_id: np.asarray(vector) for sample_id, vector in zip(*dataset.values(["id", field])) if vector is not None}


# ---- bad images never abort a run ----------------------------------------------------------


def test_mixed_folder_embeds_every_good_file_and_explains_every_bad_one(
    fo, tmp_path, fresh_name, offline_embedder, monkeypatch
):
    monkeypatch.setattr(images, "MAX_PIXELS", bad_images.TEST_MAX_PIXELS)
    cases = bad_images.write_all(tmp_path / "mixed")
    table = tmp_path / "list.csv"
    rows = [f"mixed/{case.path.name}" for case in cases] + ["mixed/was-deleted.jpg"]
    table.write_text("filepath\n" + "\n".join(rows) + "\n")
    report = import_dataset(table, fresh_name, csv_label_column="")
    assert any("was-deleted.jpg" in warning for warning in report.warnings)
    dataset = fo.load_dataset(fresh_name)
    assert len(dataset) == len(cases) + 1

    seen = []
    run = compute_embeddings(dataset, embedder=offline_embedder, batch_size=4, num_workers=0,
                             progress=lambda done, total: seen.append((done, total)))

    good = {case.path.name for case in cases if case.ok}
    expected_reasons = {case.path.name: case.reason_contains for case in cases if not case.ok}
    expected_reasons["was-deleted.jpg"] = "file not found"
    assert run.embedded == len(good) == 6
    assert seen[-1] == (len(dataset), len(dataset)) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    failures = {Path(path).name: reason for path, reason in run.failures}
    assert set(failures) == set(expected_reasons)
    for name, phrase in expected_reasons.items():
        assert phrase in failures[name], (name, failures[name])

    stored = {Path(path).name: (vector, error) for path, vector, error in zip(*dataset.values(["filepath", FIELD, ERROR_FIELD]))}
    for name, (vector, error) in stored.items():
        if name in good:
            assert vector is not None and error is None, name
            assert np.asarray(vector).shape == (1280,)
        else:
            assert vector is None and error == failures[name], name
    assert sorted(embedding_failures(dataset, FIELD)) == sorted(run.failures)


def test_decode_workers_report_failures_too(fo, tmp_path, fresh_name, offline_embedder):
    paths = _demo_copies(tmp_path, 3) + [bad_images.write_zero_bytes(tmp_path / "empty.png")]
    dataset = _dataset(fo, fresh_name, paths)
    run = compute_embeddings(dataset, embedder=offline_embedder, batch_size=2, num_workers=1)
    assert run.embedded == 3 and [Path(p).name for p, _ in run.failures] == ["empty.png"]
    assert dataset.count(FIELD) == 3


def test_a_preprocess_failure_on_one_file_does_not_end_the_run(fo, tmp_path, fresh_name, offline_embedder, monkeypatch):
    paths = _demo_copies(tmp_path, 3)
    dataset = _dataset(fo, fresh_name, paths)
    real = offline_embedder.preprocess
    calls = {"count": 0}

    def fails_once(image):
        calls["count"] += 1
        if calls["count"] == 2:
            raise ValueError("odd colour profile")
        return real(image)

    monkeypatch.setattr(offline_embedder, "preprocess", fails_once)
    # At the embedder's own size it is used as it is (another size would rebuild the preprocess).
    run = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0, image_size=offline_embedder.image_size)
    assert run.embedded == 2
    assert len(run.failures) == 1 and "cannot preprocess image: ValueError: odd colour profile" in run.failures[0][1]


# ---- incremental runs ----------------------------------------------------------------------


def test_rerun_on_an_embedded_dataset_embeds_nothing(embedded_dataset, offline_embedder):
    run = compute_embeddings(embedded_dataset, model=FALLBACK_MODEL, embedder=offline_embedder, num_workers=0)
    assert run.embedded == 0 and run.failures == []
    assert run.already_done == len(embedded_dataset) == 60


def test_new_samples_are_the_only_ones_embedded(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 4))
    first = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert (first.embedded, first.already_done) == (4, 0)
    before = _vectors_by_id(dataset)

    dataset.add_samples([fo.Sample(filepath=str(path)) for path in _demo_copies(tmp_path, 2, offset=4)])
    second = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert (second.embedded, second.already_done) == (2, 4)
    after = _vectors_by_id(dataset)
    assert len(after) == 6
    for sample_id, vector in before.items():
        np.testing.assert_array_equal(after[sample_id], vector)


def test_a_view_embeds_only_its_own_samples(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 5))
    view = dataset.limit(2)
    run = compute_embeddings(view, embedder=offline_embedder, num_workers=0)
    assert run.embedded == 2 and dataset.count(FIELD) == 2
    assert set(_vectors_by_id(dataset)) == set(view.values("id"))
    assert compute_embeddings(view, embedder=offline_embedder, num_workers=0).already_done == 2


def test_an_empty_dataset_is_a_no_op(fo, fresh_name, offline_embedder):
    run = compute_embeddings(fo.Dataset(fresh_name), embedder=offline_embedder, num_workers=0)
    assert (run.embedded, run.already_done, run.failures) == (0, 0, [])


class _Crash(RuntimeError):
    pass


def _crash_on_call(monkeypatch, call_number: int) -> None:
    real = embeddings._encode_adaptive
    calls = {"count": 0}

    def encode(embedder, batch):
        calls["count"] += 1
        if calls["count"] == call_number:
            raise _Crash("simulated interruption")
        return real(embedder, batch)

    monkeypatch.setattr(embeddings, "_encode_adaptive", encode)


def test_an_interrupted_run_resumes_with_only_the_remainder(fo, tmp_path, fresh_name, offline_embedder, monkeypatch):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 10))
    monkeypatch.setattr(embeddings, "WRITE_EVERY", 4)
    with monkeypatch.context() as patch:
        _crash_on_call(patch, call_number=3)  # batches of 2: the first chunk of 4 is written, then it stops
        with pytest.raises(_Crash):
            compute_embeddings(dataset, embedder=offline_embedder, batch_size=2, num_workers=0)
    saved = _vectors_by_id(dataset)
    assert len(saved) >= 4, "the first written chunk survives the interruption"

    resumed = compute_embeddings(dataset, embedder=offline_embedder, batch_size=2, num_workers=0)
    assert resumed.already_done == len(saved)
    assert resumed.embedded == 10 - len(saved)
    final = _vectors_by_id(dataset)
    assert len(final) == 10
    for sample_id, vector in saved.items():
        np.testing.assert_array_equal(final[sample_id], vector)


def test_an_interruption_keeps_the_batches_computed_since_the_last_write(fo, tmp_path, fresh_name, offline_embedder, monkeypatch):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 6))
    monkeypatch.setattr(embeddings, "WRITE_EVERY", 1000)  # no chunk would be written before the end
    _crash_on_call(monkeypatch, call_number=3)
    with pytest.raises(_Crash):
        compute_embeddings(dataset, embedder=offline_embedder, batch_size=2, num_workers=0)
    assert dataset.count(FIELD) == 4


# ---- failures are remembered ---------------------------------------------------------------


def test_failures_are_recorded_and_only_retried_when_asked(fo, tmp_path, fresh_name, offline_embedder):
    good = _demo_copies(tmp_path, 2)
    broken = bad_images.write_truncated(tmp_path / "broken.jpg")
    dataset = _dataset(fo, fresh_name, good + [broken])

    first = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert first.embedded == 2 and [Path(p).name for p, _ in first.failures] == ["broken.jpg"]
    good_vectors = _vectors_by_id(dataset)

    again = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert (again.embedded, again.failures, again.already_done) == (0, [], 3), "a known failure is not retried"

    still_broken = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0, retry_failed=True)
    assert still_broken.embedded == 0 and len(still_broken.failures) == 1 and still_broken.already_done == 2

    bad_images.write_rgb_jpeg(broken)  # the user repairs the file
    assert compute_embeddings(dataset, embedder=offline_embedder, num_workers=0).embedded == 0
    repaired = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0, retry_failed=True)
    assert repaired.embedded == 1 and repaired.failures == []
    assert embedding_failures(dataset, FIELD) == [], "a sample that now embeds loses its old failure"
    final = _vectors_by_id(dataset)
    assert len(final) == 3
    for sample_id, vector in good_vectors.items():
        np.testing.assert_array_equal(final[sample_id], vector)


def test_embedding_failures_is_empty_without_an_error_field(embedded_dataset):
    assert embedding_failures(embedded_dataset, FIELD) == []


# ---- reading embeddings --------------------------------------------------------------------


def test_load_embeddings_aligns_ids_with_vectors(embedded_dataset):
    ids, vectors = load_embeddings(embedded_dataset, FIELD)
    assert vectors.dtype == np.float32 and vectors.shape == (60, 1280)
    assert vectors.flags["C_CONTIGUOUS"]
    by_id = _vectors_by_id(embedded_dataset)
    assert sorted(ids) == sorted(by_id)
    for sample_id, vector in zip(ids, vectors):
        np.testing.assert_array_equal(vector, by_id[sample_id].astype(np.float32))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_offline_embeddings_separate_the_demo_classes(embedded_dataset):
    """Quality floor on real data: leave-one-out 1-NN over 10 classes x 6 images (chance: 0.1)."""
    ids, vectors = load_embeddings(embedded_dataset, FIELD)
    label_by_id = dict(zip(*embedded_dataset.values(["id", "ground_truth.label"])))
    labels = np.array([label_by_id[sample_id] for sample_id in ids])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    accuracy = float(np.mean(labels[similarity.argmax(axis=1)] == labels))
    assert accuracy >= 0.4, accuracy


def test_load_embeddings_skips_samples_without_a_vector(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 2) + [bad_images.write_zero_bytes(tmp_path / "e.png")])
    compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    ids, vectors = load_embeddings(dataset, FIELD)
    assert len(ids) == 2 and vectors.shape == (2, 1280)
    ids, vectors = load_embeddings(dataset.match({"filepath": {"$regex": "e\\.png$"}}), FIELD)
    assert ids == [] and vectors.shape[0] == 0


def test_load_embeddings_of_a_missing_field_says_what_to_run(embedded_dataset):
    with pytest.raises(KeyError, match="no embedding field 'embeddings_nope'.*curation embed"):
        load_embeddings(embedded_dataset, "embeddings_nope")


@pytest.mark.slow
def test_load_embeddings_reads_10k_512d_vectors_exactly(fo, fresh_name):
    """The size the app reads on every page (speed is measured in benchmarks/, not here)."""
    dataset = fo.Dataset(fresh_name)
    dataset.add_samples([fo.Sample(filepath=f"/data/{index}.png") for index in range(10_000)])
    written = np.random.default_rng(0).standard_normal((10_000, 512)).astype(np.float32)
    ids = dataset.values("id")
    dataset.set_values("embeddings_bench", dict(zip(ids, written)), key_field="id")
    read_ids, read = load_embeddings(dataset, "embeddings_bench")
    assert read.shape == (10_000, 512) and read.dtype == np.float32
    order = {sample_id: row for row, sample_id in enumerate(ids)}
    np.testing.assert_array_equal(read, written[[order[sample_id] for sample_id in read_ids]])


# ---- bookkeeping ---------------------------------------------------------------------------


def test_a_run_records_the_model_and_the_fallback_reason(fo, tmp_path, fresh_name, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 2))
    run = compute_embeddings(dataset, model=DEFAULT_MODEL, device="cpu", num_workers=0)
    assert (run.model, run.requested_model, run.field) == (FALLBACK_MODEL, DEFAULT_MODEL, FIELD)
    assert "HF_HUB_OFFLINE" in run.fallback_reason and run.embedded == 2
    info = curation_info(dataset)
    record = info["embeddings"][FIELD]
    assert record["model"] == FALLBACK_MODEL and record["requested_model"] == DEFAULT_MODEL
    assert record["fallback_reason"] == run.fallback_reason and record["device"] == "cpu"
    assert record["model_spec"] == MODEL_REGISTRY[FALLBACK_MODEL].to_dict()
    assert info["default_embeddings"] == FIELD
    assert (record["image_size"], record["crop"], record["flip_tta"]) == (160, 1.0, False), "the fallback got the auto size"

    loaded = embedder_for_field(dataset, FIELD, device="cpu")
    assert loaded.spec == MODEL_REGISTRY[FALLBACK_MODEL], "the model actually used, not the one asked for"
    assert loaded.input_config() == {"image_size": 160, "crop": 1.0, "flip_tta": False}


def test_a_ready_embedder_is_recorded_as_the_model_asked_for(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 1))
    run = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert run.requested_model == FALLBACK_MODEL and run.fallback_reason is None
    assert curation_info(dataset)["embeddings"][FIELD]["requested_model"] == FALLBACK_MODEL


def test_an_embedder_for_another_model_is_rejected(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 1))
    with pytest.raises(ValueError, match=rf"expected a loaded '{DEFAULT_MODEL}'.*got '{FALLBACK_MODEL}'"):
        compute_embeddings(dataset, model=DEFAULT_MODEL, embedder=offline_embedder, num_workers=0)


def test_default_embedding_field_follows_the_runs(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 1))
    assert default_embedding_field(dataset) is None
    compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert default_embedding_field(dataset) == FIELD

    dataset.set_values("embeddings_other", [np.ones(3, dtype=np.float32)])
    info = curation_info(dataset)
    info["embeddings"] = {"embeddings_other": {"model": "other"}, **info["embeddings"]}
    dataset.info = {**dataset.info, "curation": info}
    dataset.save()
    dataset.delete_sample_field(FIELD)
    assert default_embedding_field(dataset) == "embeddings_other", "a deleted default falls back to a recorded field"
    dataset.delete_sample_field("embeddings_other")
    assert default_embedding_field(dataset) is None


# ---- batching ------------------------------------------------------------------------------


def test_defaults_for_batch_size_and_workers(monkeypatch):
    assert embeddings.default_batch_size("cuda:0") == 256 and embeddings.default_batch_size("cpu") == 32
    monkeypatch.setattr(embeddings.os, "cpu_count", lambda: 16)
    assert embeddings.default_workers("cuda") == 8 and embeddings.default_workers("cpu") == 1
    monkeypatch.setattr(embeddings.os, "cpu_count", lambda: 1)
    assert embeddings.default_workers("cpu") == 0, "one core: decode in the main process"


def test_gpu_out_of_memory_halves_the_batch_and_keeps_the_order():
    import torch

    class SmallGpu:
        def __init__(self):
            self.sizes: list[int] = []

        def encode_images(self, batch):
            self.sizes.append(len(batch))
            if len(batch) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return batch[:, :1].numpy() * 10

    gpu = SmallGpu()
    batch = torch.arange(7, dtype=torch.float32).reshape(7, 1).repeat(1, 3)
    encoded = embeddings._encode_adaptive(gpu, batch)
    assert encoded[:, 0].tolist() == [0, 10, 20, 30, 40, 50, 60]
    assert gpu.sizes[0] == 7 and sum(size for size in gpu.sizes if size <= 2) == 7, "every image encoded once"


def test_out_of_memory_on_a_single_image_is_raised():
    import torch

    class NoGpu:
        def encode_images(self, batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        embeddings._encode_adaptive(NoGpu(), torch.zeros(1, 3))


# ---- input size and flip TTA ----------------------------------------------------------------


def _stored_vector(dataset, path: Path) -> np.ndarray:
    return np.asarray(dataset.match({"filepath": str(path)}).first()[FIELD])


def _large_copies(folder: Path, count: int, side: int = 300) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"large-{index}.png"
        images.Image.fromarray(bad_images._pattern(side, side - 20, seed=index)).save(path)
        paths.append(path)
    return paths


def test_auto_size_embeds_small_images_small_and_records_it(fo, tmp_path, fresh_name, offline_embedder):
    paths = _demo_copies(tmp_path, 3)
    dataset = _dataset(fo, fresh_name, paths)
    run = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert (run.image_size, run.crop, run.flip_tta) == (160, 1.0, False)
    assert "median longer side 28 px over 3 images" in run.input_reason
    record = curation_info(dataset)["embeddings"][FIELD]
    assert (record["image_size"], record["crop"], record["flip_tta"]) == (160, 1.0, False)
    assert record["input_reason"] == run.input_reason
    expected = offline_embedder.with_input(image_size=160)
    vector = expected.encode_images(expected.preprocess(images.load_rgb(paths[0], max_side=512))[None])[0]
    np.testing.assert_allclose(_stored_vector(dataset, paths[0]), vector, atol=1e-5)


def test_auto_size_embeds_large_images_at_the_native_size(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _large_copies(tmp_path, 2))
    run = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert run.image_size == 224 == offline_embedder.native_size
    assert curation_info(dataset)["embeddings"][FIELD]["image_size"] == 224


def test_an_incremental_run_reuses_the_recorded_size_and_tta(fo, tmp_path, fresh_name, offline_embedder):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 2))
    first = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0, image_size=96, flip_tta=True)
    assert (first.image_size, first.flip_tta, first.input_reason) == (96, True, "asked for")

    # Large images now dominate: "auto" alone would pick 224, but the field holds 96 px vectors.
    added = _large_copies(tmp_path / "large", 3)
    dataset.add_samples([fo.Sample(filepath=str(path)) for path in added])
    second = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert (second.embedded, second.image_size, second.flip_tta) == (3, 96, True)
    assert "earlier run" in second.input_reason
    record = curation_info(dataset)["embeddings"][FIELD]
    assert (record["image_size"], record["flip_tta"]) == (96, True)
    same = offline_embedder.with_input(image_size=96, flip_tta=True)
    vector = same.encode_images(same.preprocess(images.load_rgb(added[0], max_side=512))[None])[0]
    np.testing.assert_allclose(_stored_vector(dataset, added[0]), vector, atol=1e-5)

    with pytest.raises(ValueError, match="already holds embeddings made at 96 px.*delete the field"):
        compute_embeddings(dataset, embedder=offline_embedder, num_workers=0, image_size=160)
    with pytest.raises(ValueError, match="flip_tta=True"):
        compute_embeddings(dataset, embedder=offline_embedder, num_workers=0, flip_tta=False)
    assert compute_embeddings(dataset, embedder=offline_embedder, num_workers=0, image_size=96, flip_tta=True).embedded == 0


def test_a_field_recorded_before_input_sizes_keeps_the_old_preprocess(fo, tmp_path, fresh_name, offline_embedder):
    paths = _demo_copies(tmp_path, 2)
    dataset = _dataset(fo, fresh_name, paths[:1])
    compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    info = curation_info(dataset)
    for key in ("image_size", "crop", "flip_tta", "input_reason"):  # a record as older versions wrote it
        info["embeddings"][FIELD].pop(key)
    dataset.info = {**dataset.info, "curation": info}
    dataset.save()
    dataset.add_samples([fo.Sample(filepath=str(paths[1]))])
    run = compute_embeddings(dataset, embedder=offline_embedder, num_workers=0)
    assert (run.embedded, run.image_size, run.crop, run.flip_tta) == (1, 224, 0.875, False)
    assert "shorter side 256, centre crop 224" in run.input_reason
    old = offline_embedder.with_input(crop=0.875)
    vector = old.encode_images(old.preprocess(images.load_rgb(paths[1], max_side=512))[None])[0]
    np.testing.assert_allclose(_stored_vector(dataset, paths[1]), vector, atol=1e-5)


def test_embedder_for_field_reproduces_the_stored_vectors(fo, tmp_path, fresh_name, offline_embedder):
    import torch

    paths = _demo_copies(tmp_path, 3)
    dataset = _dataset(fo, fresh_name, paths)
    compute_embeddings(dataset, model=FALLBACK_MODEL, device="cpu", num_workers=0, flip_tta=True)
    embedder = embedder_for_field(dataset, FIELD, device="cpu")
    assert embedder.spec.name == FALLBACK_MODEL and embedder.input_config() == {"image_size": 160, "crop": 1.0, "flip_tta": True}
    vectors = embedder.encode_images(torch.stack([embedder.preprocess(images.load_rgb(p, max_side=512)) for p in paths]))
    for path, vector in zip(paths, vectors):
        assert float(vector @ _stored_vector(dataset, path)) > 0.999
    assert embedder_for_field(dataset.limit(1), FIELD, device="cpu").input_config() == embedder.input_config(), "a view works too"


def test_embedder_for_field_loads_the_recorded_checkpoint(fo, tmp_path, fresh_name, offline_embedder):
    import torch

    from curation.models import resolve_model

    checkpoint = tmp_path / "lite0.pt"
    torch.save(offline_embedder.module.state_dict(), checkpoint)
    spec = resolve_model(FALLBACK_MODEL, checkpoint=checkpoint)
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 1))
    run = compute_embeddings(dataset, model=spec, device="cpu", num_workers=0)
    assert embedder_for_field(dataset, run.field, device="cpu").spec == spec
    checkpoint.unlink()
    with pytest.raises(ModelUnavailableError, match="no longer exists"):
        embedder_for_field(dataset, run.field, device="cpu")


def test_embedder_for_field_without_a_record_says_what_to_run(fo, tmp_path, fresh_name):
    dataset = _dataset(fo, fresh_name, _demo_copies(tmp_path, 1))
    with pytest.raises(NoEmbeddingRecordError, match="no record of the model behind 'embeddings_x'.*curation embed") as caught:
        embedder_for_field(dataset, "embeddings_x")
    assert isinstance(caught.value, ModelUnavailableError) and isinstance(caught.value, CurationError)


def test_typical_image_side_reads_headers_and_skips_unreadable_files(tmp_path):
    paths = [str(p) for p in _demo_copies(tmp_path, 3)] + [str(bad_images.write_zero_bytes(tmp_path / "e.png")), "/nowhere.png"]
    assert embeddings.typical_image_side(paths) == (28.0, 3)
    assert embeddings.typical_image_side([]) == (None, 0)
