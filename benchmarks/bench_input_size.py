"""Embedding input size and flip test-time augmentation on 28 px data (issue 9, section 2).

Question: tiny images (28-32 px) are blown up to the model's native size (224 px for
EfficientNet-Lite0) before embedding. Does that help, or does a smaller input (96, 128,
160 px) embed them as well or better, and faster? Does the old preprocess (shorter side to
256, centre crop 224: 12.5% of the border cut) hurt small centred images? Does flip TTA
(the normalised mean of an image's and its mirror's embedding) help? Is EfficientNet-Lite2
(native 260 px) measurably better than Lite0, and at what cost?

Data (``../shared/datasets``, see its README): the MNIST test set (10,000 digits, 15
validated label errors) and the first ``--fashion-limit`` (default 3,000) Fashion-MNIST test
images, grayscale 28 x 28, converted to RGB PIL images. Each config embeds them with the
library's :class:`~curation.models.Embedder` (``embedder.preprocess`` + ``encode_images``),
and also their mirrors (``batch.flip(-1)``, what flip TTA does), so the TTA embedding of every
config costs nothing more to measure: ``normalize(normalize(f) + normalize(f_mirror))``, checked
against ``encode_images`` with ``flip_tta=True`` on the first batch. Vectors are cached as
``.npy`` under ``$CURATION_CACHE_DIR/bench/input_size`` (default ``~/.cache/curation/...``),
in resumable chunks; reruns only evaluate.

Quality: the library's out-of-fold linear probe
(:func:`curation.finders.classifier.compute_out_of_fold_predictions`, defaults: settings
chosen per dataset) on the true labels: accuracy and log loss; Fashion-MNIST with 20% of its
labels flipped uniformly to another class (seed 0): average precision of
``1 - self-confidence`` for the flipped ones; MNIST, given labels: hits of the 15 validated
errors in the top 15 / 50 / 100 of ``1 - self-confidence``, and its average precision.

Cost: images per CPU-second of ``preprocess`` + ``encode_images``, one torch thread, measured
back to back in one process (``--stages speed``), config after config in 3 rounds (median);
CPU time because the machine is shared (wall time would count other processes' turns). The
ratios between configs are what counts (load average noted).

    .venv/bin/python benchmarks/bench_input_size.py --json benchmarks/results/bench_input_size.json \\
        --markdown benchmarks/results/bench_input_size.md
    # embed first, one process per data set, one torch thread each:
    nice .venv/bin/python benchmarks/bench_input_size.py --stages embed --datasets mnist &
    nice .venv/bin/python benchmarks/bench_input_size.py --stages embed --datasets fashion &
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets"
MODELS = {"lite0": "efficientnet-lite0-imagenet", "lite2": "efficientnet-lite2-imagenet"}
# (model, input size, crop), in the order they are embedded (most informative first).
# crop 0.875 at 224 is the preprocess every embedding used before input sizes existed.
# "+flip": also embed the mirrors, for the flip-TTA rows. What fitted in the hour's budget on
# a shared 2-core CPU: Lite2 at 260 px (native) and at 160 px on MNIST, and the mirrors of
# the larger sizes, were dropped for time.
CONFIGS = {
    "fashion": ("lite0@224/0.875", "lite0@128+flip", "lite0@96+flip", "lite2@128+flip", "lite0@224", "lite0@160",
                "lite2@160"),
    "mnist": ("lite0@224/0.875", "lite0@128+flip", "lite0@96", "lite2@128", "lite0@160", "lite0@224"),
}
EMBED_BATCH = 50
EMBED_CHUNK = 500
NOISE_RATE = 0.2
FLIP_SEED = 0
SPEED_IMAGES = 96
TTA_SPEED = {("lite0", 128), ("lite0", 224)}

REPRODUCE = (".venv/bin/python benchmarks/bench_input_size.py --json benchmarks/results/bench_input_size.json "
             "--markdown benchmarks/results/bench_input_size.md")

logger = logging.getLogger("bench_input_size")


def config_name(model: str, size: int, crop: float) -> str:
    return f"{model}@{size}" + ("" if crop == 1.0 else f" crop {crop:g}")


def parse_config(text: str) -> tuple[str, int, float, bool]:
    """``lite0@128+flip`` or ``lite0@224/0.875`` -> ("lite0", 128, 1.0, True): model, size, crop, also mirrors."""
    text, flip = (text[:-5], True) if text.endswith("+flip") else (text, False)
    model, _, rest = text.partition("@")
    size, _, crop = rest.partition("/")
    return model, int(size), float(crop or 1.0), flip


def cache_dir() -> Path:
    from curation.paths import cache_dir as root

    path = root() / "bench" / "input_size"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_data(name: str, data_dir: Path, fashion_limit: int) -> dict:
    from curation.idx import read_idx

    folder = data_dir / ("mnist-test" if name == "mnist" else "fashion-mnist")
    images_path = folder / "t10k-images-idx3-ubyte.gz"
    limit = None if name == "mnist" else fashion_limit
    pixels = read_idx(images_path)[:limit]
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)[:limit]
    digest = hashlib.sha1(images_path.read_bytes()).hexdigest()[:12]
    data = {"name": name, "pixels": pixels, "labels": labels, "key": f"{name}-{digest}-{len(pixels)}"}
    if name == "mnist":
        import pandas as pd

        listed = pd.read_csv(folder / "label_errors_mnist_test.csv")
        truth = np.zeros(len(labels), dtype=bool)
        truth[listed.loc[listed["validated_error"] == 1, "index"].to_numpy()] = True
        data["validated"] = truth
    return data


def legacy_cache(data: dict) -> Path:
    """Where bench_mislabels.py cached the same images embedded with the old preprocess (Lite0, crop 224)."""
    name, digest, count = data["key"].split("-")
    full = {"mnist": 10000, "fashion": 10000}[name]
    return cache_dir().parent / f"t10k-images-idx3-ubyte-{digest}-efficientnet-lite0-imagenet-{'all' if int(count) == full else count}.npy"


def embed(data: dict, model: str, size: int, crop: float, mirror: bool = False) -> tuple[np.ndarray, dict]:
    """(N, D) L2-normalised embeddings of the images (or of their mirrors), cached.

    The mirror of an image is ``batch.flip(-1)`` of its preprocessed tensor, what flip TTA
    encodes; the first batch checks that ``normalize(plain + mirror)`` is what
    ``encode_images`` returns with ``flip_tta=True``.
    """
    import torch
    from PIL import Image

    from curation.models import load_embedder

    key = f"{data['key']}-{model}-{size}-{crop:g}" + ("-mirror" if mirror else "")
    target, meta_path = cache_dir() / f"{key}.npy", cache_dir() / f"{key}.json"
    if target.exists():
        return np.load(target), json.loads(meta_path.read_text()) if meta_path.exists() else {}
    embedder = load_embedder(MODELS[model], device="cpu", allow_fallback=False, image_size=size, crop=crop)
    pixels = data["pixels"]
    meta: dict = {}

    def batch_of(start: int, stop: int):
        batch = torch.stack([embedder.preprocess(Image.fromarray(image).convert("RGB")) for image in pixels[start:stop]])
        return batch.flip(-1) if mirror else batch

    if not mirror and (model, size, crop) == ("lite0", 224, 0.875) and legacy_cache(data).exists():
        legacy = np.load(legacy_cache(data))
        check = embedder.encode_images(batch_of(0, 8))
        if len(legacy) == len(pixels) and np.abs(legacy[:8] - check).max() < 1e-4:
            np.save(target, legacy)
            meta = {"reused": str(legacy_cache(data)), "check_max_abs_error": float(np.abs(legacy[:8] - check).max())}
            meta_path.write_text(json.dumps(meta))
            return legacy, meta
    if mirror:
        plain, _ = embed(data, model, size, crop)  # the check below needs it; normally cached already
        tta = embedder.with_input(flip_tta=True)
        combined = plain[:8] + embedder.encode_images(batch_of(0, 8))
        combined /= np.linalg.norm(combined, axis=1, keepdims=True)
        meta["tta_check_max_abs_error"] = float(np.abs(tta.encode_images(batch_of(0, 8).flip(-1)) - combined).max())
    chunk_dir = cache_dir() / f"{key}.chunks"
    chunk_dir.mkdir(exist_ok=True)
    chunks = []
    seconds = cpu_seconds = 0.0
    embedded = 0
    for chunk_start in range(0, len(pixels), EMBED_CHUNK):
        chunk_path = chunk_dir / f"{chunk_start:06d}.npy"
        if chunk_path.exists():
            chunks.append(np.load(chunk_path))
            continue
        started, cpu_started = time.perf_counter(), time.process_time()
        stop = min(chunk_start + EMBED_CHUNK, len(pixels))
        vectors = [embedder.encode_images(batch_of(start, min(start + EMBED_BATCH, stop)))
                   for start in range(chunk_start, stop, EMBED_BATCH)]
        seconds += time.perf_counter() - started
        cpu_seconds += time.process_time() - cpu_started
        chunks.append(np.concatenate(vectors))
        embedded += len(chunks[-1])
        np.save(chunk_dir / "partial.npy", chunks[-1])
        (chunk_dir / "partial.npy").replace(chunk_path)
        logger.info("%s %s%s: %d/%d (%.0f s)", data["name"], config_name(model, size, crop), " mirror" if mirror else "",
                    stop, len(pixels), seconds)
    meta.update({"embedded_here": embedded, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                 "images_per_s": round(embedded / seconds, 2) if seconds else None,
                 "load_average_after": round(os.getloadavg()[0], 2)})
    matrix = np.concatenate(chunks)
    np.save(chunk_dir / "all.npy", matrix)
    (chunk_dir / "all.npy").replace(target)
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(chunk_dir, ignore_errors=True)
    return matrix, meta


def flip_tta(plain: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    combined = plain + mirrored
    return (combined / np.linalg.norm(combined, axis=1, keepdims=True)).astype(np.float32)


def quality(embeddings: np.ndarray, data: dict) -> dict:
    from sklearn.metrics import average_precision_score

    from bench_mislabels import flip_labels, ranking_metrics
    from curation.finders.classifier import compute_out_of_fold_predictions

    labels = data["labels"]
    started = time.perf_counter()
    result = compute_out_of_fold_predictions(embeddings, labels.astype(str))
    classes = np.array([int(name) for name in result.classes])
    given = np.searchsorted(classes, labels)
    probabilities = np.clip(result.pred_probs, 1e-12, 1.0)
    self_confidence = probabilities[np.arange(len(labels)), given]
    row = {"accuracy": round(float((classes[probabilities.argmax(axis=1)] == labels).mean()), 4),
           "log_loss": round(float(-np.log(self_confidence).mean()), 4),
           "chosen": {key: result.info.get(key) for key in ("dimensions", "C", "method", "temperature") if key in result.info}}
    if data["name"] == "mnist":
        row["validated_errors"] = ranking_metrics(1.0 - self_confidence, data["validated"])
    else:
        noisy, flipped = flip_labels(labels, NOISE_RATE, FLIP_SEED, 10)
        noisy_result = compute_out_of_fold_predictions(embeddings, noisy.astype(str))
        noisy_classes = np.array([int(name) for name in noisy_result.classes])
        noisy_given = np.searchsorted(noisy_classes, noisy)
        noisy_confidence = noisy_result.pred_probs[np.arange(len(noisy)), noisy_given]
        row["flip20_average_precision"] = round(float(average_precision_score(flipped, 1.0 - noisy_confidence)), 4)
    row["probe_seconds"] = round(time.perf_counter() - started, 1)
    return row


def speed(configs, data: dict, rounds: int = 3) -> dict:
    """Images per CPU-second of preprocess + encode_images, one torch thread, configs interleaved
    in rounds (median over rounds). CPU time, not wall time: on a shared machine the wall clock
    also counts the time other processes hold the cores; per-image CPU time does not."""
    import torch
    from PIL import Image

    from curation.models import load_embedder

    torch.set_num_threads(1)
    images = [Image.fromarray(image).convert("RGB") for image in data["pixels"][:SPEED_IMAGES]]
    embedders = {}
    for model, size, crop in configs:
        base = load_embedder(MODELS[model], device="cpu", allow_fallback=False, image_size=size, crop=crop)
        embedders[(model, size, crop, False)] = base
        if (model, size) in TTA_SPEED:  # flip TTA costs the same 2x everywhere: timed on two sizes
            embedders[(model, size, crop, True)] = base.with_input(flip_tta=True)
    timings: dict[tuple, list[float]] = {key: [] for key in embedders}
    for _ in range(rounds):
        for key, embedder in embedders.items():
            embedder.encode_images(torch.stack([embedder.preprocess(image) for image in images[:8]]))  # warm-up
            started = time.process_time()
            for start in range(0, len(images), 32):
                embedder.encode_images(torch.stack([embedder.preprocess(image) for image in images[start:start + 32]]))
            timings[key].append(len(images) / (time.process_time() - started))
    return {f"{config_name(*key[:3])}{' +flip' if key[3] else ''}": round(float(np.median(values)), 1)
            for key, values in timings.items()}


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [
        "## bench_input_size.py: input size and flip TTA for small images (EfficientNet-Lite0 / Lite2)",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Data: MNIST test set ({report['datasets'].get('mnist', {}).get('images', '-')} digits, "
        f"{report['datasets'].get('mnist', {}).get('validated_errors', '-')} validated label errors) and the first "
        f"{report['datasets'].get('fashion', {}).get('images', '-')} Fashion-MNIST test images, 28 x 28 grayscale as RGB. "
        "Linear probe: `compute_out_of_fold_predictions` with its defaults (settings chosen per data set). "
        "Fashion AP: average precision of 1 - self-confidence for 20% labels flipped uniformly (seed 0). "
        "MNIST hits: validated errors in the top 15 / 50 / 100 of 1 - self-confidence (given labels). "
        "img/s: images per CPU-second of `preprocess` + `encode_images`, one torch thread, configs interleaved "
        "in one process, median of 3 rounds "
        f"(load average {report.get('load_average', '-')}; shared 2-core machine, so compare ratios). "
        "`crop 0.875` is the preprocess used before this change (shorter side 256, centre 224); "
        "the others resize the whole 28 px image to the size. `+flip`: flip TTA (embedding of image and mirror, averaged); "
        "`~`: TTA timed at 128 and 224 px only, the others estimated with the 128 px slowdown. `-`: not measured (time).",
        "",
        "| config | img/s | relative cost | Fashion acc | Fashion log loss | Fashion flip AP | MNIST acc | MNIST log loss | MNIST top 15 / 50 / 100 | MNIST AP |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    reference = report.get("speed", {}).get("lite0@224 crop 0.875")
    for row in rows:
        fashion, mnist = row.get("fashion", {}), row.get("mnist", {})
        rate = report.get("speed", {}).get(row["config"])
        shown = rate
        if rate is None and row["flip_tta"] and report.get("speed", {}).get(row["config"].removesuffix(" +flip")):
            # TTA was timed at two sizes: the others get the 128 px slowdown (marked ~).
            timed = report["speed"]
            slowdown = timed["lite0@128"] / timed["lite0@128 +flip"] if "lite0@128 +flip" in timed else 2.0
            rate = timed[row["config"].removesuffix(" +flip")] / slowdown
            shown = f"~{rate:.1f}"
        cost = f"{reference / rate:.2f}" if rate and reference else "-"
        errors = mnist.get("validated_errors", {})
        hits = f"{errors['top15']} / {errors['top50']} / {errors['top100']}" if errors else "-"
        lines.append(
            f"| {row['config']} | {shown if shown else '-'} | {cost} | {fashion.get('accuracy', '-')} | {fashion.get('log_loss', '-')} | "
            f"{fashion.get('flip20_average_precision', '-')} | {mnist.get('accuracy', '-')} | {mnist.get('log_loss', '-')} | "
            f"{hits} | {errors.get('average_precision', '-')} |")
    lines += ["", *report.get("conclusions", [])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion"], choices=["mnist", "fashion"])
    parser.add_argument("--fashion-limit", type=int, default=3000)
    parser.add_argument("--configs", nargs="+", default=None,
                        help="e.g. lite0@128+flip lite0@224/0.875 (default: CONFIGS, per data set)")
    parser.add_argument("--stages", nargs="+", default=["embed", "quality", "speed"], choices=["embed", "quality", "speed"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads while embedding")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    datasets = {name: load_data(name, args.data_dir, args.fashion_limit) for name in args.datasets}
    planned = {name: [parse_config(text) for text in (args.configs or CONFIGS[name])] for name in datasets}
    report = {"command": "", "machine": platform.platform(), "cpus": os.cpu_count(), "datasets": {}, "rows": []}
    for name, data in datasets.items():
        report["datasets"][name] = {"images": len(data["labels"])}
        if "validated" in data:
            report["datasets"][name]["validated_errors"] = int(data["validated"].sum())
    if "embed" in args.stages:
        for name, data in datasets.items():
            for model, size, crop, flip in planned[name]:
                embed(data, model, size, crop)
                if flip:
                    embed(data, model, size, crop, mirror=True)
    every = sorted({config[:3] for name in planned for config in planned[name]}, key=lambda c: (c[0], c[1], c[2]))
    if "quality" in args.stages:
        for model, size, crop in every:
            for tta in (False, True):
                row = {"config": config_name(model, size, crop) + (" +flip" if tta else ""), "model": MODELS[model],
                       "image_size": size, "crop": crop, "flip_tta": tta}
                for name, data in datasets.items():
                    key = f"{data['key']}-{model}-{size}-{crop:g}"
                    if not (cache_dir() / f"{key}{'-mirror' if tta else ''}.npy").exists():
                        continue
                    plain, meta = embed(data, model, size, crop)
                    if tta:
                        mirrored, meta = embed(data, model, size, crop, mirror=True)
                        plain = flip_tta(plain, mirrored)
                    # The probe's figures are cached beside the vectors (keyed by their content).
                    digest = hashlib.sha1(plain.tobytes()).hexdigest()[:12]
                    stored = cache_dir() / f"{key}{'-tta' if tta else ''}-quality-{digest}.json"
                    if stored.exists():
                        row[name] = json.loads(stored.read_text())
                    else:
                        row[name] = quality(plain, data)
                        stored.write_text(json.dumps(row[name]))
                    row[name]["embedding_run"] = meta
                    logger.info("%s %s: %s", row["config"], name, {k: v for k, v in row[name].items() if k != "embedding_run"})
                if any(name in row for name in datasets):
                    report["rows"].append(row)
    if "speed" in args.stages:
        first = next(iter(datasets.values()))
        report["load_average_before_speed"] = round(os.getloadavg()[0], 2)
        report["speed"] = speed(every, first)
        report["load_average"] = f"{report['load_average_before_speed']} -> {os.getloadavg()[0]:.2f}"
        logger.info("speed: %s", report["speed"])
    report["command"] = REPRODUCE
    report["invocation"] = ".venv/bin/python benchmarks/bench_input_size.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        previous = json.loads(args.json.read_text()) if args.json.exists() else {}
        for key in ("speed", "load_average", "load_average_before_speed"):
            if key not in report and key in previous:
                report[key] = previous[key]
        if not report["rows"] and previous.get("rows"):
            report["rows"] = previous["rows"]
        report["conclusions"] = previous.get("conclusions", [])
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
