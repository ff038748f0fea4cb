"""Does handing UMAP the shared neighbour graph make the map faster, and is it as good?

On clustered synthetic embeddings (unit vectors, N x 512), after compiling UMAP's numba
kernels once on a small input, times:

- ``umap own search``: umap-learn builds its own kNN (NN-descent) and lays out the map;
- ``graph``: our neighbour graph (``curation.neighbors.compute_neighbors``), which the
  finders compute anyway (``curation analyze``) and cache on disk;
- ``umap with shared graph``: the layout from the precomputed graph
  (``curation.projection.compute_projection(knn=...)``), i.e. the map's cost once the
  finders have run.

Quality: trustworthiness (scikit-learn, k = 10) of each layout on a random subset of
2,000 points, and the agreement of the two layouts' 10 nearest neighbours in 2-D.

    .venv/bin/python benchmarks/bench_umap_knn.py [--sizes 10000,50000] [--dim 512] [--cold]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def clustered(count: int, dim: int, clusters: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, count)] + 0.6 * rng.normal(size=(count, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int = 10, sample: int = 2000, seed: int = 0) -> float:
    from sklearn.neighbors import NearestNeighbors

    rows = np.random.default_rng(seed).choice(len(a), size=min(sample, len(a)), replace=False)
    near_a = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a[rows], return_distance=False)[:, 1:]
    near_b = NearestNeighbors(n_neighbors=k + 1).fit(b).kneighbors(b[rows], return_distance=False)[:, 1:]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(near_a, near_b)]))


def trust(points: np.ndarray, coords: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    from sklearn.manifold import trustworthiness

    rows = np.random.default_rng(seed).choice(len(points), size=min(sample, len(points)), replace=False)
    return float(trustworthiness(points[rows], coords[rows], n_neighbors=10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cold", action="store_true",
                        help="warm up on 600 rows only, so UMAP's own NN-descent compiles inside the timed run "
                             "(what the first map in a new app server costs)")
    parser.add_argument("--out", default=None, help="JSON file (default results/umap_knn[_cold].json)")
    args = parser.parse_args()
    from curation.neighbors import compute_neighbors, umap_precomputed_knn
    from curation.projection import ProjectionConfig, compute_projection

    config = ProjectionConfig()
    started = time.perf_counter()
    # Above 4,096 rows UMAP searches with NN-descent, whose numba kernels compile on first use.
    warm = clustered(600 if args.cold else 4500, args.dim, seed=9)
    compute_projection(warm, config)
    compute_projection(warm, config, knn=umap_precomputed_knn(compute_neighbors(warm, 15)))
    print(f"numba compile + warm-up: {time.perf_counter() - started:.1f} s (once per process)")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        points = clustered(size, args.dim)
        started = time.perf_counter()
        own = compute_projection(points, config)
        own_s = time.perf_counter() - started
        started = time.perf_counter()
        graph = compute_neighbors(points, 15)
        graph_s = time.perf_counter() - started
        started = time.perf_counter()
        shared = compute_projection(points, config, knn=umap_precomputed_knn(graph))
        shared_s = time.perf_counter() - started
        row = {"n": size, "dim": args.dim, "umap_own_search_s": round(own_s, 2), "graph_s": round(graph_s, 2),
               "graph_backend": graph.backend, "umap_shared_graph_s": round(shared_s, 2),
               "speedup_after_analyze": round(own_s / shared_s, 2),
               "speedup_including_graph": round(own_s / (graph_s + shared_s), 2),
               "trustworthiness_own": round(trust(points, own), 4), "trustworthiness_shared": round(trust(points, shared), 4),
               "layout_neighbour_agreement": round(neighbour_agreement(own, shared), 3)}
        rows.append(row)
        print(f"n={size:,} x {args.dim}: umap own search {own_s:.1f} s | graph {graph_s:.1f} s ({graph.backend}) + "
              f"umap with shared graph {shared_s:.1f} s -> {row['speedup_after_analyze']}x once the finders ran, "
              f"{row['speedup_including_graph']}x counting the graph | trustworthiness own "
              f"{row['trustworthiness_own']:.3f} vs shared {row['trustworthiness_shared']:.3f}")
    out = Path(args.out or Path(__file__).with_name("results") / f"umap_knn{'_cold' if args.cold else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([{**row, "cold": args.cold} for row in rows], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
