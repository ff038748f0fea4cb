"""CLI subcommands for several annotations per sample: import-annotations, agreement, consensus.

``register(commands)`` adds them to the ``curation`` argparse subparsers (curation/cli.py).
"""

from __future__ import annotations

import json
import sys

from curation.annotators import DEFAULT_FIELD, FORMATS, METHODS


def _dataset(name: str):
    from curation.datasets import load_dataset

    return load_dataset(name)


def cmd_import_annotations(args) -> int:
    from curation.annotators import import_annotations
    from curation.errors import CurationInputError

    dataset = _dataset(args.dataset)
    fields = [f.strip() for f in (args.fields or "").split(",") if f.strip()] or None
    if args.format == "fields" and not fields:
        raise CurationInputError("--format fields needs --fields F1,F2")
    if args.format != "fields" and not args.source:
        raise CurationInputError("--from FILE is required (or --format fields --fields F1,F2)")
    report = import_annotations(dataset, None if args.format == "fields" else args.source, format=args.format,
                                fields=fields, into=args.into)
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if report.n_problems > len(report.problems):
        print(f"problem: ... and {report.n_problems - len(report.problems):,} more problem(s) like these", file=sys.stderr)
    print(f"{report.summary()} into field {args.into!r}")
    return 0 if report.n_votes or not report.n_problems else 1


def cmd_agreement(args) -> int:
    from curation.annotators import agreement, read_votes

    from curation.annotators import gold_accuracy, gold_labels

    dataset = _dataset(args.dataset)
    votes = read_votes(dataset, args.field)
    result = agreement(votes)
    if args.gold_field or args.gold_tag:
        gold = gold_labels(dataset, field_name=args.gold_field, tag=args.gold_tag, label_field=args.label_field)
        result["gold"] = gold_accuracy(votes, gold)
        result["n_gold"] = len(gold)
        by_name = {row["annotator"]: row for row in result["gold"]}
        for row in result["annotators"]:
            row["gold_accuracy"] = by_name[row["annotator"]]["accuracy"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    def number(value):
        return "n/a" if value is None else f"{value:.3f}"

    print(f"{result['n_samples']:,} samples, {result['n_votes']:,} votes: Krippendorff's alpha {number(result['alpha'])}, "
          f"Fleiss' kappa {number(result['kappa'])}")
    print("annotator\tquality\tagreement\tn\tworst class")
    for row in result["annotators"]:
        print(f"{row['annotator']}\t{number(row['quality'])}\t{number(row['agreement'])}\t{row['n']}\t{row['worst_class']}")
    for row in result.get("gold", []):
        if row["n"]:
            print(f"gold: {row['annotator']}: {row['correct']}/{row['n']} right, accuracy {row['accuracy']:.3f} "
                  f"(95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f})")
    if result["confused"]:
        print("most confused: " + ", ".join(f"{p['a']} / {p['b']} ({p['count']})" for p in result["confused"][:5]))
    return 0


def cmd_consensus(args) -> int:
    from curation.annotators import consensus, read_votes, write_consensus

    dataset = _dataset(args.dataset)
    votes = read_votes(dataset, args.field)
    embeddings = None
    if args.method in ("auto", "crowdlab"):
        embeddings = _embeddings_for(dataset, votes.sample_ids, required=args.method == "crowdlab")
    result = consensus(votes, args.method, embeddings=embeddings)
    write_consensus(dataset, result, args.into)
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    print(f"wrote the {result.method} consensus of {len(result.sample_ids):,} samples to field {args.into!r} "
          f"and {args.into + '_quality'!r}")
    for name in sorted(result.annotator_quality, key=result.annotator_quality.get, reverse=True):
        print(f"{name}\tquality {result.annotator_quality[name]:.3f}\tworst class {result.worst_class.get(name)}")
    return 0


def _embeddings_for(dataset, sample_ids, *, required: bool):
    """The default embeddings of ``sample_ids`` in order, or None (an error if required)."""
    import numpy as np

    from curation.embeddings import default_embedding_field, load_embeddings
    from curation.errors import CurationInputError

    name = default_embedding_field(dataset)
    if name is None:
        if required:
            raise CurationInputError(f"dataset {dataset.name!r} has no embeddings; CROWDLAB needs them: "
                                     f"run `curation embed --dataset {dataset.name}` or pick --method dawid-skene")
        return None
    ids, vectors = load_embeddings(dataset, name)
    position = {s: i for i, s in enumerate(ids)}
    if any(s not in position for s in sample_ids):
        if required:
            raise CurationInputError(f"some annotated samples have no {name!r} embedding; run `curation embed` first")
        return None
    return vectors[np.array([position[s] for s in sample_ids])]


def register(commands) -> None:
    """Add import-annotations, agreement and consensus to the ``curation`` subparsers."""
    importing = commands.add_parser("import-annotations", help="import several annotations per sample "
                                    "(long CSV, Label Studio JSON, CVAT XML, or label fields)")
    importing.add_argument("--dataset", required=True)
    importing.add_argument("--from", dest="source", help="the annotation file")
    importing.add_argument("--format", choices=FORMATS, default="auto")
    importing.add_argument("--fields", help="with --format fields: label fields, one annotator each (F1,F2)")
    importing.add_argument("--into", default=DEFAULT_FIELD, help=f"field that holds the votes (default {DEFAULT_FIELD})")
    importing.set_defaults(handler=cmd_import_annotations)

    agreeing = commands.add_parser("agreement", help="inter-annotator agreement: Krippendorff's alpha, Fleiss' kappa, "
                                   "per annotator")
    agreeing.add_argument("--dataset", required=True)
    agreeing.add_argument("--field", default=DEFAULT_FIELD, help="the annotations field")
    agreeing.add_argument("--json", action="store_true", help="print JSON")
    agreeing.add_argument("--gold-field", help="field holding the known answer of gold samples (where set)")
    agreeing.add_argument("--gold-tag", help="tag of gold samples; their answer is in --label-field")
    agreeing.add_argument("--label-field", default="ground_truth", help="with --gold-tag (default ground_truth)")
    agreeing.set_defaults(handler=cmd_agreement)

    agreeing = commands.add_parser("consensus", help="consensus label and annotator quality "
                                   "(CROWDLAB, Dawid-Skene or majority vote)")
    agreeing.add_argument("--dataset", required=True)
    agreeing.add_argument("--field", default=DEFAULT_FIELD, help="the annotations field")
    agreeing.add_argument("--method", choices=METHODS, default="auto",
                          help="auto: CROWDLAB with embeddings, else Dawid-Skene")
    agreeing.add_argument("--into", default="consensus", help="field for the consensus (default consensus)")
    agreeing.set_defaults(handler=cmd_consensus)
