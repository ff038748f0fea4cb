"""How heavy is the map page, up to a million points?

Two parts.

``--sizes`` (default 10000,100000): per size, on synthetic clustered 512-d unit embeddings
(``bench_neighbors.clustered_embeddings``: 1,000 Gaussian clusters with a low-rank spread;
10 classes, class = cluster mod 10):

- projection: ``curation.projection.compute_projection`` with the default config (above
  50,000 rows: UMAP fitted on a seeded 50k sample, the rest placed), timed per step: the
  sample's exact neighbour graph, the UMAP fit, the placement of the rest;
- quality: trustworthiness (scikit-learn, k = 10) on 2,000 seeded held-out (placed) rows
  and on 2,000 fitted rows (computed within those 2,000: with 1,000 clusters a random
  2,000 hold about 2 rows per cluster, so most of their 10 neighbours are other clusters'
  and the figure is low for any layout; compare methods on the same rows), and the
  same-cluster rate: the share of a checked row's 10 nearest points on the map, among all
  N, that come from its own cluster;
- the cache key: the digest of N sample ids;
- the page's answers once the map is computed: building the figure (``map_view_figure``:
  at most 100k points over a density image), Streamlit's own validation and JSON encoding
  of it, the JSON size; a colour change (another colouring: stratified draw + figure +
  encoding); resolving a 300-vertex lasso and a box over all points
  (``curation.mapview.selected_ids``); decoding the selection event the browser sends
  (every drawn point inside the lasso, as Streamlit does);
- peak RSS of the process.

``--compare-transform N``: on N rows (rest = N - 50k), placement vs ``UMAP.transform``
(UMAP fitted on the same sample with its own search, so it has an index to transform with):
time and held-out trustworthiness, and the placement with 5, 10 and 20 neighbours.

``--with-dataset``: also times the FiftyOne reads the page makes (all attributes aligned by
id; the first 1,000 rows of a selection) on a dataset of each size.

    .venv/bin/python benchmarks/bench_map.py --sizes 100000 --json out.json
    .venv/bin/python benchmarks/bench_map.py --sizes 1000000 --json benchmarks/results/bench_map_1m.json
    .venv/bin/python benchmarks/bench_map.py --sizes "" --compare-transform 200000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_neighbors import clustered_with_labels  # noqa: E402
from memory import peak_rss_mib  # noqa: E402


def trust(points: np.ndarray, coords: np.ndarray, rows: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(points[rows], coords[rows], n_neighbors=10))


def cluster_agreement(coords: np.ndarray, cluster: np.ndarray, rows: np.ndarray, k: int = 10) -> float:
    """Share of each checked row's k nearest points on the map (among all N) that come from
    its own synthetic cluster: does "near on the map" still mean "the same concept"?"""
    from scipy.spatial import cKDTree

    _, near = cKDTree(coords).query(coords[rows], k=k + 1)
    near = np.where(near[:, :1] == rows[:, None], near[:, 1:], near[:, :k])  # drop the row itself
    return float(np.mean(cluster[near] == cluster[rows][:, None]))


def held_out_rows(count: int, fitted: np.ndarray, size: int = 2000, seed: int = 1) -> np.ndarray:
    rest = np.setdiff1d(np.arange(count), fitted)
    return np.sort(np.random.default_rng(seed).choice(rest, size=min(size, len(rest)), replace=False))


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    cpu = time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start, time.process_time() - cpu


def lasso_polygon(frame: pd.DataFrame, vertices: int = 300) -> dict:
    """A wobbly closed lasso around the map's centre covering roughly a quarter of its extent."""
    x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
    cx, cy = np.median(x), np.median(y)
    rx, ry = (np.percentile(x, 95) - np.percentile(x, 5)) / 3, (np.percentile(y, 95) - np.percentile(y, 5)) / 3
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    wobble = 1 + 0.15 * np.sin(7 * angle)
    return {"x": (cx + rx * wobble * np.cos(angle)).tolist(), "y": (cy + ry * wobble * np.sin(angle)).tolist()}


