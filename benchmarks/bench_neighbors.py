"""Time, memory and recall of the shared k-nearest-neighbour graph (``curation.neighbors``).

For each size, on synthetic clustered embeddings (default: 1,000 Gaussian clusters in 512-d,
each cluster with a 16-d low-rank spread plus isotropic noise and a direction shared by all
rows, L2-normalised: nearest neighbours at cosine ~0.85-0.95, random pairs ~0.45, like CLIP
image embeddings), this prints per method:

- wall time of ``compute_neighbors`` (or of the reference), in a fresh process per run, and
  its CPU time (user + system, all threads): on a shared machine the wall time swings with
  the load, the CPU time much less;
- peak resident memory of that process (``VmHWM``; ``ru_maxrss`` where there is no /proc),
  and the part above the loaded data matrix;
- recall@k against exact search: the share of returned neighbours at least as similar as
  the exact k-th neighbour (ties count as hits), on every row up to 10k rows and on a
  seeded 2,000-row sample above.

Methods: ``exact``, ``approx``, ``auto`` (the library; where auto resolves to a method
already measured on the same data, that run is reported again rather than repeated),
``sklearn`` (scikit-learn brute-force cosine ``NearestNeighbors``, for reference, run up to
20k rows), and the approximate candidates that ``approx`` was chosen from: ``faiss-ivf``
(IVF-flat, inner product, nlist = 4 sqrt(N), nprobe 8) and ``pynndescent`` (what umap-learn
uses; numba compiles part of it in every new process, so its time includes some compile
time). Exact search is skipped above 200k rows: it is quadratic (about an hour for
1M x 512 on two cores).

    nice .venv/bin/python benchmarks/bench_neighbors.py --sizes 10000,100000 --json out.json
    nice .venv/bin/python benchmarks/bench_neighbors.py --big            # adds 1,000,000
    nice .venv/bin/python benchmarks/bench_neighbors.py --sizes 200000 --clusters 200 --methods approx,faiss-ivf,pynndescent
    nice .venv/bin/python benchmarks/bench_neighbors.py --data fashion-mnist --methods exact,approx,faiss-ivf,pynndescent
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FASHION_MNIST = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
EXACT_LIMIT = 200_000
SKLEARN_LIMIT = 20_000
QUERY_SAMPLE = 2_000
LIBRARY_METHODS = ("exact", "approx", "auto")
ALL_METHODS = LIBRARY_METHODS + ("sklearn", "faiss-ivf", "pynndescent")


def clustered_with_labels(count: int, dim: int = 512, clusters: int = 1000, rank: int = 16,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, dim) float32 unit rows in Gaussian clusters with a low-rank spread, and each
    row's cluster.

    Isotropic clusters in 512-d would make every in-cluster pair equally far apart (no
    meaningful nearest neighbour); real embeddings vary along few directions per concept.
    """
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim, dtype=np.float32)
    centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    bases = rng.standard_normal((clusters, rank, dim), dtype=np.float32) * np.float32(0.5 / np.sqrt(rank))
    out = np.empty((count, dim), dtype=np.float32)
    cluster = np.empty(count, dtype=np.int64)
    step = 4096  # bases[labels] is step x rank x dim floats
    for start in range(0, count, step):
        size = min(step, count - start)
        labels = rng.integers(0, clusters, size)
        spread = rng.standard_normal((size, 1, rank), dtype=np.float32)
        block = shared + centers[labels] + np.matmul(spread, bases[labels])[:, 0]
        block += np.float32(0.1) * rng.standard_normal((size, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + size] = block
        cluster[start:start + size] = labels
    return out, cluster


def clustered_embeddings(count: int, dim: int = 512, clusters: int = 1000, rank: int = 16, seed: int = 0) -> np.ndarray:
    """The rows of :func:`clustered_with_labels` alone."""
    return clustered_with_labels(count, dim, clusters, rank, seed)[0]


def fashion_mnist_pixels() -> np.ndarray:
    """The 70,000 Fashion-MNIST images as 784-d unit rows: a real-data recall check (the
    fashion-mnist-784 set of ann-benchmarks)."""
    parts = []
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        with gzip.open(FASHION_MNIST / name) as handle:
            parts.append(np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 784))
    pixels = np.concatenate(parts).astype(np.float32)
    return pixels / np.linalg.norm(pixels, axis=1, keepdims=True)


