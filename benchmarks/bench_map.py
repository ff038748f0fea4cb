"""How heavy is the map page at 10k and 100k points?

Prints, per size: time to build the plotly WebGL figure (curation.plots.scatter_map), the
size of the JSON the browser receives, and (with --with-dataset) the time to read the
per-sample attributes (file path, label, tags) from a FiftyOne dataset for every point,
which the page does on each rerun.

    .venv/bin/python benchmarks/bench_map.py [--sizes 10000,100000] [--with-dataset]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd


def synthetic_frame(count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.array([f"class_{i}" for i in range(10)])[rng.integers(0, 10, count)]
    return pd.DataFrame({"id": [f"{i:024x}" for i in range(count)], "x": rng.normal(size=count).astype(np.float32),
                         "y": rng.normal(size=count).astype(np.float32), "label": labels, "tags": ""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--with-dataset", action="store_true", help="also time reads from a FiftyOne dataset")
    args = parser.parse_args()
    if args.with_dataset:
        workdir = tempfile.mkdtemp(prefix="bench-map-")
        os.environ["FIFTYONE_DATABASE_NAME"] = os.path.basename(workdir)
        os.environ["CURATION_CACHE_DIR"] = os.path.join(workdir, "cache")
    import plotly.io as pio

    from curation.plots import scatter_map

    rows = []
    for count in [int(s) for s in args.sizes.split(",")]:
        frame = synthetic_frame(count)
        start = time.perf_counter()
        figure = scatter_map(frame, frame["label"])
        build = time.perf_counter() - start
        start = time.perf_counter()
        payload = pio.to_json(figure, validate=False)
        serialize = time.perf_counter() - start
        row = {"points": count, "figure_build_s": round(build, 3), "to_json_s": round(serialize, 3),
               "payload_mb": round(len(payload) / 1e6, 2)}
        if args.with_dataset:
            import fiftyone as fo

            from curation.mapview import selection_table

            dataset = fo.Dataset()
            dataset.add_samples([fo.Sample(filepath=f"/img/{i}.png", ground_truth=fo.Classification(label=label))
                                 for i, label in enumerate(frame["label"])])
            ids = dataset.values("id")
            start = time.perf_counter()
            selection_table(dataset, ids, "ground_truth")
            row["attributes_read_s"] = round(time.perf_counter() - start, 3)
            dataset.delete()
        rows.append(row)
        print(row, flush=True)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
