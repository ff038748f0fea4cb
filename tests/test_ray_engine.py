"""curation.ray_engine: embedding on a Ray cluster gives what the in-process path gives.

One local cluster per module, started as a user would (``ray start --head``, 2 CPUs, on
loopback, in a short temporary folder), in a process session of its own so that teardown
stops exactly its processes (``ray stop`` would stop every Ray cluster on the machine).
Skipped where Ray is not installed, except the test that the missing install is explained.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import bad_images
from curation import ray_engine
from curation.datasets import curation_info
from curation.embeddings import compute_embeddings, embedding_failures
from curation.errors import CurationError
from curation.models import FALLBACK_MODEL, MODEL_REGISTRY

DEMO = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist-demo"
FIELD = MODEL_REGISTRY[FALLBACK_MODEL].field_name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _session_processes(session: int) -> list[int]:
    """Ids of the processes in the process session ``session`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp session ...
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def _stop_session(session: int, grace: float = 3.0) -> None:
    """SIGTERM every process of the session, then SIGKILL what is left after ``grace`` seconds."""
    for signal_number, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in _session_processes(session):
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _session_processes(session) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _session_processes(session):
            return


@dataclass(frozen=True)
class Cluster:
    address: str
    session: int  # the process session of all its processes

    def processes(self, name_prefix: str) -> list[int]:
        """Ids of its processes whose command line starts with ``name_prefix`` (Ray names actors ``ray::Class``)."""
        found = []
        for pid in _session_processes(self.session):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(name_prefix.encode()):
                    found.append(pid)
            except OSError:
                pass
        return found


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU Ray head started by `ray start --head` for this module."""
    pytest.importorskip("ray.data")
    import ray

    # Ray puts Unix sockets under the temp dir, whose paths must stay under 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    port = _free_port()
    ray_command = Path(sys.executable).with_name("ray")  # the venv's, beside its python
    command = [str(ray_command) if ray_command.exists() else "ray", "start", "--head", "--num-cpus", "2", "--num-gpus", "0",
               "--port", str(port), "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
               "--include-dashboard=false", "--dashboard-port", str(_free_port()),
               "--dashboard-agent-listen-port", str(_free_port()), "--disable-usage-stats"]
    # A session of its own: the head's daemons and every worker they start keep its id.
    starter = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    session = starter.pid
    try:
        output, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, f"ray start failed: {output[-3000:]}"
        address = f"127.0.0.1:{port}"
        ray.init(address=address, log_to_driver=False)
        yield Cluster(address, session)
    finally:
        ray.shutdown()
        _stop_session(session)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _demo_tree(folder: Path, per_class: int) -> Path:
    """``per_class`` demo images of each of the 10 classes, in class folders."""
    for class_dir in sorted(path for path in DEMO.iterdir() if path.is_dir()):
        (folder / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:per_class]:
            shutil.copy(image, folder / class_dir.name / image.name)
    return folder


def _dataset(name: str, paths: list[Path]):
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.add_samples([fo.Sample(filepath=str(path)) for path in paths])
    return dataset


def _by_name(dataset, field: str = FIELD) -> dict[str, np.ndarray | None]:
    return {Path(path).name: None if vector is None else np.asarray(vector)
            for path, vector in zip(*dataset.values(["filepath", field]))}


def _record(dataset) -> dict:
    record = dict(curation_info(dataset)["embeddings"][FIELD])
    record.pop("updated_at")
    return record


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory) -> list[Path]:
    """80 demo images (8 of each class)."""
    tree = _demo_tree(tmp_path_factory.mktemp("ray-demo"), 8)
    return sorted(tree.rglob("*.png"))


@pytest.fixture(scope="module")
def in_process(demo_images):
    """The demo images embedded in-process on the CPU: (dataset, run)."""
    dataset = _dataset("ray-reference", demo_images)
    run = compute_embeddings(dataset, model=FALLBACK_MODEL, device="cpu", num_workers=0)
    yield dataset, run
    dataset.delete()


@pytest.mark.slow
def test_ray_gives_the_in_process_embeddings_and_run_record(ray_cluster, demo_images, in_process, fresh_name):
    reference, reference_run = in_process
    dataset = _dataset(fresh_name, demo_images)
    seen = []
    run = ray_engine.embed_with_ray(dataset, model=FALLBACK_MODEL, device="cpu", num_actors=2, shard_size=30,
                                    progress=lambda done, total: seen.append((done, total)))

    assert (run.embedded, run.failures, run.already_done) == (80, [], 0)
    assert (run.shards_computed, run.shards_reused, run.computed, run.num_actors) == (3, 0, 80, 2)
    for name in ("field", "model", "requested_model", "fallback_reason", "device", "image_size", "crop", "flip_tta",
                 "input_reason"):
        assert getattr(run, name) == getattr(reference_run, name), name
    assert _record(dataset) == _record(reference)
    assert curation_info(dataset)["default_embeddings"] == FIELD
    expected, got = _by_name(reference), _by_name(dataset)
    assert set(got) == set(expected) and all(vector is not None for vector in got.values())
    for name, vector in expected.items():
        assert got[name].dtype == vector.dtype and np.allclose(got[name], vector, atol=1e-5), name
    assert seen[-1] == (80, 80) and [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert not Path(run.run_folder).exists(), "a finished run leaves no shards behind"

    again = ray_engine.embed_with_ray(dataset, model=FALLBACK_MODEL, device="cpu", num_actors=2)
    assert (again.embedded, again.computed, again.already_done) == (0, 0, 80)


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_the_run_completes(ray_cluster, demo_images, in_process, fresh_name):
    reference, _ = in_process
    dataset = _dataset(fresh_name, demo_images[:48])
    killed = []

    def kill_an_actor_once(done: int, total: int) -> None:
        if done and not killed:  # vectors are coming back: the actors are mid-run
            actors = ray_cluster.processes("ray::MapWorker")
            assert actors, "no model actor to kill"
            os.kill(actors[0], signal.SIGKILL)
            killed.append(actors[0])

    run = ray_engine.embed_with_ray(dataset, model=FALLBACK_MODEL, device="cpu", num_actors=2, batch_size=4,
                                    shard_size=12, progress=kill_an_actor_once)

    assert killed and (run.embedded, run.failures) == (48, [])
    expected, got = _by_name(reference), _by_name(dataset)
    assert all(np.allclose(got[name], expected[name], atol=1e-5) for name in got)


def test_a_damaged_shard_is_ignored_and_its_samples_computed_again(tmp_path):
    good = ray_engine._write_shard(tmp_path, ["a", "b"], ["/x/a.png", "/x/b.png"], np.ones((2, 3), np.float32),
                                   ["", "cannot decode"], "cpu")
    (tmp_path / "shard-0123456789abcdef.npz").write_bytes(b"not a zip file")
    wanted = {"a": "/x/a.png", "b": "/x/b.png", "c": "/x/c.png"}

    found, shards = ray_engine._finished_rows(tmp_path, wanted, retry_failed=False)
    assert (found, shards) == ({"a": (good, 0), "b": (good, 1)}, 1)
    found, _ = ray_engine._finished_rows(tmp_path, wanted, retry_failed=True)
    assert found == {"a": (good, 0)}, "with retry_failed a recorded failure is computed again"
    found, _ = ray_engine._finished_rows(tmp_path, {"a": "/moved/a.png"}, retry_failed=False)
    assert found == {}, "a sample whose file moved is computed again"
    assert not list(tmp_path.glob("*.tmp")), "shards are written under a temporary name, then renamed"


def _shards_of(dataset) -> list[Path]:
    """The shard files in the cache that hold samples of ``dataset``."""
    from curation.paths import cache_dir

    ids = set(dataset.values("id"))
    found = []
    for path in sorted((cache_dir() / ray_engine.RUNS_FOLDER).glob("*/shard-*.npz")):
        with np.load(path) as shard:
            if ids & set(shard["ids"].tolist()):
                found.append(path)
    return found


@pytest.mark.slow
def test_a_stopped_run_resumes_without_recomputing_finished_shards(ray_cluster, demo_images, in_process, fresh_name,
                                                                   monkeypatch):
    reference, _ = in_process
    dataset = _dataset(fresh_name, demo_images[:40])

    def stopped(*args, **kwargs):  # the driver dies after the shards are written, before the database
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_engine, "_write_database", stopped)
    with pytest.raises(KeyboardInterrupt):
        ray_engine.embed_with_ray(dataset, model=FALLBACK_MODEL, device="cpu", num_actors=1, shard_size=20)
    monkeypatch.undo()
    assert not dataset.has_sample_field(FIELD) or dataset.exists(FIELD).count() == 0
    shards = _shards_of(dataset)
    assert len(shards) == 2
    shards[0].unlink()  # a shard that was still being computed when the run stopped
    kept = {path: path.stat().st_mtime_ns for path in shards[1:]}
    written = []
    original = ray_engine._write_shard
    monkeypatch.setattr(ray_engine, "_write_shard", lambda folder, ids, *rest: written.append(len(ids))
                        or original(folder, ids, *rest))
    at_database_write = {}
    write_database = ray_engine._write_database
    monkeypatch.setattr(ray_engine, "_write_database", lambda *args: at_database_write.update(
        {path: path.stat().st_mtime_ns for path in kept}) or write_database(*args))

    run = ray_engine.embed_with_ray(dataset, model=FALLBACK_MODEL, device="cpu", num_actors=1, shard_size=20)

    assert (run.shards_reused, run.shards_computed, run.computed, run.embedded) == (1, 1, 20, 40)
    assert written == [20], "only the unfinished shard is computed again"
    assert at_database_write == kept, "the finished shard is read back, not written again"
    expected, got = _by_name(reference), _by_name(dataset)
    assert len(got) == 40 and all(np.allclose(got[name], expected[name], atol=1e-5) for name in got)
    record, expected_record = _record(dataset), _record(reference)
    assert record.pop("input_reason") == "auto: median longer side 28 px over 40 images"
    expected_record.pop("input_reason")
    assert record == expected_record
    assert _shards_of(dataset) == [], "the finished run removes its shards"


@pytest.mark.slow
def test_unreadable_images_are_recorded_as_failures_as_in_process(ray_cluster, demo_images, tmp_path, fresh_name):
    import fiftyone as fo

    paths = [Path(shutil.copy(path, tmp_path / path.name)) for path in demo_images[:3]]
    paths += [bad_images.write_zero_bytes(tmp_path / "empty.png"), bad_images.write_text_as_image(tmp_path / "notes.jpg"),
              tmp_path / "was-deleted.png"]
    local = _dataset(fresh_name + "-local", paths)
    try:
        local_run = compute_embeddings(local, model=FALLBACK_MODEL, device="cpu", num_workers=0)
        dataset = _dataset(fresh_name, paths)
        run = ray_engine.embed_with_ray(dataset, model=FALLBACK_MODEL, device="cpu", num_actors=1)

        assert run.embedded == local_run.embedded == 3
        assert len(run.failures) == 3 and sorted(run.failures) == sorted(local_run.failures)
        assert sorted(embedding_failures(dataset, FIELD)) == sorted(embedding_failures(local, FIELD))
        stored = _by_name(dataset)
        assert all(stored[name] is None for name in ("empty.png", "notes.jpg", "was-deleted.png"))

        again = ray_engine.embed_with_ray(dataset, model=FALLBACK_MODEL, device="cpu", num_actors=1)
        assert (again.embedded, again.failures, again.already_done) == (0, [], 6), "a known failure is not retried"
    finally:
        fo.delete_dataset(local.name)


@pytest.mark.slow
def test_cli_embeds_on_ray(ray_cluster, demo_images, fresh_name):
    """The real command in a process of its own: it connects to the cluster by address and leaves it running."""
    dataset = _dataset(fresh_name, demo_images[:12])
    done = subprocess.run([sys.executable, "-m", "curation.cli", "embed", "--dataset", fresh_name, "--engine", "ray",
                           "--address", ray_cluster.address, "--actors", "1", "--model", FALLBACK_MODEL,
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "embedded 12 new samples" in done.stdout and "on Ray (1 cpu actors; 1 shards computed" in done.stdout
    dataset.reload()
    assert dataset.exists(FIELD).count() == 12
    import ray

    assert ray.cluster_resources().get("CPU") == 2, "the cluster outlives the command"


# ---- what needs no cluster ------------------------------------------------------------------


def test_without_ray_the_cli_names_the_extra_to_install(monkeypatch, capsys):
    from curation.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert main(["embed", "--dataset", "any", "--engine", "ray"]) == 1
    assert "pip install 'curation[ray]'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--address", "127.0.0.1:1"], "--address and --actors apply to --engine ray"),
    (["--actors", "2"], "--address and --actors apply to --engine ray"),
    (["--engine", "ray", "--patches", "boxes"], "--patches runs in-process only"),
    (["--engine", "ray", "--workers", "2"], "with --engine ray use --actors"),
])
def test_cli_rejects_options_of_the_other_engine(argv, message, capsys):
    from curation.cli import main

    assert main(["embed", "--dataset", "any", *argv]) == 1
    assert message in capsys.readouterr().err


class _FakeRay:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


@pytest.mark.parametrize("resources, device, actors, expected", [
    ({"CPU": 16.0}, "auto", None, ("cpu", 4, 0.0, 4)),
    ({"CPU": 2.0}, "auto", None, ("cpu", 1, 0.0, 2)),
    ({"CPU": 2.0}, "cpu", 2, ("cpu", 2, 0.0, 1)),
    ({"CPU": 32.0, "GPU": 4.0}, "auto", None, ("cuda", 4, 1.0, 1)),
    ({"CPU": 32.0, "GPU": 4.0}, "cpu", 3, ("cpu", 3, 0.0, 10)),
])
def test_the_actor_plan_follows_the_cluster(resources, device, actors, expected):
    assert ray_engine._cluster_plan(_FakeRay(**resources), device, actors) == expected


@pytest.mark.parametrize("resources, device, actors, message", [
    ({"CPU": 8.0}, "cuda:1", None, "each actor gets a GPU of its own"),
    ({"CPU": 8.0}, "tpu", None, "expected 'auto', 'cpu' or 'cuda'"),
    ({"CPU": 8.0}, "cuda", None, "the Ray cluster has no GPUs"),
    ({"CPU": 2.0}, "cpu", 3, "fewer than the 3 CPU actors"),
])
def test_the_actor_plan_explains_what_the_cluster_cannot_do(resources, device, actors, message):
    with pytest.raises(CurationError, match=message):
        ray_engine._cluster_plan(_FakeRay(**resources), device, actors)


@pytest.mark.parametrize("keyword, value, message", [
    ("shard_size", 0, "shard_size: expected a whole number >= 1, got 0"),
    ("num_actors", 0, "num_actors: expected a whole number >= 1, got 0"),
])
def test_embed_with_ray_validates_its_sizes(keyword, value, message):
    with pytest.raises(CurationError, match=message):
        ray_engine.embed_with_ray(object(), **{keyword: value})


# ---- the neighbour graph ----------------------------------------------------------------------


@pytest.mark.slow
def test_ray_neighbour_graph_is_the_exact_in_process_graph(ray_cluster):
    from curation.neighbors import compute_neighbors

    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(203, 24)).astype(np.float32)
    embeddings[5] = 0.0  # broken rows take no part
    embeddings[17, 3] = np.nan
    local = compute_neighbors(embeddings, 6, method="exact", device="cpu")
    graph = ray_engine.compute_neighbors_with_ray(embeddings, 6, block_rows=50)

    assert (graph.method, graph.backend) == ("exact", "ray-numpy")
    assert np.array_equal(graph.valid, local.valid)
    assert np.array_equal(graph.indices, local.indices)
    assert np.allclose(graph.similarities, local.similarities, atol=1e-6, equal_nan=True)
    assert (graph.indices[5] == -1).all() and not (graph.indices == 17).any()


@pytest.mark.slow
def test_analyze_on_ray_finds_what_in_process_analyze_finds(ray_cluster, small_class_tree, fresh_name, capsys):
    from curation.analysis import analyze
    from curation.cli import main
    from curation.datasets import load_dataset
    from curation.importers import import_dataset
    from curation.neighbors import _cache_path

    import_dataset(small_class_tree, fresh_name, format="classes")
    dataset = load_dataset(fresh_name)
    compute_embeddings(dataset, model=FALLBACK_MODEL, device="cpu", num_workers=0)
    finders = ["mislabels", "outliers"]  # the finders that need only the graph (and the labels)
    local = analyze(dataset, finders)
    cache = _cache_path(fresh_name, FIELD, 15, "auto")
    cache.unlink()

    assert main(["analyze", "--dataset", fresh_name, "--finders", ",".join(finders), "--engine", "ray",
                 "--address", ray_cluster.address]) == 0
    output = capsys.readouterr()
    assert "neighbour graph: 60 samples, k=15, exact via ray-numpy" in output.err
    assert set(local.results) == set(finders)
    for name, result in local.results.items():
        assert f"{name}: {result.summary}" in output.out.splitlines(), name
    assert cache.exists()


@pytest.mark.parametrize("argv, message", [
    (["--engine", "spark"], "argument --engine: invalid choice: 'spark'"),
    (["--engine", "ray", "--actors", "0"], "argument --actors: expected a whole number >= 1, got '0'"),
])
def test_cli_refuses_a_bad_engine_or_actor_count(argv, message, capsys):
    from curation.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["embed", "--dataset", "any", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
