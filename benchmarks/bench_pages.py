"""How long does each page of the app take to answer, on a dataset of 100,000 samples?

Builds, in a private mongod of its own (``curation.database.start_private_mongod``), a
synthetic dataset that looks analysed: N samples whose filepaths are hard links to the
bundled fashion-mnist demo PNGs (reused round-robin), a ``ground_truth`` Classification
(10 classes, the demo's), a 64-d random unit embedding field registered in the curation
info as ``curation embed`` records it, and the finder fields that ``curation analyze``
writes (``curation.analysis.analyze`` is run on it; ``--finders`` picks which, default
outliers and label_next: see ``DEFAULT_FINDERS`` for why not the others).

Then, for every page in app.py's navigation, with Streamlit's AppTest (as
tests/test_app_pages.py does, env ``CURATION_DATASET`` and ``CURATION_NO_DEMO=1``): a fresh
AppTest, ``at.run()`` (the Overview), ``at.switch_page(page)``, ``at.run()`` (first run
of the page: caches cold), and ``at.run()`` again (a rerun: what every click costs at
least). Each page runs in its own child process so that its peak RSS is its own and one
page's warm caches do not speed another's.

    .venv/bin/python benchmarks/bench_pages.py --size 100000 --json benchmarks/results/bench_pages_100k.json
    .venv/bin/python benchmarks/bench_pages.py --size 100000 --work-dir /tmp/bp100k --pages pages/balance.py

``--profile DIR`` writes a cProfile of each rerun, but AppTest runs the script in another
thread, so it shows only the waiting; time the curation calls directly instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "fashion-mnist-demo"
DATASET = "bench-pages"
EMBEDDING_FIELD = "embeddings_bench_random64"
# Not mislabels (analyze with it, outliers and label_next took 161 s at 2,000 samples on 2 cores), not duplicates (its
# verifier re-embeds image pairs with the recorded model, whose 1280-d vectors do not fit the 64-d
# field), not image_quality (reads every image). Name them with --finders to include them.
DEFAULT_FINDERS = "outliers,label_next"


def navigation_pages() -> list[str]:
    """The page files app.py's st.navigation lists, in its order."""
    return re.findall(r'st\.Page\("(pages/[a-z_]+\.py)"', (ROOT / "app.py").read_text())


