"""The pixel model (a small CNN, issue 9 section 2) vs the frozen-feature classifier.

Data: the Fashion-MNIST and MNIST test sets (10,000 28x28 grey images each) from
``../shared/datasets``, with the cached EfficientNet-Lite0 embeddings of
``benchmarks/bench_mislabels.py`` (embedded there on first use).

1. ``sweep`` (choices, Fashion-MNIST, 20 % uniform flips, flip seed 101): for a few network
   widths, epoch counts and shift augmentations, the CNN is trained on the inner training
   part of outer fold 0 (the same split ``compute_out_of_fold_predictions`` uses) and scored
   by its temperature-scaled log loss on the inner hold-out quarter (noisy labels: what
   inner cross-validation can see). The lowest loss fixed ``WIDTHS``, ``TARGET_STEPS`` and
   ``SHIFT`` in ``curation/finders/pixel_classifier.py``; the outer-fold accuracy against
   the true labels and the flip AP are printed for information only.
2. ``report``: Fashion-MNIST 20 % flips with seed 101 (the choice set) and seed 0 (a new draw),
   and MNIST with the 15 validated label errors of Northcutt et al. (2021), never used to
   choose anything. For each: out-of-fold accuracy and log loss of the embedding model alone
   (``pixels=None``, the product before this change), of the CNN alone (its temperature-
   scaled out-of-fold predictions, collected from the same run) and of what the per-fold
   choice used; the ranking by 1 - self-confidence (hits in the top 15 / 50 / 100 and AP of
   the validated errors on MNIST; AP of the flips on Fashion-MNIST); the CNN's wall time.

    nice .venv/bin/python benchmarks/bench_pixel_classifier.py --stages sweep --json /tmp/sweep.json
    nice .venv/bin/python benchmarks/bench_pixel_classifier.py --stages report \\
        --json benchmarks/results/bench_pixel_classifier.json --markdown benchmarks/results/bench_pixel_classifier.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_mislabels import (  # noqa: E402  (the same data, flips, embeddings and metrics)
    CALIBRATION_SEED, DEFAULT_DATA_DIR, REPORT_SEED, embed_idx_images, flip_labels, ranking_metrics,
)

logger = logging.getLogger("bench_pixel_classifier")
NOISE = 0.2
SWEEP = {  # name -> (widths, head, epochs at 6,000 images, shift); run in two rounds (--sweep-configs)
    # round 1: the architecture at 15 epochs, shifts of 2 px
    "16-32-64 gap 15ep": ((16, 32, 64), "gap", 15, 2),
    "16-32-64 gap 8ep": ((16, 32, 64), "gap", 8, 2),
    "16-32-64 gap 25ep": ((16, 32, 64), "gap", 25, 2),
    "32-64-128 gap 15ep": ((32, 64, 128), "gap", 15, 2),
    "16-32-64 flatten 15ep": ((16, 32, 64), "flatten", 15, 2),
    "32-64-64 flatten 15ep": ((32, 64, 64), "flatten", 15, 2),
    # round 2: epochs and augmentation for the best of round 1
    "16-32-64 flatten 8ep": ((16, 32, 64), "flatten", 8, 2),
    "16-32-64 flatten 25ep": ((16, 32, 64), "flatten", 25, 2),
    "16-32-64 flatten 15ep noshift": ((16, 32, 64), "flatten", 15, 0),
    "32-64-64 flatten 8ep": ((32, 64, 64), "flatten", 8, 2),
    "32-64-64 flatten 25ep": ((32, 64, 64), "flatten", 25, 2),
    "32-64-64 flatten 15ep noshift": ((32, 64, 64), "flatten", 15, 0),
}


def load_sets(data_dir: Path, limit: int | None = None) -> dict:
    from curation.idx import FASHION_MNIST_CLASSES, read_idx

    mnist_dir, fashion_dir = data_dir / "mnist-test", data_dir / "fashion-mnist"
    needed = {"mnist_images": mnist_dir / "t10k-images-idx3-ubyte.gz", "mnist_labels": mnist_dir / "t10k-labels-idx1-ubyte.gz",
              "mnist_errors": mnist_dir / "label_errors_mnist_test.csv",
              "fashion_images": fashion_dir / "t10k-images-idx3-ubyte.gz",
              "fashion_labels": fashion_dir / "t10k-labels-idx1-ubyte.gz"}
    missing = [str(path) for path in needed.values() if not path.exists()]
    if missing:
        return {"missing": missing}
    cut = slice(None, limit)  # --limit: a smoke test of the script, never reported
    return {
        "fashion": {"pixels": read_idx(needed["fashion_images"])[cut],
                    "labels": read_idx(needed["fashion_labels"]).astype(np.int64)[cut],
                    "embeddings": embed_idx_images(needed["fashion_images"])[cut], "names": list(FASHION_MNIST_CLASSES)},
        "mnist": {"pixels": read_idx(needed["mnist_images"])[cut], "labels": read_idx(needed["mnist_labels"]).astype(np.int64)[cut],
                  "embeddings": embed_idx_images(needed["mnist_images"])[cut], "names": [str(d) for d in range(10)],
                  "errors_csv": needed["mnist_errors"]},
    }


def noisy_fashion(data: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    noisy, flipped = flip_labels(data["labels"], NOISE, seed, len(data["names"]))
    return np.array(data["names"], dtype=object)[noisy], flipped


def mnist_truth(data: dict) -> np.ndarray:
    import pandas as pd

    listed = pd.read_csv(data["errors_csv"])
    truth = np.zeros(len(data["labels"]), dtype=bool)
    listed = listed[listed["index"] < len(truth)]
    truth[listed.loc[listed["validated_error"] == 1, "index"].to_numpy()] = True
    return truth


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# ----------------------------------------------------------------------------------------
# 1. The sweep (choices on Fashion-MNIST flips, seed 101)
# ----------------------------------------------------------------------------------------

def sweep(data: dict, names: list[str], folds_to_run: int = 1) -> list[dict]:
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold

    from curation.finders import classifier, pixel_classifier

    given, flipped = noisy_fashion(data, CALIBRATION_SEED)
    classes = sorted(set(given))
    y = np.array([classes.index(name) for name in given])
    true_y = np.array([classes.index(data["names"][value]) for value in data["labels"]])
    images = pixel_classifier.as_pixel_images(data["pixels"])
    splits = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    rows = []
    for name in names:
        widths, head, epochs, shift = SWEEP[name]
        scores = []
        for fold, (train, test) in enumerate(splits[:folds_to_run]):
            inner_train, inner_test = classifier._Selector._holdout(SimpleNamespace(seed=0), fold, train, y, full=True)
            started = time.perf_counter()
            (inner, outer), info = pixel_classifier.train_and_predict(
                images, y, inner_train, [inner_test, test], len(classes), seed=fold, epochs=epochs, widths=widths,
                shift=shift, head=head)
            temperature, loss = classifier.fit_temperature(inner, y[inner_test])
            outer = classifier.apply_temperature(outer, temperature)
            scores.append({
                "inner_log_loss": loss, "inner_accuracy_vs_given": float((inner.argmax(1) == y[inner_test]).mean()),
                "outer_accuracy_vs_true": float((outer.argmax(1) == true_y[test]).mean()),
                "outer_flip_ap": float(average_precision_score(flipped[test], 1 - outer[np.arange(len(test)), y[test]])),
                "seconds": time.perf_counter() - started,
            })
        row = {"name": name, "widths": list(widths), "head": head, "epochs": epochs, "shift": shift, "folds": folds_to_run,
               **{key: round(float(np.mean([score[key] for score in scores])), 4) for key in scores[0]},
               "load_average": load_average()}
        rows.append(row)
        logger.info("sweep %s", row)
    return rows


# ----------------------------------------------------------------------------------------
# 2. The report
# ----------------------------------------------------------------------------------------

def evaluate(probabilities: np.ndarray, given: np.ndarray, truth: np.ndarray, true_y: np.ndarray | None) -> dict:
    from curation.finders.classifier import log_loss

    self_confidence = probabilities[np.arange(len(given)), given]
    row = {"accuracy_vs_given": round(float((probabilities.argmax(1) == given).mean()), 4),
           "log_loss_vs_given": round(log_loss(probabilities, given), 4)}
    if true_y is not None:
        row["accuracy_vs_true"] = round(float((probabilities.argmax(1) == true_y).mean()), 4)
    row["ranking"] = ranking_metrics(1.0 - self_confidence, truth)
    return row


def run_set(name: str, embeddings: np.ndarray, pixels: np.ndarray, given_names: np.ndarray, truth: np.ndarray,
            true_y: np.ndarray | None) -> dict:
    """Embedding model alone, then the run with pixels (the CNN alone collected from it)."""
    from curation.finders import pixel_classifier
    from curation.finders.classifier import compute_out_of_fold_predictions

    started = time.perf_counter()
    alone = compute_out_of_fold_predictions(embeddings, given_names, n_folds=5, seed=0)
    embedding_seconds = time.perf_counter() - started
    classes = alone.classes
    given = np.array([classes.index(value) for value in given_names])

    cnn = np.full(alone.pred_probs.shape, np.nan)
    original = pixel_classifier.PixelComparison.fold

    def collecting(self, *args, **kwargs):
        outcome = original(self, *args, **kwargs)
        cnn[outcome.test_rows] = outcome.cnn if outcome.cnn is not None else np.nan
        return outcome

    pixel_classifier.PixelComparison.fold = collecting
    load_before = load_average()
    started = time.perf_counter()
    try:
        mixed = compute_out_of_fold_predictions(embeddings, given_names, n_folds=5, seed=0, pixels=pixels)
    finally:
        pixel_classifier.PixelComparison.fold = original
    total_seconds = time.perf_counter() - started
    pixel_info = mixed.info["pixel_model"]
    assert pixel_info["used"], pixel_info
    # Where the embedding model won, the run must return exactly its prediction.
    for fold_info, weight in zip(pixel_info["folds"], pixel_info["cnn_weight_per_fold"]):
        assert (weight == 0) == (fold_info["chosen"] == "embedding")
    report = {
        "set": name,
        "embedding_model": {**evaluate(alone.pred_probs, given, truth, true_y), "chosen": alone.info["selection"]["chosen"],
                            "seconds": round(embedding_seconds, 1)},
        "cnn": evaluate(cnn, given, truth, true_y),
        "chosen": {**evaluate(mixed.pred_probs, given, truth, true_y), "per_fold": pixel_info["chosen_per_fold"],
                   "seconds": round(total_seconds, 1)},
        "cnn_seconds": pixel_info["seconds"],
        "cnn_estimated_seconds": pixel_info["estimated_seconds"],
        "cnn_train_seconds_per_fold": [fold["train_seconds"] for fold in pixel_info["folds"]],
        "epochs": pixel_info["folds"][0]["epochs"],
        "mean_inner_log_loss": pixel_info["mean_inner_log_loss"],
        "inner_log_loss_per_fold": [fold["inner_log_loss"] for fold in pixel_info["folds"]],
        "temperature_cnn_per_fold": [fold["temperature_cnn"] for fold in pixel_info["folds"]],
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    logger.info("%s: %s", name, {key: value for key, value in report.items() if key != "inner_log_loss_per_fold"})
    return report


def report(data: dict, sets: tuple[str, ...]) -> list[dict]:
    rows = []
    fashion, mnist = data["fashion"], data["mnist"]
    classes = sorted(fashion["names"])
    true_fashion = np.array([classes.index(fashion["names"][value]) for value in fashion["labels"]])
    for seed, label in ((CALIBRATION_SEED, "fashion-101"), (REPORT_SEED, "fashion-0")):
        if label not in sets:
            continue
        given_names, flipped = noisy_fashion(fashion, seed)
        rows.append(run_set(f"Fashion-MNIST, 20 % flips, seed {seed}" + (" (choices)" if seed == CALIBRATION_SEED else ""),
                            fashion["embeddings"], fashion["pixels"], given_names, flipped, true_fashion))
    if "mnist" in sets:
        given_names = np.array(mnist["names"], dtype=object)[mnist["labels"]]
        rows.append(run_set("MNIST, 15 validated errors (transfer check)", mnist["embeddings"], mnist["pixels"],
                            given_names, mnist_truth(mnist), None))
    return rows


def markdown(results: dict) -> str:
    from curation.finders import pixel_classifier

    lines = ["### Pixel model: a small CNN vs the frozen-feature classifier (issue 9 section 2)", "",
             f"{pixel_classifier.describe_network()}. Trained per outer fold on the outer-training samples outside "
             "the selection's inner quarter; the embedding model, the CNN or their mixture (CNN share 0.1 to 0.9), "
             "whichever has the lowest temperature-scaled log loss on that quarter, scores the outer fold. "
             "Architecture, epochs and shift chosen on Fashion-MNIST 20 % flips (seed 101, inner hold-out log loss "
             "of fold 0); MNIST was not used to choose anything. Embeddings: EfficientNet-Lite0 (ImageNet). "
             f"CPU, one torch thread, {results['machine']['cpus']} shared cores.", ""]
    if results.get("sweep"):
        lines += ["| sweep (fold 0, Fashion 20 % flips, seed 101) | inner log loss | inner acc (noisy) | outer acc (true) | outer flip AP | s |",
                  "|---|---|---|---|---|---|"]
        for row in results["sweep"]:
            lines.append(f"| {row['name']} | {row['inner_log_loss']:.4f} | {row['inner_accuracy_vs_given']:.4f} | "
                         f"{row['outer_accuracy_vs_true']:.4f} | {row['outer_flip_ap']:.4f} | {row['seconds']:.0f} |")
        lines.append("")
    for entry in results.get("report", []):
        mnist = entry["set"].startswith("MNIST")
        lines += [f"#### {entry['set']}", "",
                  "| classifier | accuracy | log loss | " + ("top 15 | top 50 | top 100 | AP |" if mnist else "flip AP |"),
                  "|---|---|---|" + ("---|---|---|---|" if mnist else "---|")]
        for key, title in (("embedding_model", "embedding model alone (before)"), ("cnn", "CNN alone"),
                           ("chosen", "per-fold choice (new default)")):
            row = entry[key]
            accuracy = row.get("accuracy_vs_true", row["accuracy_vs_given"])
            ranking = row["ranking"]
            tail = (f"{ranking['top15']} | {ranking['top50']} | {ranking['top100']} | {ranking['average_precision']:.4f} |"
                    if mnist else f"{ranking['average_precision']:.4f} |")
            lines.append(f"| {title} | {accuracy:.4f} | {row['log_loss_vs_given']:.4f} | {tail}")
        losses = entry["mean_inner_log_loss"]
        if mnist:
            before, after = entry["embedding_model"]["ranking"], entry["chosen"]["ranking"]
            lines += ["", f"{after['top100']} of the 15 validated errors in the top 100 (before: {before['top100']}); "
                      f"AP {after['average_precision']:.3f} (before: {before['average_precision']:.3f})."]
        lines += ["", f"Accuracy {'against the given labels' if mnist else 'against the true labels'}, log loss against "
                  f"the given labels. Chosen per fold: {', '.join(entry['chosen']['per_fold'])}; mean inner log loss: "
                  f"embedding {losses['embedding']}, CNN {losses['cnn']}, best mixture {losses['best_blend']}. "
                  f"CNN: {entry['epochs']} epochs, {entry['cnn_seconds']:.0f} s wall for 5 folds (estimated "
                  f"{entry['cnn_estimated_seconds']:.0f} s; embedding model alone {entry['embedding_model']['seconds']:.0f} s); "
                  f"load average {entry['load_average_before'][0]} before, {entry['load_average_after'][0]} after.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--stages", default="sweep,report", help="comma-separated: sweep, report")
    parser.add_argument("--sets", default="fashion-101,fashion-0,mnist", help="report sets: fashion-101, fashion-0, mnist")
    parser.add_argument("--sweep-folds", type=int, default=1)
    parser.add_argument("--sweep-configs", default=",".join(SWEEP), help="comma-separated names of SWEEP")
    parser.add_argument("--sweep-from", type=Path, help="a JSON of earlier sweep rows to keep (rounds)")
    parser.add_argument("--limit", type=int, help="first N images of each set (a smoke test, not for reporting)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--render", type=Path, help="only write --markdown from this earlier --json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render:
        text = markdown(json.loads(args.render.read_text()))
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return 0
    data = load_sets(args.data_dir, args.limit)
    if "missing" in data:
        print(f"bench_pixel_classifier: skipped, the real datasets are absent: {', '.join(data['missing'])}")
        return 0
    import torch

    from curation.finders import pixel_classifier

    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                 "torch": torch.__version__, "device": pixel_classifier.device_name(),
                                 "threads": pixel_classifier.default_threads()},
                     "noise": NOISE, "load_average_start": load_average()}
    stages = set(args.stages.split(","))
    started = time.perf_counter()
    earlier = json.loads(args.sweep_from.read_text())["sweep"] if args.sweep_from else []
    if earlier or "sweep" in stages:
        results["sweep"] = earlier + (sweep(data["fashion"], args.sweep_configs.split(","), args.sweep_folds)
                                      if "sweep" in stages else [])
    if "report" in stages:
        results["report"] = report(data, tuple(args.sets.split(",")))
        if args.limit:
            results["limit"] = args.limit
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average_end"] = load_average()
    text = markdown(results)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