def projection_steps(points: np.ndarray, config) -> tuple[np.ndarray, dict, np.ndarray]:
    """compute_projection's large-n path, one step at a time (same calls, same result)."""
    from curation import projection
    from curation.neighbors import compute_neighbors, umap_precomputed_knn

    count = len(points)
    if count <= config.sample_above:
        coords, wall, cpu = timed(projection.compute_projection, points, config)
        return coords, {"umap_full_s": round(wall, 1), "umap_full_cpu_s": round(cpu, 1)}, np.arange(count)
    rows = projection.sample_rows(count, config)
    sample = projection.normalize_rows(points[rows])
    graph, graph_s, graph_cpu = timed(compute_neighbors, sample, projection.map_neighbors(len(sample), config) - 1)
    sample_coords, fit_s, fit_cpu = timed(projection._fit_umap, sample, config, umap_precomputed_knn(graph))
    rest = np.setdiff1d(np.arange(count), rows)
    placed, place_s, place_cpu = timed(projection.place_on_sample, points, rest, sample, sample_coords,
                                       neighbors=config.placement_neighbors)
    coords = np.empty((count, 2), dtype=np.float32)
    coords[rows], coords[rest] = sample_coords, placed
    return coords, {"sample_graph_s": round(graph_s, 1), "umap_fit_sample_s": round(fit_s, 1),
                    "umap_fit_sample_cpu_s": round(fit_cpu, 1), "place_rest_s": round(place_s, 1),
                    "place_rest_cpu_s": round(place_cpu, 1), "sample_graph_cpu_s": round(graph_cpu, 1)}, rows


def page_answers(frame: pd.DataFrame, colors: pd.Series, other_colors: pd.Series) -> dict:
    import plotly.io as pio
    import plotly.tools

    from curation import mapview
    from curation.plots import map_view_figure

    def answer(colouring):
        (figure, drawn), build_s, _ = timed(map_view_figure, frame, colouring)
        # what st.plotly_chart does with it before sending
        checked, check_s, _ = timed(plotly.tools.return_figure_from_figure_or_data, figure, validate_figure=True)
        payload, json_s, _ = timed(pio.to_json, checked, validate=False)
        return drawn, build_s, check_s, json_s, payload

    drawn, build_s, check_s, json_s, payload = answer(colors)
    _, other_build_s, other_check_s, other_json_s, _ = answer(other_colors)
    lasso = lasso_polygon(frame)
    selected, lasso_s, _ = timed(mapview.selected_ids, frame, {"points": [], "box": [], "lasso": [lasso]})
    box = {"x": [lasso["x"][0] - 1, lasso["x"][0]], "y": [min(lasso["y"]), max(lasso["y"])]}
    boxed, box_s, _ = timed(mapview.selected_ids, frame, {"points": [], "box": [box], "lasso": []})
    # The browser sends every drawn point inside the lasso; Streamlit decodes that JSON.
    rows = mapview.drawn_rows(colors)
    inside = rows[mapview.polygon_contains(frame["x"].to_numpy()[rows], frame["y"].to_numpy()[rows],
                                           lasso["x"], lasso["y"])]
    event = json.dumps({"selection": {"points": [
        {"curve_number": 1, "point_number": int(i), "point_index": int(i), "x": float(frame["x"].iat[i]),
         "y": float(frame["y"].iat[i]), "customdata": int(i), "marker_color": "#2E91E5", "legendgroup": ""}
        for i in inside], "point_indices": inside.tolist(), "box": [], "lasso": [lasso]}})
    _, event_s, _ = timed(json.loads, event)
    return {"drawn_points": drawn, "figure_build_s": round(build_s, 3), "streamlit_validate_s": round(check_s, 3),
            "to_json_s": round(json_s, 3), "payload_mb": round(len(payload) / 1e6, 2),
            "colour_change_s": round(other_build_s + other_check_s + other_json_s, 3),
            "lasso_300_vertices_s": round(lasso_s, 3), "lasso_selected": len(selected),
            "box_s": round(box_s, 3), "box_selected": len(boxed),
            "selection_event_mb": round(len(event) / 1e6, 2), "selection_event_decode_s": round(event_s, 3)}


def run_size(count: int, with_dataset: bool) -> dict:
    from curation import projection
    from curation.projection import ProjectionConfig

    config = ProjectionConfig()
    (points, cluster), data_s, _ = timed(clustered_with_labels, count)
    coords, steps, fitted = projection_steps(points, config)
    row = {"points": count, "data_s": round(data_s, 1), **steps}
    row["projection_s"] = round(sum(v for k, v in steps.items() if k.endswith("_s") and not k.endswith("cpu_s")), 1)
    held_out = held_out_rows(count, fitted) if count > config.sample_above else np.sort(
        np.random.default_rng(1).choice(count, size=min(2000, count), replace=False))
    row["trust_held_out"] = round(trust(points, coords, held_out), 4)
    fitted_check = np.sort(np.random.default_rng(2).choice(fitted, size=min(2000, len(fitted)), replace=False))
    row["trust_fitted"] = round(trust(points, coords, fitted_check), 4)
    row["same_cluster_held_out"] = round(cluster_agreement(coords, cluster, held_out), 4)
    row["same_cluster_fitted"] = round(cluster_agreement(coords, cluster, fitted_check), 4)
    ids = [f"{i:024x}" for i in range(count)]
    _, digest_s, _ = timed(projection._ids_digest, ids)
    row["ids_digest_s"] = round(digest_s, 3)
    labels = pd.Categorical.from_codes(cluster % 10, [f"class_{i}" for i in range(10)])
    frame = pd.DataFrame({"id": ids, "x": coords[:, 0], "y": coords[:, 1], "label": labels})
    score = pd.Series(np.random.default_rng(3).random(count), name="score")
    row.update(page_answers(frame, frame["label"], score))
    if with_dataset:
        row.update(dataset_reads(frame))
    row["peak_rss_gib"] = round(peak_rss_mib() / 1024, 2)
    return row


