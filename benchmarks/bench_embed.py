"""Where embedding time goes: decode, preprocess, model, database, and the UMAP map after it.

For each size (the first N images of the Fashion-MNIST training set, written as PNG files)
and each device, this prints:

- decode throughput: ``curation.images.load_rgb`` alone, one process (the embedder's decode);
- decode + preprocess throughput: the model's own preprocess transform after the decode, on
  one torch thread as in the library's DataLoader workers;
- model-only forward throughput: ``Embedder.encode_images`` on random tensors, with the
  torch threads ``compute_embeddings`` uses (all cores on the CPU) and, on the CPU, with one;
- end-to-end embedding throughput: ``curation.embeddings.compute_embeddings`` on a FiftyOne
  dataset of those files, with the library's default batch size and DataLoader workers;
- embed/decode: end-to-end throughput divided by decode throughput (= the share of each
  image's embedding time that decoding alone would take);
- UMAP time on the resulting embeddings (umap-learn, 2-d, n_neighbors=15), in a fresh
  process: first call with an empty numba cache (includes JIT compilation), first call with
  the installed numba cache, and the second call; plus ``curation.projection.compute_projection``
  (the library's settings: seeded, single-threaded) when the library has it, timed in the
  same process after those calls, so its JIT is mostly paid already;
- peak resident memory.

Everything runs against a throwaway MongoDB that this script starts and stops (see
``_start_private_mongod`` for why ``FIFTYONE_DATABASE_DIR`` alone is not enough) and a
throwaway cache directory; the datasets are deleted at the end.

    .venv/bin/python benchmarks/bench_embed.py --sizes 1000,10000 --json results.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_rss_mib  # benchmarks/memory.py (this folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
DEFAULT_MODEL = "efficientnet-lite0-imagenet"  # the offline fallback; CLIP weights need the hub
DECODE_MAX_SIDE = 512  # what curation.embeddings passes to load_rgb


# ----------------------------------------------------------------------------------------
# Isolation: a private MongoDB and cache, set up before curation or fiftyone is imported.
# ----------------------------------------------------------------------------------------

def _start_private_mongod(work_dir: Path) -> subprocess.Popen:
    """A mongod of our own (see ``curation.database.start_private_mongod`` for why)."""
    from curation.database import DatabaseUnavailable, start_private_mongod

    try:
        return start_private_mongod(work_dir)
    except DatabaseUnavailable as error:
        sys.exit(f"bench_embed: {error}")


# ----------------------------------------------------------------------------------------
# Image files
# ----------------------------------------------------------------------------------------

def write_fashion_mnist_pngs(data_dir: Path, count: int, target: Path) -> float:
    """Write the first ``count`` training images as ``target/<class>/fmnist_train_NNNNN.png``.

    Returns the seconds it took.
    """
    from PIL import Image

    from curation.idx import FASHION_MNIST_CLASSES, read_idx

    started = time.perf_counter()
    images = read_idx(data_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / "train-labels-idx1-ubyte.gz")
    if count > len(images):
        sys.exit(f"bench_embed: --sizes asks for {count} images; the Fashion-MNIST training set has {len(images)}")
    for class_name in FASHION_MNIST_CLASSES:
        (target / class_name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        class_name = FASHION_MNIST_CLASSES[int(labels[index])]
        Image.fromarray(images[index]).save(target / class_name / f"fmnist_train_{index:05d}.png")
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------

def measure_decode(filepaths: list[str]) -> float:
    """Images per second through ``load_rgb`` alone, one process."""
    from curation.images import load_rgb

    started = time.perf_counter()
    for path in filepaths:
        load_rgb(path, max_side=DECODE_MAX_SIDE)
    return len(filepaths) / (time.perf_counter() - started)


def measure_decode_preprocess(filepaths: list[str], preprocess) -> float:
    """Images per second through ``load_rgb`` and the model's preprocess, one process, one thread.

    One torch thread, as in the DataLoader workers that do this inside ``compute_embeddings``
    (torch sets 1 thread per worker). With more threads these small tensor operations spend
    their time in OpenMP synchronisation, badly so when the cores are shared.
    """
    import torch

    from curation.images import load_rgb

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        for path in filepaths:
            preprocess(load_rgb(path, max_side=DECODE_MAX_SIDE))
        return len(filepaths) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def measure_forward(embedder, input_shape: tuple[int, ...], batch_size: int, batches: int,
                    threads: int | None = None) -> float:
    """Images per second through ``encode_images`` on random tensors (after one warm-up batch).

    ``threads`` temporarily sets torch's intra-op threads (CPU); None keeps the current setting.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn((batch_size, *input_shape), generator=generator)
        embedder.encode_images(batch)  # warm-up: allocator, cuDNN autotuning, lazy init
        started = time.perf_counter()
        for _ in range(batches):
            embedder.encode_images(batch)  # returns a numpy array, so CUDA work is synchronised
        return batch_size * batches / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def run_umap_worker(matrix_path: Path, metric: str, seed: int | None, numba_cache: Path | None,
                    with_projection: bool) -> dict:
    """Time UMAP in a fresh Python process, so the first call pays numba's JIT compilation."""
    env = dict(os.environ)
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = str(numba_cache)  # an empty cache: the first call compiles everything
    command = [sys.executable, str(Path(__file__).resolve()), "--umap-worker", str(matrix_path),
               "--umap-metric", metric]
    if seed is not None:
        command += ["--umap-seed", str(seed)]
    if with_projection:
        command.append("--with-projection")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def umap_worker_main(matrix_path: str, metric: str, seed: int | None, with_projection: bool) -> None:
    """Entry point of the UMAP subprocess: prints one JSON line with the timings."""
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")  # umap warns that a seed disables parallelism; not news here
    matrix = np.load(matrix_path)
    matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    report: dict = {}
    started = time.perf_counter()
    import umap

    report["import_s"] = time.perf_counter() - started
    for key in ("first_s", "second_s"):
        started = time.perf_counter()
        umap.UMAP(n_components=2, n_neighbors=15, metric=metric, random_state=seed).fit_transform(matrix)
        report[key] = time.perf_counter() - started
    if with_projection:
        report["projection"] = _time_compute_projection(matrix)
    report["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(report))


def _time_compute_projection(matrix) -> dict:
    """Time ``curation.projection.compute_projection`` twice if the library has it."""
    try:
        from curation.projection import compute_projection
    except ImportError as error:
        return {"skipped": f"curation.projection.compute_projection not available ({error})"}
    timings: dict = {}
    for key in ("first_s", "second_s"):
        started = time.perf_counter()
        try:
            compute_projection(matrix)
        except Exception as error:  # its signature is not settled yet; report, do not fail the run
            return {"skipped": f"compute_projection(matrix) raised {type(error).__name__}: {error}"}
        timings[key] = time.perf_counter() - started
    return timings


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------

def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    columns = [
        ("device", "device", None),
        ("images", "images", 0),
        ("decode img/s", "decode_per_s", 0),
        ("decode+preprocess img/s (1 thread)", "decode_preprocess_per_s", 0),
        ("forward img/s (random input, library threads)", "forward_per_s", 1),
        ("forward img/s (1 thread)", "forward_one_thread_per_s", 1),
        ("embed img/s (end to end)", "embed_per_s", 1),
        ("embed/decode", "embed_over_decode", 4),
        ("embed s", "embed_s", 1),
        ("load avg (1 min) after embed", "load_average_1min_after_embed", 1),
        ("import s", "import_s", 1),
        ("load embeddings s", "load_embeddings_s", 2),
        ("UMAP 1st, cold numba s", "umap_first_cold_s", 1),
        ("UMAP 1st, new process s", "umap_first_s", 1),
        ("UMAP 2nd s", "umap_second_s", 1),
        ("UMAP process peak MiB", "umap_process_peak_rss_mib", 0),
        ("compute_projection s (1st / 2nd, after the umap calls)", "projection", None),
    ]
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |",
             "|" + "|".join("---" if digits is None else "---:" for _, _, digits in columns) + "|"]
    for row in rows:
        cells = []
        for _, key, digits in columns:
            value = row.get(key)
            if key == "projection":
                value = (f"{value['first_s']:.1f} / {value['second_s']:.1f}" if value and "first_s" in value
                         else "n/a")
            elif key == "images":
                value = f"{value:,}"
            cells.append(_fmt(value, digits or 0) if not isinstance(value, str) else value)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated image counts (default 1000,10000)")
    parser.add_argument("--devices", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cpu, plus cuda when torch sees a GPU")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry name (default {DEFAULT_MODEL}; clip-vit-b32-openai falls back to it offline)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the library's (32 CPU, 256 GPU)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers; default: the library's")
    parser.add_argument("--forward-batches", type=int, default=6,
                        help="timed random batches before each embedding run (default 6)")
    parser.add_argument("--umap-metric", default="euclidean", choices=("euclidean", "cosine"),
                        help="on L2-normalised vectors (default euclidean)")
    parser.add_argument("--umap-seed", type=int, default=None,
                        help="fix UMAP's random_state (makes umap single-threaded); default: unseeded, parallel")
    parser.add_argument("--skip-umap", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"default {DEFAULT_DATA_DIR}")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary images and database")
    parser.add_argument("--umap-worker", help=argparse.SUPPRESS)
    parser.add_argument("--with-projection", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.umap_worker:
        umap_worker_main(args.umap_worker, args.umap_metric, args.umap_seed, args.with_projection)
        return 0
    try:
        sizes = [int(part) for part in args.sizes.split(",") if part.strip()]
    except ValueError:
        sys.exit(f"bench_embed: --sizes expects comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        sys.exit(f"bench_embed: --sizes expects positive integers, got {args.sizes!r}")
    missing = [name for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
               if not (args.data_dir / name).is_file()]
    if missing:
        sys.exit(f"bench_embed: the Fashion-MNIST files are missing from {args.data_dir} ({', '.join(missing)}). "
                 "This benchmark reads ../shared/datasets/fashion-mnist/ beside the project, or --data-dir.")

    work_dir = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    os.environ.pop("FIFTYONE_DATABASE_URI", None)
    os.environ["CURATION_CACHE_DIR"] = str(work_dir / "cache")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    mongod = _start_private_mongod(work_dir)
    dataset_names: list[str] = []
    try:
        return _run(args, sizes, work_dir, dataset_names, mongod.pid)
    finally:
        if dataset_names:
            import fiftyone as fo

            for name in dataset_names:
                if fo.dataset_exists(name):
                    fo.delete_dataset(name)
        from curation.database import stop_private_mongod

        stop_private_mongod(mongod)
        if args.keep_temp:
            _log(f"kept {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def _run(args: argparse.Namespace, sizes: list[int], work_dir: Path, dataset_names: list[str], mongod_pid: int) -> int:
    import numpy as np
    import torch

    from curation.datasets import load_dataset
    from curation.embeddings import compute_embeddings, default_batch_size, default_workers, load_embeddings
    from curation.images import load_rgb
    from curation.importers import import_dataset
    from curation.models import load_embedder

    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif args.devices == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_embed: --devices cuda, but torch sees no CUDA GPU")
    else:
        devices = [args.devices]
    has_projection = importlib.util.find_spec("curation.projection") is not None

    environment = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": os.getloadavg(),
        "curation_projection_present": has_projection,
    }
    _log(f"work dir {work_dir}; devices {devices}; sizes {sizes}; cpus {os.cpu_count()}; "
         f"load average {environment['load_average_start']}")

    embedders, model_info = {}, {}
    for device in devices:
        started = time.perf_counter()
        embedder = load_embedder(args.model, device=device)
        load_s = time.perf_counter() - started
        embedders[device] = embedder
        batch_size = args.batch_size or default_batch_size(embedder.device)
        workers = default_workers(embedder.device) if args.num_workers is None else args.num_workers
        model_info[device] = {
            "requested_model": args.model,
            "model": embedder.spec.name,
            "fallback_reason": embedder.fallback_reason,
            "dimension": embedder.dimension,
            "load_s": load_s,
            "batch_size": batch_size,
            "num_workers": workers,
        }
        if embedder.fallback_reason:
            _log(f"{device}: requested {args.model}, ran {embedder.spec.name}: {embedder.fallback_reason}")
        else:
            _log(f"{device}: ran {embedder.spec.name} as requested (loaded in {load_s:.1f} s)")
        probe = embedder.preprocess(load_rgb(next((ROOT / "data" / "fashion-mnist-demo").rglob("*.png"))))
        model_info[device]["input_shape"] = list(probe.shape)
        if not device.startswith("cuda"):
            torch.set_num_threads(max(1, os.cpu_count() or 1))  # as compute_embeddings does on the CPU

    rows = []
    for size in sizes:
        image_dir = work_dir / f"images-{size}"
        write_s = write_fashion_mnist_pngs(args.data_dir, size, image_dir)
        _log(f"{size}: wrote {size} PNG files in {write_s:.1f} s")
        decode_per_s = decode_preprocess_per_s = None
        for device in devices:
            embedder = embedders[device]
            name = f"bench-embed-{device}-{size}"
            dataset_names.append(name)
            started = time.perf_counter()
            import_dataset(image_dir, name, format="classes", overwrite=True)
            dataset = load_dataset(name)
            import_s = time.perf_counter() - started
            filepaths = dataset.values("filepath")
            if decode_per_s is None:  # CPU-only work: the same for every device
                decode_per_s = measure_decode(filepaths)
                _log(f"{size}: decode {decode_per_s:,.0f} img/s")
                decode_preprocess_per_s = measure_decode_preprocess(filepaths, embedder.preprocess)
                _log(f"{size}: decode+preprocess {decode_preprocess_per_s:,.0f} img/s")

            # Measured right before the embedding run, so both see the same load from other processes.
            info = model_info[device]
            forward_per_s = measure_forward(embedder, tuple(info["input_shape"]), info["batch_size"],
                                            args.forward_batches)
            _log(f"{size} {device}: forward {forward_per_s:.1f} img/s on random {tuple(info['input_shape'])} "
                 f"batches of {info['batch_size']}, {torch.get_num_threads()} torch threads")
            forward_one_thread_per_s = None
            if device == "cpu" and torch.get_num_threads() > 1:
                # Diagnostic: compute_embeddings uses every core for torch, next to a decoding worker.
                forward_one_thread_per_s = measure_forward(embedder, tuple(info["input_shape"]), info["batch_size"],
                                                           args.forward_batches, threads=1)
                _log(f"{size} {device}: forward {forward_one_thread_per_s:.1f} img/s with 1 torch thread")
            last_report = [time.perf_counter()]

            def progress(done: int, total: int) -> None:
                if time.perf_counter() - last_report[0] > 30 or done == total:
                    last_report[0] = time.perf_counter()
                    _log(f"{size} {device}: embedded {done}/{total} ({done / (last_report[0] - embed_started):.1f} img/s)")

            embed_started = time.perf_counter()
            run = compute_embeddings(dataset, model=args.model, device=device, embedder=embedder,
                                     batch_size=args.batch_size, num_workers=args.num_workers, progress=progress)
            embed_s = time.perf_counter() - embed_started
            load_during_embed = os.getloadavg()[0]
            if run.failures or run.embedded != size:
                _log(f"{size} {device}: WARNING embedded {run.embedded} of {size}; failures {run.failures[:3]}")
            started = time.perf_counter()
            ids, matrix = load_embeddings(dataset, run.field)
            load_embeddings_s = time.perf_counter() - started
            row = {
                "device": run.device,
                "images": size,
                "model": run.model,
                "decode_per_s": decode_per_s,
                "decode_preprocess_per_s": decode_preprocess_per_s,
                "forward_per_s": forward_per_s,
                "forward_one_thread_per_s": forward_one_thread_per_s,
                "torch_threads": torch.get_num_threads(),
                "embed_per_s": run.embedded / embed_s,
                "embed_over_decode": (run.embedded / embed_s) / decode_per_s,
                "embed_s": embed_s,
                "load_average_1min_after_embed": load_during_embed,
                "embedded": run.embedded,
                "failures": len(run.failures),
                "import_s": import_s,
                "write_png_s": write_s,
                "load_embeddings_s": load_embeddings_s,
                "embedding_shape": list(matrix.shape),
            }
            _log(f"{size} {device}: embedded {run.embedded} in {embed_s:.1f} s ({row['embed_per_s']:.1f} img/s); "
                 f"load_embeddings {load_embeddings_s:.2f} s")
            if not args.skip_umap and len(ids) > 16:
                matrix_path = work_dir / f"embeddings-{device}-{size}.npy"
                np.save(matrix_path, matrix)
                cold = run_umap_worker(matrix_path, args.umap_metric, args.umap_seed,
                                       work_dir / f"numba-cache-{device}-{size}", with_projection=False)
                warm = run_umap_worker(matrix_path, args.umap_metric, args.umap_seed, None,
                                       with_projection=has_projection)
                row.update({
                    "umap_first_cold_s": cold.get("first_s"),
                    "umap_first_s": warm.get("first_s"),
                    "umap_second_s": warm.get("second_s"),
                    "umap_import_s": warm.get("import_s"),
                    "umap_process_peak_rss_mib": max(cold.get("peak_rss_mib") or 0, warm.get("peak_rss_mib") or 0) or None,
                    "umap_errors": [report["error"] for report in (cold, warm) if "error" in report] or None,
                    "projection": warm.get("projection"),
                })
                _log(f"{size} {device}: UMAP first (cold numba) {_fmt(row['umap_first_cold_s'])} s, first "
                     f"{_fmt(row['umap_first_s'])} s, second {_fmt(row['umap_second_s'])} s; "
                     f"projection {row['projection']}")
                if row["umap_errors"]:
                    _log(f"{size} {device}: UMAP errors {row['umap_errors']}")
            rows.append(row)

    environment["load_average_end"] = os.getloadavg()
    environment["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    environment["mongod_peak_rss_mib"] = peak_rss_mib(mongod_pid)
    umap_peaks = [row["umap_process_peak_rss_mib"] for row in rows if row.get("umap_process_peak_rss_mib")]
    environment["umap_process_peak_rss_mib"] = max(umap_peaks) if umap_peaks else None

    print()
    print(markdown_table(rows))
    print()
    for device, info in model_info.items():
        reason = f"fell back: {info['fallback_reason']}" if info["fallback_reason"] else "as requested"
        print(f"- {device}: model {info['model']} ({info['dimension']}-d, input {info['input_shape']}), {reason}; "
              f"loaded in {info['load_s']:.1f} s; batch {info['batch_size']}, DataLoader workers {info['num_workers']}")
    print(f"- UMAP: umap-learn, n_components=2, n_neighbors=15, metric={args.umap_metric} on L2-normalised vectors, "
          f"random_state={args.umap_seed}; each size in a fresh process")
    print(f"- peak RSS: benchmark process {environment['peak_rss_mib']:,.0f} MiB (getrusage; it holds the model, "
          f"FiftyOne and the embeddings); largest UMAP process {_fmt(environment['umap_process_peak_rss_mib'], 0)} MiB; "
          f"private mongod {_fmt(environment['mongod_peak_rss_mib'], 0)} MiB")
    print(f"- machine: {environment['cpu_count']} CPUs, torch {environment['torch']} "
          f"({environment['torch_threads']} threads), GPU {environment['gpu']}; load average "
          f"{', '.join(f'{value:.2f}' for value in environment['load_average_start'])} at start, "
          f"{', '.join(f'{value:.2f}' for value in environment['load_average_end'])} at end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment, "models": model_info, "results": rows},
                                        indent=2, default=str) + "\n")
        print(f"- JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
