"""Mislabel signal weights chosen per dataset, against the fixed weights (issue 9 §2).

On the stored EfficientNet-Lite0 embeddings of bench_mislabels.py (the first run of that
script embeds them; this one reuses its cache): MNIST's 15 validated label errors and the
Fashion-MNIST test set with 10/20/40% uniform flips (flip seed 0). For each, the finder
with the fixed weights (classifier 0.75, neighbours 0.25, chosen on Fashion-MNIST flips with
seed 101) and with the default ``"auto"`` weights (lowest out-of-sample log loss of the
given labels, :func:`curation.finders.mislabels.choose_signal_weights`), plus every
weighting of the grid: average precision of the score, hits in the top 15/50/100, F1 of the
flagged set, and each weighting's log loss.

    .venv/bin/python benchmarks/bench_mislabel_weights.py [--json benchmarks/results/bench_mislabel_weights.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mislabels as B  # noqa: E402


def evaluate(context, config, truth: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score

    from curation.finders.mislabels import find_mislabels

    started = time.perf_counter()
    result = find_mislabels(context, config)
    score = result.table["score"].fillna(0).to_numpy()
    order = np.argsort(-score, kind="stable")
    flagged = result.table["is_issue"].to_numpy()
    true_positives = int((flagged & truth).sum())
    precision = true_positives / max(int(flagged.sum()), 1)
    recall = true_positives / max(int(truth.sum()), 1)
    return {"weights": result.info["weights"], "ap": round(float(average_precision_score(truth, score)), 4),
            "hits": {k: int(truth[order[:k]].sum()) for k in (15, 50, 100)},
            "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            "seconds": round(time.perf_counter() - started, 2)}


def ranking(score: np.ndarray, truth: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score

    order = np.argsort(-score, kind="stable")
    return {"ap": round(float(average_precision_score(truth, score)), 4),
            "hits": {k: int(truth[order[:k]].sum()) for k in (15, 50, 100)}}


def peers(embeddings: np.ndarray, given: np.ndarray, truth: np.ndarray) -> dict:
    """The plain cleanlab pipeline (self-confidence on out-of-fold LogisticRegression(C=1) on
    all dimensions) and cleanlab Datalab's ``label`` issue from the features alone."""
    from cleanlab.rank import get_label_quality_scores

    started = time.perf_counter()
    probabilities = B.plain_out_of_fold(embeddings, given, 10)
    plain = {**ranking(1 - get_label_quality_scores(given, probabilities), truth),
             "seconds": round(time.perf_counter() - started, 2)}
    try:
        from cleanlab import Datalab
    except ImportError as error:  # needs Hugging Face `datasets`: pip install -e '.[bench]'
        return {"plain cleanlab": plain, "Datalab label": {"skipped": str(error)}}
    started = time.perf_counter()
    lab = Datalab(data={"label": given.tolist()}, label_name="label", verbosity=0)
    lab.find_issues(features=embeddings, issue_types={"label": {}})
    issues = lab.get_issues("label")
    datalab = {**ranking(1 - issues["label_score"].to_numpy(), truth), "flagged": int(issues["is_label_issue"].sum()),
               "seconds": round(time.perf_counter() - started, 2)}
    return {"plain cleanlab": plain, "Datalab label": datalab}


def write_pngs(images: np.ndarray, folder: Path) -> np.ndarray:
    """The IDX images as PNG files (written once), so the finder reads pixels as it does in a dataset."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{index:05d}.png" for index in range(len(images))]
    for path, image in zip(paths, images):
        if not path.exists():
            Image.fromarray(image).save(path)
    return np.array([str(path) for path in paths], dtype=object)


def main(argv: list[str] | None = None) -> int:
    from curation.finders.mislabels import CLASSIFIER_SHARE_GRID, MislabelConfig
    from curation.idx import read_idx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=B.DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--pixels", action="store_true",
                        help="give the finder the images as files, so the classifier may add the small CNN "
                             "(minutes per case); only MNIST and Fashion-MNIST 20%% then, without the weight grid")
    args = parser.parse_args(argv)
    names = np.array([str(i) for i in range(10)], dtype=object)
    results = []
    for name, folder in (("mnist", "mnist-test"), ("fashion", "fashion-mnist")):
        embeddings = B.embed_idx_images(args.data_dir / folder / "t10k-images-idx3-ubyte.gz")
        labels = read_idx(args.data_dir / folder / "t10k-labels-idx1-ubyte.gz").astype(int)
        graph = B.neighbour_graph(embeddings)
        if name == "mnist":
            listed = pd.read_csv(args.data_dir / folder / "label_errors_mnist_test.csv")
            truth = np.zeros(len(labels), dtype=bool)
            truth[listed.loc[listed["validated_error"] == 1, "index"].to_numpy()] = True
            cases = [("15 validated errors", labels, truth)]
        else:
            cases = [(f"{rate:.0%} flips", *B.flip_labels(labels, rate, B.REPORT_SEED, 10)) for rate in B.NOISE_RATES]
        if args.pixels:
            cases = [case for case in cases if case[0] in ("15 validated errors", "20% flips")]
            filepaths = write_pngs(read_idx(args.data_dir / folder / "t10k-images-idx3-ubyte.gz"),
                                   B.bench_cache_dir() / "pngs" / name)
        for case, given, truth in cases:
            context = B.make_context(embeddings, names[given], graph)
            if args.pixels:
                context.filepaths = filepaths
                row = {"dataset": name, "case": case, "pixels": True, "auto": evaluate(context, MislabelConfig(), truth)}
                row["auto"]["pixel_model"] = context.out_of_fold().info.get("pixel_model")
                results.append(row)
                auto = row["auto"]
                print(f"{name:8s} {case:20s} with pixels: auto picks classifier {auto['weights']['classifier']}: AP "
                      f"{auto['ap']:.4f} hits {auto['hits']} F1 {auto['f1']:.3f} ({auto['seconds']:.0f} s)", flush=True)
                continue
            row = {"dataset": name, "case": case, "auto": evaluate(context, MislabelConfig(), truth)}
            for share in CLASSIFIER_SHARE_GRID:
                row[f"classifier {share}"] = evaluate(
                    context, MislabelConfig(classifier_weight=share, neighbor_weight=round(1 - share, 6)), truth)
            row["peers"] = peers(embeddings, given, truth)
            results.append(row)
            auto = row["auto"]
            print(f"{name:8s} {case:20s} auto picks classifier {auto['weights']['classifier']}: AP {auto['ap']:.4f} "
                  f"hits {auto['hits']} F1 {auto['f1']:.3f} | fixed 0.75: AP {row['classifier 0.75']['ap']:.4f} "
                  f"hits {row['classifier 0.75']['hits']} F1 {row['classifier 0.75']['f1']:.3f} | "
                  + ", ".join(f"{share}: AP {row[f'classifier {share}']['ap']:.4f}" for share in CLASSIFIER_SHARE_GRID)
                  + " | " + "; ".join(f"{peer}: {value}" for peer, value in row["peers"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
