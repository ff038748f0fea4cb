"""Embedding throughput in-process vs on Ray with 1 and 2 local actors (issue 13).

Writes the first N Fashion-MNIST training images as 28 px PNG files, imports them once per
run into a throwaway FiftyOne database, and embeds them with EfficientNet-Lite0 on the CPU:

- in-process: ``curation.embeddings.compute_embeddings`` (model load included);
- Ray: ``curation.ray_engine.embed_with_ray`` on a local cluster this script starts with
  ``ray start --head --num-cpus C`` (in a process session of its own, stopped at the end),
  with each actor count asked for (model load in every actor, shard writes and the
  database write included; the cluster start is timed separately).

Every Ray run's vectors are compared with the in-process ones (largest absolute
difference), so a fast wrong answer cannot pass. What it shows on one machine is Ray's
overhead and how the actors share the cores; on a cluster, throughput grows with nodes.

    .venv/bin/python benchmarks/bench_ray.py --size 10000 --actors 1,2 --json benchmarks/results/bench_ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
MODEL = "efficientnet-lite0-imagenet"


def _log(message: str) -> None:
    print(f"[bench_ray {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _session_processes(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[3]) == session:
                found.append(int(entry.name))
    return found


def start_cluster(cpus: int, temp_dir: Path) -> tuple[str, int]:
    """``ray start --head`` on loopback in a session of its own: (address, session id)."""
    port = _free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--num-cpus", str(cpus), "--num-gpus", "0",
               "--port", str(port), "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
               "--include-dashboard=false", "--dashboard-port", str(_free_port()),
               "--dashboard-agent-listen-port", str(_free_port()), "--disable-usage-stats"]
    starter = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output, _ = starter.communicate(timeout=300)
    if starter.returncode != 0:
        stop_cluster(starter.pid)
        sys.exit(f"bench_ray: ray start failed:\n{output[-3000:]}")
    return f"127.0.0.1:{port}", starter.pid


def stop_cluster(session: int) -> None:
    """Stop exactly this cluster's processes (``ray stop`` would stop every cluster here)."""
    for signal_number, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in _session_processes(session):
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _session_processes(session) and time.monotonic() < deadline:
            time.sleep(0.2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000, help="images (default 10000)")
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts (default 1,2)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray head")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 32)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    actor_counts = [int(part) for part in args.actors.split(",") if part.strip()]
    if not (args.data_dir / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"bench_ray: the Fashion-MNIST files are missing from {args.data_dir}; this benchmark reads "
                 "../shared/datasets/fashion-mnist/ beside the project, or --data-dir.")
    work_dir = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ.pop("FIFTYONE_DATABASE_URI", None)
    os.environ["CURATION_CACHE_DIR"] = str(work_dir / "cache")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    from curation.database import start_private_mongod, stop_private_mongod

    mongod = start_private_mongod(work_dir)
    ray_temp = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # Ray's socket paths must stay short
    state: dict[str, int] = {}  # the cluster's session id, once started
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_embed import write_fashion_mnist_pngs

        image_dir = work_dir / "images"
        _log(f"writing {args.size} PNG files")
        write_fashion_mnist_pngs(args.data_dir, args.size, image_dir)
        return _run(args, actor_counts, image_dir, ray_temp, state)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if "session" in state:
            stop_cluster(state["session"])
        stop_private_mongod(mongod)
        shutil.rmtree(work_dir, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


def _run(args, actor_counts: list[int], image_dir: Path, ray_temp: Path, state: dict) -> int:
    import numpy as np
    import torch

    import fiftyone as fo
    from curation.embeddings import compute_embeddings
    from curation.importers import import_dataset
    from curation.models import MODEL_REGISTRY
    from curation.ray_engine import embed_with_ray, import_ray

    field = MODEL_REGISTRY[MODEL].field_name
    load_start = os.getloadavg()
    rows = []

    def fresh(name: str):
        import_dataset(image_dir, name, format="classes", overwrite=True)
        return fo.load_dataset(name)

    def vectors(dataset) -> dict[str, np.ndarray]:
        return {Path(path).name: np.asarray(vector) for path, vector in zip(*dataset.values(["filepath", field]))}

    reference: dict[str, np.ndarray] = {}

    def in_process(label: str) -> None:
        _log(label)
        dataset = fresh("bench-ray-local")
        started = time.perf_counter()
        run = compute_embeddings(dataset, model=MODEL, device="cpu", batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        got = vectors(dataset)
        reference.update({} if reference else got)
        difference = max(float(np.abs(got[name] - vector).max()) for name, vector in reference.items())
        rows.append({"engine": label, "actors": None, "seconds": seconds, "images_per_second": args.size / seconds,
                     "embedded": run.embedded, "max_abs_difference": difference, "load_average": os.getloadavg()})
        _log(f"{label}: {seconds:.1f} s, {args.size / seconds:.1f} img/s")
        fo.delete_dataset(dataset.name)

    # In-process first and last: the machine's load drifts, and the two show by how much.
    in_process("in-process")

    ray = import_ray()
    started = time.perf_counter()
    address, state["session"] = start_cluster(args.cpus, ray_temp)
    ray.init(address=address, log_to_driver=False)
    cluster_seconds = time.perf_counter() - started
    _log(f"ray start --head + connect: {cluster_seconds:.1f} s")
    for actors in actor_counts:
        dataset = fresh(f"bench-ray-{actors}")
        started = time.perf_counter()
        run = embed_with_ray(dataset, model=MODEL, device="cpu", num_actors=actors, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        got = vectors(dataset)
        difference = max(float(np.abs(got[name] - vector).max()) for name, vector in reference.items())
        rows.append({"engine": "ray", "actors": actors, "seconds": seconds, "images_per_second": args.size / seconds,
                     "embedded": run.embedded, "shards": run.shards_computed, "max_abs_difference": difference,
                     "load_average": os.getloadavg()})
        _log(f"ray, {actors} actors: {seconds:.1f} s, {args.size / seconds:.1f} img/s, max |diff| {difference:.2e}")
        fo.delete_dataset(dataset.name)
    ray.shutdown()
    stop_cluster(state.pop("session"))
    in_process("in-process, again")

    # The better of the two in-process runs: Ray is never flattered by a slow baseline.
    baseline = max(row["images_per_second"] for row in rows if row["actors"] is None)
    print(f"\n{args.size} Fashion-MNIST images (28 px, embedded at 160 px), {MODEL} on the CPU; "
          f"{os.cpu_count()} CPUs, Ray head with {args.cpus} CPUs (start + connect {cluster_seconds:.1f} s, not counted)\n")
    print("| engine | actors | wall s | img/s | vs best in-process | max abs diff vs in-process | load avg (1 min) after |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['actors'] or '-'} | {row['seconds']:.1f} | {row['images_per_second']:.1f} | "
              f"{row['images_per_second'] / baseline:.2f}x | {row['max_abs_difference']:.1e} | "
              f"{row['load_average'][0]:.1f} |")
    environment = {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
                   "cpu_count": os.cpu_count(), "ray_cpus": args.cpus, "size": args.size,
                   "cluster_start_seconds": cluster_seconds, "load_average_start": load_start,
                   "load_average_end": os.getloadavg()}
    print(f"\nload average {', '.join(f'{v:.2f}' for v in load_start)} at start, "
          f"{', '.join(f'{v:.2f}' for v in environment['load_average_end'])} at end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