def _peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB.

    Linux's ``VmHWM`` first: ``ru_maxrss`` survives ``execve``, so a child started from
    this script would report the parent's peak (the data and the exact reference) as its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# --------------------------------------------------------------------------- child runs


def _run_method(method: str, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(indices, similarities, backend) for one method, self excluded, most similar first."""
    if method in LIBRARY_METHODS:
        from curation.neighbors import compute_neighbors

        graph = compute_neighbors(matrix, k, method=method, device="cpu")
        return graph.indices, graph.similarities, graph.backend
    if method == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        model = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="cosine").fit(matrix)
        distances, indices = model.kneighbors(matrix)
        return _without_self(indices, 1.0 - distances, k) + ("sklearn-brute",)
    if method == "faiss-ivf":
        import faiss

        count, dim = matrix.shape
        lists = max(1, int(4 * np.sqrt(count)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(count, min(count, 40 * lists), replace=False)
        index.train(matrix[np.sort(sample)])
        index.add(matrix)
        index.nprobe = 8
        similarities, indices = index.search(matrix, k + 1)
        return _without_self(indices, similarities, k) + (f"faiss-ivf{lists},nprobe8",)
    if method == "pynndescent":
        import pynndescent

        index = pynndescent.NNDescent(matrix, n_neighbors=k + 1, metric="euclidean", random_state=0, low_memory=True)
        indices, distances = index.neighbor_graph
        return _without_self(indices, 1.0 - distances.astype(np.float64) ** 2 / 2, k) + ("pynndescent",)
    raise ValueError(f"unknown method {method!r}. Available: {', '.join(ALL_METHODS)}")


def _without_self(indices: np.ndarray, similarities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    is_self = indices == np.arange(len(indices))[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    width = indices.shape[1] - 1
    return (indices[keep].reshape(-1, width)[:, :k].astype(np.int64),
            similarities[keep].reshape(-1, width)[:, :k].astype(np.float32))


def _child(spec: dict) -> dict:
    matrix = np.load(spec["data"])
    queries = np.load(spec["queries"])
    rss_data = _peak_rss_gib()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    indices, similarities, backend = _run_method(spec["method"], matrix, spec["k"])
    seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
    peak = _peak_rss_gib()
    np.save(spec["out"], indices[queries])
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_gib": peak, "rss_over_data_gib": peak - rss_data,
            "backend": backend}


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: steadier than wall time when
    other work shares the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- parent


def _exact_reference(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Similarity of each query's exact k-th nearest other row (brute force, query blocks)."""
    kth = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), 256):
        rows = queries[start:start + 256]
        similarities = matrix[rows] @ matrix.T
        similarities[np.arange(len(rows)), rows] = -np.inf
        kth[start:start + len(rows)] = -np.partition(-similarities, k - 1, axis=1)[:, k - 1]
    return kth


def _recall(matrix: np.ndarray, queries: np.ndarray, found: np.ndarray, kth: np.ndarray) -> float:
    """Share of returned neighbours at least as similar as the exact k-th (tolerance 1e-5)."""
    valid = found >= 0
    similarities = np.einsum("qd,qkd->qk", matrix[queries], matrix[np.maximum(found, 0)])
    hits = valid & (similarities >= kth[:, None] - 1e-5)
    return float(hits.sum() / (found.shape[1] * len(queries)))


