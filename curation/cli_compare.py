"""``curation compare --dataset A --with B``: what a new dataset (B) adds to or lacks from A.

``curation.cli.build_parser`` calls :func:`register` with its subcommands object.
"""

from __future__ import annotations

import argparse
import json
import math


def _open_unit_interval(text: str) -> float:
    """argparse ``type=``: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def register(commands) -> None:
    """Add ``compare`` to ``commands``."""
    from curation.cli import _number_in, _whole_number
    from curation.compare import CompareConfig

    defaults = CompareConfig()
    compare = commands.add_parser(
        "compare", help="compare two datasets: class mix, coverage and shift in the embedding space, near duplicates "
                        "across them, labels their neighbours in the other dataset disagree with")
    compare.add_argument("--dataset", required=True, help="dataset A (what you have)")
    compare.add_argument("--with", dest="other", required=True, help="dataset B (for example a new batch)")
    compare.add_argument("--json", action="store_true", help="print the whole comparison as JSON")
    compare.add_argument("--label-field", help="A's classification field (default: A's)")
    compare.add_argument("--label-field-b", help="B's classification field (default: B's)")
    compare.add_argument("--field", help="A's embedding field (default: the one whose model B also has)")
    compare.add_argument("--field-b", help="B's embedding field (default: the one from A's model)")
    compare.add_argument("--k", type=_whole_number(1), default=defaults.k,
                         help=f"neighbours in the other dataset that vote on a label (default {defaults.k})")
    compare.add_argument("--far-quantile", type=_open_unit_interval, default=defaults.far_quantile,
                         help="B is far from A beyond this quantile of A's own nearest-neighbour distances, in (0, 1) "
                              f"(default {defaults.far_quantile}: 1%% of B is far if B is drawn like A)")
    compare.add_argument("--min-vote-share", type=_number_in(0.5, 1, low_open=True), default=defaults.min_vote_share,
                         help=f"share of neighbours that must agree on another class, in (0.5, 1] "
                              f"(default {defaults.min_vote_share})")
    compare.add_argument("--threshold", type=_number_in(0, 1, low_open=True),
                         help="cosine similarity for near duplicates across, in (0, 1] (default: A's calibrated "
                              "threshold, else the duplicates finder's 0.95)")
    compare.add_argument("--regions", type=_whole_number(1), help="k-means regions of A (default: from A's size)")
    compare.add_argument("--seed", type=_whole_number(0), default=0)
    compare.add_argument("--limit", type=_whole_number(0), default=10, help="rows listed per section (default 10)")
    compare.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    from curation.compare import CompareConfig, compare_datasets
    from curation.datasets import load_dataset

    dataset_a = load_dataset(args.dataset)
    dataset_b = load_dataset(args.other)
    config = CompareConfig(k=args.k, far_quantile=args.far_quantile, min_vote_share=args.min_vote_share,
                           duplicate_threshold=args.threshold, n_regions=args.regions, seed=args.seed)
    comparison = compare_datasets(dataset_a, dataset_b, label_field_a=args.label_field, label_field_b=args.label_field_b,
                                  embeddings_field=args.field, embeddings_field_b=args.field_b, config=config)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2, allow_nan=False))
    else:
        print("\n".join(comparison.summary_lines(limit=args.limit)))
    return 0
