"""Consensus and annotator-quality benchmark: Fashion-MNIST with simulated annotators.

The 10,000 test images, 3 votes each from a pool of simulated annotators of known quality:
honest ones whose mistakes follow the classes people confuse (the off-diagonal rows of the
out-of-fold classifier's confusion matrix on the true labels) and 2 spammers who answer at
random; two pools (``SCENARIOS``): 8 honest annotators of well-spread accuracy, and 12 only
0.025 apart. For majority vote, Dawid-Skene and CROWDLAB (cleanlab, out-of-fold probabilities
from the project's classifier on cached EfficientNet-Lite0 embeddings): consensus accuracy
against the true labels and the Spearman rank correlation between estimated and true annotator
accuracy. Several seeds.

    nice .venv/bin/python benchmarks/bench_annotators.py [--limit N] [--seeds 3]

Writes benchmarks/results/bench_annotators.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT.parent / "shared" / "datasets" / "fashion-mnist"
RESULTS = ROOT / "benchmarks" / "results"
SCENARIOS = {
    # 8 honest annotators of well-spread accuracy and 2 random spammers
    "spread": ((0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5), 2),
    # 12 honest annotators 0.025 apart (a harder ranking) and 2 random spammers
    "close": (tuple(round(0.9 - 0.025 * i, 3) for i in range(12)), 2),
}
VOTES_PER_IMAGE = 3


def simulate(truth: np.ndarray, confusion: np.ndarray, rng, honest, spammers) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(N, A) votes (-1 = none), annotator names, their true accuracy on what they labelled."""
    k = confusion.shape[0]
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    off = off + 1e-3 * (1 - np.eye(k))
    off /= off.sum(axis=1, keepdims=True)
    names = [f"honest-{q:.3f}" for q in honest] + [f"spammer-{i + 1}" for i in range(spammers)]
    n, a_count = len(truth), len(names)
    matrix = np.full((n, a_count), -1, dtype=np.int64)
    for i in range(n):
        for a in rng.choice(a_count, VOTES_PER_IMAGE, replace=False):
            if a >= len(honest):
                matrix[i, a] = rng.integers(k)
            elif rng.random() < honest[a]:
                matrix[i, a] = truth[i]
            else:
                matrix[i, a] = rng.choice(k, p=off[truth[i]])
    accuracy = np.array([(matrix[matrix[:, a] >= 0, a] == truth[matrix[:, a] >= 0]).mean() for a in range(a_count)])
    return matrix, names, accuracy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    from scipy.stats import spearmanr

    from bench_mislabels import embed_idx_images
    from curation.annotators import Votes, crowdlab, dawid_skene, majority_vote
    from curation.finders.classifier import compute_out_of_fold_predictions
    from curation.idx import FASHION_MNIST_CLASSES, read_idx

    classes = list(FASHION_MNIST_CLASSES)
    truth = read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    embeddings = embed_idx_images(DATA / "t10k-images-idx3-ubyte.gz", limit=args.limit)
    truth = truth[: len(embeddings)]
    oof_settings = {"C": 0.1, "dimensions": 128}
    started = time.perf_counter()
    # The confusion people make, from the classifier's out-of-fold predictions on the truth.
    clean = compute_out_of_fold_predictions(embeddings, [classes[t] for t in truth], **oof_settings)
    order = [clean.classes.index(c) for c in classes]
    predicted = clean.pred_probs[:, order].argmax(axis=1)
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (truth, predicted), 1)
    methods = ("majority", "dawid-skene", "crowdlab")
    scenarios = {}
    for scenario, (honest, spammers) in SCENARIOS.items():
        runs = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            matrix, names, true_quality = simulate(truth, confusion, rng, honest, spammers)
            votes = Votes([str(i) for i in range(len(truth))], names, classes, matrix)
            row = {"seed": seed, "true_quality": dict(zip(names, map(float, true_quality)))}
            results = {"majority": majority_vote(votes, seed=seed), "dawid-skene": dawid_skene(votes)}
            t0 = time.perf_counter()
            oof = compute_out_of_fold_predictions(embeddings, results["majority"].labels, seed=seed, **oof_settings)
            results["crowdlab"] = crowdlab(votes, oof.pred_probs, oof.classes)
            row["crowdlab_seconds"] = time.perf_counter() - t0
            for method, result in results.items():
                accuracy = float(np.mean(np.array(result.labels) == np.array([classes[t] for t in truth])))
                estimated = [result.annotator_quality[name] for name in names]
                rho = float(spearmanr(estimated, true_quality).statistic)
                row[method] = {"consensus_accuracy": accuracy, "quality_spearman": rho,
                               "estimated_quality": dict(zip(names, map(float, estimated)))}
                print(f"{scenario} seed {seed} {method:12s} accuracy {accuracy:.4f} spearman {rho:.3f}", flush=True)
            runs.append(row)
        summary = {m: {"consensus_accuracy": float(np.mean([r[m]["consensus_accuracy"] for r in runs])),
                       "consensus_accuracy_min": float(np.min([r[m]["consensus_accuracy"] for r in runs])),
                       "quality_spearman": float(np.mean([r[m]["quality_spearman"] for r in runs])),
                       "quality_spearman_min": float(np.min([r[m]["quality_spearman"] for r in runs]))}
                   for m in methods}
        scenarios[scenario] = {"honest_accuracies": list(honest), "spammers": spammers, "summary": summary,
                               "runs": runs}

    def done(summary):
        return {"consensus_beats_majority": min(summary[m]["consensus_accuracy_min"] for m in methods[1:])
                > summary["majority"]["consensus_accuracy"],
                "rank_correlation_at_least_0_8": min(summary[m]["quality_spearman_min"] for m in methods[1:]) >= 0.8}

    report = {
        "dataset": "Fashion-MNIST test set", "n_images": int(len(truth)), "votes_per_image": VOTES_PER_IMAGE,
        "noise": "honest mistakes drawn from the off-diagonal rows of the out-of-fold classifier's confusion matrix; "
                 "spammers answer uniformly at random",
        "embeddings": "efficientnet-lite0-imagenet (cached)", "oof_settings": oof_settings,
        "classifier_accuracy_on_truth": float((predicted == truth).mean()),
        "seeds": args.seeds, "scenarios": scenarios,
        "seconds": time.perf_counter() - started,
        "done_means": {name: done(item["summary"]) for name, item in scenarios.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.limit is None else f"-{args.limit}"
    (RESULTS / f"bench_annotators{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"### Consensus and annotator quality (Fashion-MNIST test, {len(truth):,} images, {VOTES_PER_IMAGE} votes each)",
        "",
        "Simulated annotators: honest ones of known accuracy whose mistakes follow the confusion matrix of the "
        "project's classifier (out-of-fold, on the true labels: the classes people confuse, shirt / T-shirt / "
        "pullover / coat), plus 2 spammers answering at random; each image gets 3 distinct annotators. "
        f"Mean (worst) over {args.seeds} seeds. Spearman: rank correlation of estimated vs true annotator accuracy.",
        "",
        "| annotators | method | consensus accuracy | Spearman |",
        "|---|---|---|---|",
    ]
    for name, item in scenarios.items():
        who = (f"{len(item['honest_accuracies'])} honest ({min(item['honest_accuracies']):.2f}-"
               f"{max(item['honest_accuracies']):.2f}) + {item['spammers']} spammers")
        for m in methods:
            x = item["summary"][m]
            lines.append(f"| {who} | {m} | {x['consensus_accuracy']:.4f} ({x['consensus_accuracy_min']:.4f}) | "
                         f"{x['quality_spearman']:.3f} ({x['quality_spearman_min']:.3f}) |")
    verdicts = [f"{name}: consensus beats majority vote: {'yes' if d['consensus_beats_majority'] else 'NO'}, "
                f"rank correlation >= 0.8: {'yes' if d['rank_correlation_at_least_0_8'] else 'NO'}"
                for name, d in report["done_means"].items()]
    lines += ["", "Done means (Dawid-Skene and CROWDLAB, every seed): " + "; ".join(verdicts) + ". "
              f"CROWDLAB uses out-of-fold probabilities of the project's classifier (Lite0 embeddings, "
              f"{oof_settings}) trained on the majority-vote labels. "
              "Reproduce: `nice .venv/bin/python benchmarks/bench_annotators.py`.", ""]
    (RESULTS / f"bench_annotators{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