def dataset_reads(frame: pd.DataFrame) -> dict:
    import fiftyone as fo

    from curation import mapview

    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=f"/img/{i}.png", ground_truth=fo.Classification(label=str(label)))
                         for i, label in enumerate(frame["label"])])
    ids = dataset.values("id")
    frame = frame.assign(id=ids)
    attributes, attributes_s, _ = timed(mapview.with_attributes, dataset, frame[["id", "x", "y"]], "ground_truth")
    selection = ids[::3]
    _, table_s, _ = timed(mapview.selection_table, dataset, selection, "ground_truth", limit=1000)
    dataset.delete()
    return {"attributes_read_s": round(attributes_s, 2), "selection_table_first_1000_s": round(table_s, 3)}


def compare_transform(count: int) -> list[dict]:
    import warnings

    import umap

    from curation import projection
    from curation.projection import ProjectionConfig

    config = ProjectionConfig()
    points, cluster = clustered_with_labels(count)
    rows = projection.sample_rows(count, config)
    sample = points[rows]
    rest = np.setdiff1d(np.arange(count), rows)
    check = held_out_rows(count, rows)
    results = []
    reducer = umap.UMAP(n_components=2, n_neighbors=config.n_neighbors, min_dist=config.min_dist,
                        random_state=config.seed, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample_coords, fit_s, fit_cpu = timed(reducer.fit_transform, sample)
        placed, transform_s, transform_cpu = timed(reducer.transform, points[rest])
    coords = np.empty((count, 2), dtype=np.float32)
    coords[rows], coords[rest] = sample_coords, placed
    results.append({"n": count, "method": "UMAP.transform (own-search fit)", "fit_s": round(fit_s, 1),
                    "place_s": round(transform_s, 1), "place_cpu_s": round(transform_cpu, 1),
                    "trust_held_out": round(trust(points, coords, check), 4),
                    "same_cluster_held_out": round(cluster_agreement(coords, cluster, check), 4)})
    print(results[-1], flush=True)
    for neighbours in (5, 10, 20):
        placed, place_s, place_cpu = timed(projection.place_on_sample, points, rest, sample, sample_coords,
                                           neighbors=neighbours)
        coords[rest] = placed
        results.append({"n": count, "method": f"placement, {neighbours} neighbours (same fit)", "fit_s": None,
                        "place_s": round(place_s, 1), "place_cpu_s": round(place_cpu, 1),
                        "trust_held_out": round(trust(points, coords, check), 4),
                        "same_cluster_held_out": round(cluster_agreement(coords, cluster, check), 4)})
        print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--compare-transform", type=int, default=0, metavar="N")
    parser.add_argument("--with-dataset", action="store_true", help="also time reads from a FiftyOne dataset")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    if args.with_dataset:
        workdir = tempfile.mkdtemp(prefix="bench-map-")
        os.environ["FIFTYONE_DATABASE_NAME"] = os.path.basename(workdir)
        os.environ["CURATION_CACHE_DIR"] = os.path.join(workdir, "cache")
    from curation.projection import ProjectionConfig, compute_projection

    started = time.perf_counter()
    warm, _ = clustered_with_labels(600, seed=9)
    compute_projection(warm, ProjectionConfig())  # numba compile, once per process
    print(f"numba compile + warm-up: {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for count in [int(s) for s in args.sizes.split(",") if s]:
        rows.append(run_size(count, args.with_dataset))
        print(rows[-1], flush=True)
    transform = compare_transform(args.compare_transform) if args.compare_transform else []
    if rows:
        print()
        print(pd.DataFrame(rows).T.to_markdown())
    if transform:
        print()
        print(pd.DataFrame(transform).to_markdown(index=False))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"sizes": rows, "transform": transform}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
