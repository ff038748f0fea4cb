"""Audit estimator on Fashion-MNIST with 10% flipped labels: coverage and width of the 95% interval.

    .venv/bin/python benchmarks/bench_audit.py --json benchmarks/results/bench_audit.json \
        --markdown benchmarks/results/bench_audit.md

Population: the 10,000 Fashion-MNIST test images, 10% of the labels flipped uniformly to another
class (seed 0). Score: 1 - self-confidence of the given (noisy) label from
``compute_out_of_fold_predictions`` (library defaults) on the cached EfficientNet-Lite0
embeddings (``bench_mislabels.embed_idx_images``; the benchmark never embeds: it stops if the
cache is missing). For each design (uniform, score-stratified, class-stratified), audit size
(100, 300, 1,000 verdicts) and seed, :func:`curation.audit.plan` draws the sample, verdicts
are answered from the truth (``wrong`` = flipped) and :func:`curation.audit.estimate` gives the
estimate and 95% interval. No database is needed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

NOISE_RATE = 0.1
NOISE_SEED = 0
SIZES = (100, 300, 1000)
DESIGNS = ("uniform", "score", "stratified")


def fashion_population(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(noisy labels as names, flipped mask, score 1 - self-confidence, info)."""
    from bench_mislabels import bench_cache_dir, embed_idx_images, file_digest, flip_labels

    from curation.idx import read_idx

    images = data_dir / "t10k-images-idx3-ubyte.gz"
    key = f"{images.name.split('.')[0]}-{file_digest(images)}-efficientnet-lite0-imagenet-all"
    if not (bench_cache_dir() / f"{key}.npy").exists():
        raise SystemExit(f"no cached embeddings {key}.npy under {bench_cache_dir()}; run bench_mislabels.py first")
    embeddings = embed_idx_images(images)
    truth = read_idx(data_dir / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    noisy, flipped = flip_labels(truth, NOISE_RATE, NOISE_SEED, 10)
    names = np.array([f"class{int(c)}" for c in noisy], dtype=object)
    score_cache = bench_cache_dir() / f"audit-score-{key}-noise{NOISE_RATE}-seed{NOISE_SEED}.npy"
    started = time.perf_counter()
    if score_cache.exists():
        score = np.load(score_cache)
        info = {"score_source": f"cached {score_cache.name}"}
    else:
        from curation.finders.classifier import compute_out_of_fold_predictions

        oof = compute_out_of_fold_predictions(embeddings, list(names), seed=0)
        column = {name: j for j, name in enumerate(oof.classes)}
        self_conf = oof.pred_probs[np.arange(len(names)), [column[n] for n in names]]
        score = 1 - self_conf
        np.save(score_cache, score)
        info = {"score_source": "computed", "score_seconds": round(time.perf_counter() - started, 1)}
    from sklearn.metrics import average_precision_score

    info["score_average_precision"] = round(float(average_precision_score(flipped, score)), 4)
    return names, flipped, score, info


def run(names, flipped, score, seeds: int) -> list[dict]:
    from curation.audit import estimate, plan

    truth = float(flipped.mean())
    classes = sorted(set(names))
    class_truth = {c: float(flipped[names == c].mean()) for c in classes}
    rows = []
    for design in DESIGNS:
        for size in SIZES:
            covered, widths, estimates, class_cover, class_width = [], [], [], [], []
            for seed in range(seeds):
                drawn = plan(design, names, size, scores=score, seed=seed)
                idx = drawn["indices"]
                strata, wrong = drawn["strata"][idx], flipped[idx]
                result = estimate(strata, wrong, drawn["sizes"])
                covered.append(result["ci_low"] <= truth <= result["ci_high"])
                widths.append(result["ci_high"] - result["ci_low"])
                estimates.append(result["rate"])
                for c in classes:
                    part = estimate(strata, wrong, drawn["sizes"], domain=names[idx] == c)
                    if part["rate"] is not None:
                        class_cover.append(part["ci_low"] <= class_truth[c] <= part["ci_high"])
                        class_width.append(part["ci_high"] - part["ci_low"])
            estimates = np.asarray(estimates)
            rows.append({
                "design": design, "verdicts": size, "seeds": seeds, "true_rate": round(truth, 4),
                "mean_estimate": round(float(estimates.mean()), 5),
                "bias": round(float(estimates.mean() - truth), 5),
                "bias_se": round(float(estimates.std(ddof=1) / np.sqrt(seeds)), 5),
                "rmse": round(float(np.sqrt(((estimates - truth) ** 2).mean())), 5),
                "coverage": round(float(np.mean(covered)), 4),
                "coverage_se": round(float(np.sqrt(np.mean(covered) * (1 - np.mean(covered)) / seeds)), 4),
                "mean_width": round(float(np.mean(widths)), 5),
                "median_width": round(float(np.median(widths)), 5),
                "per_class_coverage": round(float(np.mean(class_cover)), 4),
                "per_class_mean_width": round(float(np.mean(class_width)), 4),
                "strata_counts": [int(c) for c in drawn["counts"]],
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "## bench_audit.py: audit error-rate estimates on Fashion-MNIST with 10% flipped labels",
        "",
        "```bash",
        ".venv/bin/python benchmarks/bench_audit.py --json benchmarks/results/bench_audit.json "
        "--markdown benchmarks/results/bench_audit.md",
        "```",
        "",
        f"Population: the 10,000 Fashion-MNIST test images, {int(NOISE_RATE * 100)}% of labels flipped uniformly "
        f"(seed {NOISE_SEED}; true error rate {result['true_rate']:.4f}). Verdicts answered from the truth. "
        "Score for the `score` design: 1 - self-confidence of the given label from `compute_out_of_fold_predictions` "
        f"(defaults) on the cached EfficientNet-Lite0 embeddings (average precision for the flips "
        f"{result['info']['score_average_precision']}). {result['seeds']} seeds per cell; coverage: share of seeds whose "
        f"95% interval contains the true rate (Monte Carlo standard error {100 * (0.95 * 0.05 / result['seeds']) ** 0.5:.1f} "
        "points around 95%). Per-class: each class's own estimate (a domain of the design) against its true rate. "
        "Estimator: stratified Horvitz-Thompson, Wilson interval on the effective sample size (`curation/audit.py`).",
        "",
        "| design | verdicts | coverage | mean width | median width | bias (se) | RMSE | per-class coverage | per-class width |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['design']} | {r['verdicts']} | {r['coverage']:.3f} | {r['mean_width']:.4f} | "
                     f"{r['median_width']:.4f} | {r['bias']:+.4f} ({r['bias_se']:.4f}) | {r['rmse']:.4f} | "
                     f"{r['per_class_coverage']:.3f} | {r['per_class_mean_width']:.3f} |")
    by = {(r["design"], r["verdicts"]): r for r in rows}
    ratios = ", ".join(f"{n}: {by[('score', n)]['mean_width'] / by[('uniform', n)]['mean_width']:.2f}" for n in SIZES)
    cover = [r["coverage"] for r in rows]
    lines += ["", f"Width of the score design relative to uniform (mean width ratio) at {ratios}.", "",
              "What it shows:", "",
              f"- Every design is unbiased (each bias within about 2 standard errors of 0) and its 95% interval covers "
              f"the true rate in {min(cover):.1%}-{max(cover):.1%} of the seeds.",
              f"- An audit of 300 verdicts: uniform {by[('uniform', 300)]['mean_width']:.3f} wide "
              f"(coverage {by[('uniform', 300)]['coverage']:.1%}), score-stratified "
              f"{by[('score', 300)]['mean_width']:.3f} (coverage {by[('score', 300)]['coverage']:.1%}): the score design "
              "needs about a third of the verdicts of uniform for the same width when the score carries signal.",
              "- Small audits of the score design are conservative (its smallest strata get the never-zero "
              "variance); at 1,000 verdicts it is slightly below 95%: the low-score strata hold rare errors with "
              "large weights, so the estimate's distribution is skewed. Class-stratified sampling gives every class "
              "its own draws; its overall width matches uniform.",
              ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets" / "fashion-mnist")
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    names, flipped, score, info = fashion_population(args.data_dir)
    rows = run(names, flipped, score, args.seeds)
    result = {"benchmark": "bench_audit", "noise_rate": NOISE_RATE, "noise_seed": NOISE_SEED,
              "population": len(names), "true_rate": float(flipped.mean()), "seeds": args.seeds, "info": info,
              "rows": rows, "seconds": round(time.perf_counter() - started, 1),
              "machine": platform.platform(), "python": platform.python_version()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
