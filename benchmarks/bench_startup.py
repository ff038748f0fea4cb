"""Process start and dataset open: what a user waits for before any real work (issue 13).

    .venv/bin/python benchmarks/bench_startup.py --runs 5 --json benchmarks/results/bench_startup.json

Whole processes, timed from outside (``time.perf_counter`` around ``subprocess.run``, output
thrown away), each command ``--runs`` times, in three database modes:

- ``cold``: ``CURATION_DB_IDLE_MINUTES=0``, FiftyOne's own behaviour and what every command
  paid before: each process starts FiftyOne's database service (a Python process that
  imports fiftyone, then ``mongod``), and the service stops when the process exits.
- ``first``: keeping on, no server running (``curation db stop`` before each run): the first
  command after an idle period starts the keeper and the service, then works.
- ``warm``: the server kept by the keeper (``curation.db_server``) is running.

Commands: ``curation --help``; ``curation datasets`` (in ``warm`` it reads the kept server
with pymongo and never imports fiftyone); ``open``: a Python process that does what every
dataset command does first (``ensure_server``, ``curation.datasets.load_dataset``) plus a
cheap query (``count_values`` of the label field) on a 10,000-sample dataset; ``fiftyone
script``: the same open and query by a plain FiftyOne script (no curation), which attaches to
the kept service too.

Isolation: a temporary FiftyOne database dir of its own (``FIFTYONE_DATABASE_DIR``; no
``FIFTYONE_DATABASE_URI``, no config file), stopped and deleted at the end. FiftyOne
attaches to any running database service of the user whatever its directory, so the script
refuses to run while one is running. The dataset: 10,000 samples, each a path to one
bundled 28x28 PNG, a ``Classification`` of 10 classes and a 64-d embedding recorded as a
curation embedding run (so ``curation datasets`` has counts to compute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASET = "bench-startup-10k"
CURATION = str(Path(sys.executable).with_name("curation"))

BUILD = """
import numpy as np, fiftyone as fo
from pathlib import Path
image = str(next(Path(IMAGE_DIR).rglob("*.png")))
rng = np.random.default_rng(0)
dataset = fo.Dataset(NAME, overwrite=True)
dataset.persistent = True
dataset.add_samples([fo.Sample(filepath=image, ground_truth=fo.Classification(label=f"class{i % 10}"),
                               embedding=rng.standard_normal(64).astype(np.float32)) for i in range(SIZE)])
dataset.info = {"curation": {"embeddings": {"embedding": {"model": "synthetic-64d", "updated_at": "2026-01-01"}}}}
dataset.save()
"""

OPEN = ("from curation.db_server import ensure_server; ensure_server(); "
        "from curation.datasets import load_dataset; dataset = load_dataset(%r); "
        "print(len(dataset), dataset.count_values('ground_truth.label'))" % DATASET)
FIFTYONE_SCRIPT = ("import fiftyone as fo; dataset = fo.load_dataset(%r); "
                   "print(len(dataset), dataset.count_values('ground_truth.label'))" % DATASET)

COMMANDS = {
    "curation --help": [CURATION, "--help"],
    "curation datasets": [CURATION, "datasets"],
    "open + query (curation)": [sys.executable, "-c", OPEN],
    "open + query (fiftyone script)": [sys.executable, "-c", FIFTYONE_SCRIPT],
}


def run(command: list[str], env: dict, *, check: bool = True) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(command)[:120]} failed: {result.stderr[-2000:]}")
    return elapsed


def stop_server(env: dict) -> None:
    subprocess.run([CURATION, "db", "stop"], env=env, stdout=subprocess.DEVNULL, check=True)


def kill_leftovers(database_dir: Path) -> int:
    import psutil

    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(database_dir) in " ".join(p.info["cmdline"] or [])]
    for process in leftovers:
        process.kill()
    psutil.wait_procs(leftovers, timeout=30)
    return len(leftovers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--modes", default="cold,first,warm")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from curation.db_server import find_services

    if find_services():
        raise SystemExit("a FiftyOne database service is running for this user; FiftyOne would attach to it and the "
                         "figures would not be this benchmark's: stop it first (close the app, notebooks, commands)")
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    database_dir = work / "mongo"
    env = {key: value for key, value in os.environ.items()
           if key not in ("FIFTYONE_DATABASE_URI", "FIFTYONE_DATABASE_NAME", "CURATION_DB_IDLE_MINUTES")}
    env.update(FIFTYONE_DATABASE_DIR=str(database_dir), FIFTYONE_CONFIG_PATH=str(work / "no-config.json"),
               CURATION_CACHE_DIR=str(work / "cache"), FIFTYONE_DO_NOT_TRACK="true")
    cold_env = {**env, "CURATION_DB_IDLE_MINUTES": "0"}
    results: dict = {"runs": args.runs, "size": args.size, "machine": platform.platform(), "cpus": os.cpu_count(),
                     "load_before": os.getloadavg(), "modes": {}}
    try:
        started = time.perf_counter()
        settings = f"IMAGE_DIR, NAME, SIZE = {str(ROOT / 'data' / 'fashion-mnist-demo')!r}, {DATASET!r}, {args.size}\n"
        subprocess.run([sys.executable, "-c", "import curation\n" + settings + BUILD], env=cold_env, check=True,
                       stdout=subprocess.DEVNULL)
        results["build_s"] = time.perf_counter() - started
        print(f"built {DATASET} ({args.size} samples) in {results['build_s']:.1f} s", flush=True)
        for mode in args.modes.split(","):
            mode_env = cold_env if mode == "cold" else env
            stop_server(env)
            if mode == "warm":
                run(COMMANDS["curation datasets"], mode_env)  # starts the server; also the warm-up
            figures = {}
            for name, command in COMMANDS.items():
                if mode != "warm":
                    run(command, mode_env)  # warm-up: the page cache, not the server (stopped below)
                times = []
                for _ in range(args.runs):
                    if mode == "first":
                        stop_server(env)
                    times.append(run(command, mode_env))
                figures[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                                 "runs_s": times}
                print(f"{mode:6} {name:32} median {statistics.median(times):6.2f} s  "
                      f"(min {min(times):.2f}, max {max(times):.2f})", flush=True)
                if mode == "cold":
                    stop_server(env)
            results["modes"][mode] = figures
    finally:
        stop_server(env)
        results["leftover_processes_killed"] = kill_leftovers(database_dir)
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f} "
          f"({results['cpus']} CPUs)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