def build_dataset(size: int, work_dir: Path, finders: list[str], seed: int = 0) -> dict:
    import numpy as np
    import fiftyone as fo

    from curation.datasets import now_iso, update_curation_info
    from curation.models import resolve_model

    timings = {}
    started = time.perf_counter()
    images = work_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    demo = sorted(DEMO.glob("*/*.png"))
    classes = sorted({path.parent.name for path in demo})
    linked = []
    for index, source in enumerate(demo):  # one link per demo image, reused round-robin
        target = images / f"{index:05d}_{source.name}"
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                target.write_bytes(source.read_bytes())
        linked.append((str(target), source.parent.name))
    rng = np.random.default_rng(seed)
    if fo.dataset_exists(DATASET):
        fo.delete_dataset(DATASET)
    dataset = fo.Dataset(DATASET, persistent=True)
    dataset.add_samples(fo.Sample(filepath=linked[i % len(linked)][0]) for i in range(size))
    labels = [linked[i % len(linked)][1] for i in range(size)]
    noisy = rng.random(size) < 0.05  # some wrong labels, so the mislabel finder has work
    labels = [classes[rng.integers(len(classes))] if flip else label for label, flip in zip(labels, noisy)]
    dataset.set_values("ground_truth", [fo.Classification(label=label) for label in labels])
    centres = rng.standard_normal((len(classes), 64)).astype(np.float32)
    class_index = {name: i for i, name in enumerate(classes)}
    vectors = centres[[class_index[linked[i % len(linked)][1]] for i in range(size)]] * 0.6
    vectors += rng.standard_normal((size, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dataset.set_values(EMBEDDING_FIELD, list(vectors))
    spec = resolve_model("efficientnet-lite0-imagenet")
    update_curation_info(dataset, embeddings={EMBEDDING_FIELD: {
        "model": spec.name, "model_spec": spec.to_dict(), "requested_model": spec.name,
        "fallback_reason": None, "device": "cpu", "image_size": 224, "crop": 1.0, "flip_tta": False,
        "input_reason": "benchmark: random unit vectors", "updated_at": now_iso(),
    }}, default_embeddings=EMBEDDING_FIELD)
    timings["build_s"] = round(time.perf_counter() - started, 1)
    if finders:
        from curation.analysis import analyze

        started = time.perf_counter()
        analyze(dataset, finders, field=EMBEDDING_FIELD, label_field="ground_truth")
        timings["analyze_s"] = round(time.perf_counter() - started, 1)
    return timings


def time_page(page: str, profile_dir: str | None = None) -> dict:
    """In this (child) process: overview run, switch, first run, rerun."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
    result: dict = {"page": page}
    started = time.perf_counter()
    at.run()
    result["app_s"] = round(time.perf_counter() - started, 2)
    if page != "pages/overview.py":
        at.switch_page(page)
        started = time.perf_counter()
        at.run()
        result["first_s"] = round(time.perf_counter() - started, 2)
    else:
        result["first_s"] = result["app_s"]
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    at.run()
    result["rerun_s"] = round(time.perf_counter() - started, 2)
    if profiler:
        profiler.disable()
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(profile_dir) / (Path(page).stem + ".prof")))
    result["exceptions"] = [str(e.value)[:200] for e in at.exception]
    result["errors"] = [str(e.value)[:200] for e in at.error]
    result["peak_rss_mib"] = round(peak_rss_mib() or 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--pages", default="", help="comma-separated page files (default: every page in app.py)")
    parser.add_argument("--finders", default=DEFAULT_FINDERS, help="finders analyze runs ('' for none)")
    parser.add_argument("--work-dir", default=None, help="keep the database here and reuse it if built")
    parser.add_argument("--uri", default=None,
                        help="use the dataset already built in this running database (a mongod URI) instead of starting one")
    parser.add_argument("--profile", default=None, help="write a cProfile of each rerun into this folder")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child-page", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_page:  # the database is already named by the parent's environment
        print(json.dumps(time_page(args.child_page, args.profile)))
        return

    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-pages-"))
    sys.path.insert(0, str(ROOT))
    import curation  # noqa: F401
    from curation.database import start_private_mongod

    if args.uri:  # e.g. a second run beside a first that still holds work_dir's database
        os.environ["FIFTYONE_DATABASE_URI"] = args.uri
        mongod = None
    else:
        mongod = start_private_mongod(work_dir)
    try:
        marker = work_dir / f"built-{args.size}.json"
        if args.uri:
            timings = json.loads(marker.read_text()) if marker.exists() else {}
        elif marker.exists():
            timings = json.loads(marker.read_text())
        else:
            timings = build_dataset(args.size, work_dir, [f for f in args.finders.split(",") if f])
            marker.write_text(json.dumps(timings))
        print(f"dataset: {args.size} samples, {timings}", flush=True)
        pages = [p for p in args.pages.split(",") if p] or navigation_pages()
        env = dict(os.environ, CURATION_DATASET=DATASET, CURATION_NO_DEMO="1",
                   CURATION_CACHE_DIR=str(work_dir / "cache"), PYTHONPATH=str(ROOT))
        rows = []
        for page in pages:
            command = [sys.executable, __file__, "--child-page", page] + (["--profile", args.profile] if args.profile else [])
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"page": page, "failed": done.stderr[-500:]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(f"\n{'page':28} {'first s':>8} {'rerun s':>8} {'peak RSS MiB':>13}")
        for row in rows:
            print(f"{row['page']:28} {row.get('first_s', '-'):>8} {row.get('rerun_s', '-'):>8} {row.get('peak_rss_mib', '-'):>13}"
                  + (f"  exceptions: {row['exceptions']}" if row.get("exceptions") else ""))
        if args.json:
            Path(args.json).write_text(json.dumps({"size": args.size, "finders": args.finders, "dataset": timings,
                                                   "cores": os.cpu_count(), "pages": rows}, indent=2))
    finally:
        if mongod is not None:
            mongod.terminate()
            mongod.wait(timeout=30)


if __name__ == "__main__":
    main()