def _measure(method: str, data_path: str, queries_path: str, k: int, workdir: str) -> dict:
    out = os.path.join(workdir, f"found-{method}.npy")
    spec = {"method": method, "data": data_path, "queries": queries_path, "k": k, "out": out}
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"}
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["found"] = out
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated row counts (synthetic data)")
    parser.add_argument("--big", action="store_true", help="also run 1,000,000 rows (exact skipped)")
    parser.add_argument("--data", choices=("synthetic", "fashion-mnist"), default="synthetic")
    parser.add_argument("--methods", default="exact,approx,auto,sklearn", help=f"any of {','.join(ALL_METHODS)}")
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000,
                        help="synthetic clusters; rows per cluster set how hard the search is (1M / 1000 = 1000)")
    parser.add_argument("--json", dest="json_out", help="write the results here as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0

    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}. Available: {', '.join(ALL_METHODS)}")
    if args.data == "fashion-mnist":
        datasets = [("fashion-mnist", None)]
    else:
        sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
        if args.big and 1_000_000 not in sizes:
            sizes.append(1_000_000)
        datasets = [(f"clustered-{size}" + (f"/{args.clusters}c" if args.clusters != 1000 else ""), size) for size in sizes]

    import faiss

    from curation import neighbors

    environment = {"python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
                   "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(), "k": args.k}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-neighbors-") as workdir:
        for name, size in datasets:
            matrix = fashion_mnist_pixels() if size is None else clustered_embeddings(size, args.dim, args.clusters)
            count = len(matrix)
            data_path = os.path.join(workdir, "data.npy")
            np.save(data_path, matrix)
            queries = (np.arange(count) if count <= 10_000
                       else np.sort(np.random.default_rng(1).choice(count, QUERY_SAMPLE, replace=False)))
            queries_path = os.path.join(workdir, "queries.npy")
            np.save(queries_path, queries)
            kth = _exact_reference(matrix, queries, args.k)
            for method in methods:
                row = {"data": name, "rows": count, "dim": matrix.shape[1], "method": method}
                resolved = neighbors._resolve_method("auto", count, "cpu")  # the data has no broken rows
                same = next((done for done in rows if done["data"] == name and done["method"] == resolved), None)
                if method == "auto" and same is not None and "seconds" in same:
                    row.update({key: same[key] for key in ("seconds", "cpu_seconds", "peak_rss_gib", "rss_over_data_gib",
                                                            "recall")})
                    row["backend"] = f"{same['backend']} (= the {resolved} run: auto resolves to {resolved})"
                elif method == "exact" and count > EXACT_LIMIT:
                    row["skipped"] = f"exact is quadratic: skipped above {EXACT_LIMIT:,} rows"
                elif method == "sklearn" and count > SKLEARN_LIMIT:
                    row["skipped"] = f"reference only up to {SKLEARN_LIMIT:,} rows"
                else:
                    record = _measure(method, data_path, queries_path, args.k, workdir)
                    if "found" in record:
                        record["recall"] = _recall(matrix, queries, np.load(record.pop("found")), kth)
                    row.update(record)
                rows.append(row)
                print(_describe(row), file=sys.stderr, flush=True)
            del matrix

    print(_markdown(rows, environment))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"environment": environment, "results": rows}, indent=2))
    return 0


def _describe(row: dict) -> str:
    if "skipped" in row:
        return f"{row['data']} {row['method']}: skipped ({row['skipped']})"
    if "error" in row:
        return f"{row['data']} {row['method']}: error {row['error']}"
    return (f"{row['data']} {row['method']}: {row['seconds']:.1f} s ({row['cpu_seconds']:.1f} CPU s), "
            f"peak RSS {row['peak_rss_gib']:.2f} GiB, "
            f"recall {row['recall']:.4f}")


def _markdown(rows: list[dict], environment: dict) -> str:
    lines = [f"k = {environment['k']}; {environment['cpus']} CPUs; load average at start "
             f"{environment['load_average_at_start'][0]:.1f}",
             "",
             "| data | rows | method | backend | time (s) | CPU time (s) | peak RSS (GiB) | RSS over data (GiB) | recall@k |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "skipped" in row or "error" in row:
            note = row.get("skipped") or f"error: {row['error']}"
            lines.append(f"| {row['data']} | {row['rows']:,} | {row['method']} | {note} | | | | | |")
            continue
        lines.append(f"| {row['data']} | {row['rows']:,} | {row['method']} | {row['backend']} | {row['seconds']:.1f} | "
                     f"{row['cpu_seconds']:.1f} | "
                     f"{row['peak_rss_gib']:.2f} | {row['rss_over_data_gib']:.2f} | {row['recall']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
