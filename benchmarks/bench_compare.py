"""Time and quality of ``curation.compare.compare_embeddings`` on synthetic clustered vectors.

A is drawn from ``--clusters`` Gaussian clusters in 512-d (each with a 16-d low-rank spread,
isotropic noise and a shared direction, L2-normalised: nearest neighbours at cosine ~0.87,
random pairs ~0.41, like image embeddings; see ``bench_neighbors.py``); the cluster is the
class. Two B sets of the same size:

- ``alike``: a fresh draw from the same clusters (no shift: the AUC should be about 0.5,
  about 1% of B far from A, no region lacking);
- ``batch``: a fresh draw from a fifth of the clusters, plus 10% of B from new clusters A
  never saw (missing classes, label shift and new material: a high AUC, within-class AUC
  about 0.5, the new clusters far from A, the unsampled clusters' regions lacking).

Prints wall and CPU seconds of each comparison and its headline figures.

    nice .venv/bin/python benchmarks/bench_compare.py                    # 10k vs 10k
    nice .venv/bin/python benchmarks/bench_compare.py --sizes 2000,10000,50000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def clustered(rng: np.random.Generator, centres: np.ndarray, bases: np.ndarray, shared: np.ndarray, clusters: np.ndarray,
              ) -> np.ndarray:
    """Rows around ``centres[clusters]``: a low-rank spread, noise and a shared direction, unit length."""
    count, dim = len(clusters), centres.shape[1]
    spread = np.einsum("nr,nrd->nd", rng.normal(size=(count, bases.shape[1])).astype(np.float32), bases[clusters])
    rows = centres[clusters] + 0.15 * spread + 0.02 * rng.normal(size=(count, dim)).astype(np.float32) + shared
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_space(rng: np.random.Generator, clusters: int, dim: int = 512, rank: int = 16):
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) / np.sqrt(dim)
    bases = rng.normal(size=(clusters, rank, dim)).astype(np.float32) / np.sqrt(dim)
    shared = 0.045 * rng.normal(size=dim).astype(np.float32)
    return centres, bases, shared


def run(size: int, clusters: int, seed: int, quiet: bool = False) -> None:
    from curation.compare import compare_classes, compare_embeddings

    rng = np.random.default_rng(seed)
    new_clusters = max(1, clusters // 10)
    centres, bases, shared = make_space(rng, clusters + new_clusters)
    labels_a = rng.integers(0, clusters, size)
    matrix_a = clustered(rng, centres, bases, shared, labels_a)
    kept = rng.choice(clusters, max(1, clusters // 5), replace=False)
    batch_labels = np.where(rng.random(size) < 0.9, rng.choice(kept, size), clusters + rng.integers(0, new_clusters, size))
    sets = {"alike": rng.integers(0, clusters, size), "batch": batch_labels}
    for name, labels_b in sets.items():
        matrix_b = clustered(rng, centres, bases, shared, labels_b)
        names_a = np.array([f"c{c}" for c in labels_a], dtype=object)
        names_b = np.array([f"c{c}" for c in labels_b], dtype=object)
        wall, cpu = time.perf_counter(), time.process_time()
        _, test = compare_classes(dict(zip(*np.unique(names_a, return_counts=True))),
                                  dict(zip(*np.unique(names_b, return_counts=True))))
        found = compare_embeddings(matrix_a, matrix_b, names_a, names_b, class_p_value=test.get("p_value"))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if quiet:
            continue
        coverage = found.coverage
        new_rows = labels_b >= clusters
        far_new = float((found.distance_b[new_rows] > coverage["far_distance"]).mean()) if new_rows.any() else float("nan")
        far_old = float((found.distance_b[~new_rows] > coverage["far_distance"]).mean())
        shift = found.shift
        within = "n/a" if shift["auc_within_classes"] is None else f"{shift['auc_within_classes']:.3f}"
        print(f"{size:>7,} vs {size:<7,} {name:<6} {wall:7.1f} s wall {cpu:7.1f} s CPU | chi2 p {test['p_value']:.2g} | "
              f"far {coverage['share_far']:.3f} (new clusters {far_new:.2f}, known {far_old:.3f}) | "
              f"AUC {shift['auc']:.3f}, within classes {within} | regions lacking {found.regions['n_lacking']}"
              f"/{found.regions['n_regions']} | cross pairs {len(found.duplicates)} | "
              f"disagreements {len(found.disagreements)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000", help="comma-separated samples per side")
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, numpy {np.__version__}; 512-d, {args.clusters} clusters, seed {args.seed}")
    run(500, 5, args.seed, quiet=True)  # imports and first-call costs stay out of the timings
    for size in (int(text) for text in args.sizes.split(",")):
        run(size, args.clusters, args.seed)


if __name__ == "__main__":
    main()
