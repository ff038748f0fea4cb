"""Reading an embedding field back: FiftyOne's ``values()`` + ``np.stack`` against the streamed
``curation.embeddings.load_embeddings`` (issue 13: "no list of all samples in memory beyond the
matrix itself").

Each method runs in a fresh child process so its peak RSS (``VmHWM``) is its own. The dataset is
written once into a private mongod (N samples, D-dim float32 unit vectors stored the way
``curation embed`` stores them: FiftyOne vector fields).

    .venv/bin/python benchmarks/bench_load_embeddings.py --size 100000 [--dim 512] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIELD = "clip_embedding"

_CHILD = r"""
import json, sys, time
import numpy as np
import fiftyone as fo
from curation.embeddings import load_embeddings
dataset = fo.load_dataset(sys.argv[1])
method = sys.argv[2]
start = time.perf_counter()
if method == "values":
    ids, vectors = dataset.exists("clip_embedding").values(["id", "clip_embedding"])
    matrix = np.stack(vectors).astype(np.float32, copy=False)
else:
    ids, matrix = load_embeddings(dataset, "clip_embedding")
seconds = time.perf_counter() - start
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
print(json.dumps({"method": method, "rows": len(ids), "shape": list(matrix.shape), "seconds": seconds,
                  "peak_rss_mib": peak, "checksum": float(matrix[:, :4].sum())}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from curation.database import start_private_mongod, stop_private_mongod

    work = Path(tempfile.mkdtemp(prefix="bench-load-emb-"))
    mongod = start_private_mongod(work)  # sets FIFTYONE_DATABASE_URI for this process
    env = dict(os.environ)
    try:
        import fiftyone as fo
        import numpy as np

        name = f"bench-load-{args.size}"
        dataset = fo.Dataset(name, overwrite=True)
        dataset.persistent = True
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for offset in range(0, args.size, 20_000):
            count = min(20_000, args.size - offset)
            vectors = rng.standard_normal((count, args.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            dataset.add_samples([fo.Sample(filepath=f"/data/{offset + i:08d}.png", **{FIELD: vector})
                                 for i, vector in enumerate(vectors)])
        print(f"wrote {args.size:,} x {args.dim} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows = []
        for _ in range(args.repeats):
            for method in ("values", "streamed"):
                result = subprocess.run([sys.executable, "-c", _CHILD, name, method], env=env, cwd=ROOT,
                                        capture_output=True, text=True, check=True)
                row = json.loads(result.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{method:9} {row['rows']:>9,} rows  {row['seconds']:6.1f} s  peak {row['peak_rss_mib']:7.0f} MiB",
                      file=sys.stderr)
        checksums = {round(row["checksum"], 3) for row in rows}
        assert len(checksums) == 1, f"the methods read different matrices: {checksums}"
        matrix_mib = args.size * args.dim * 4 / 2**20
        print(f"matrix itself: {matrix_mib:.0f} MiB", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps({"size": args.size, "dim": args.dim, "matrix_mib": matrix_mib,
                                             "runs": rows}, indent=2))
        dataset.delete()
    finally:
        stop_private_mongod(mongod)
    return 0


if __name__ == "__main__":
    sys.exit(main())
