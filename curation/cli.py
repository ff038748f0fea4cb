"""Command-line entry point: ``curation <command> ...``; every step runs without the UI.

Exit code 0 on success; on failure, non-zero and one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import logging
import sys

import curation  # noqa: F401  (environment defaults before fiftyone)


class CommandError(Exception):
    """A failure with a one-line reason for the user."""


def _progress(description: str, total_hint: int | None = None):
    from tqdm import tqdm

    bar = tqdm(total=total_hint, desc=description, unit="img", dynamic_ncols=True, file=sys.stderr)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def cmd_import(args) -> int:
    from curation.importers import import_dataset

    report = import_dataset(args.source, args.name, format=args.format, label_field=args.label_field,
                            overwrite=args.overwrite, csv_filepath_column=args.csv_filepath_column,
                            csv_label_column=args.csv_label_column)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"imported {report.samples} samples from {report.source} ({report.format}) into dataset {report.name!r}"
          + (f", labels in field {report.label_field!r}" if report.label_field else ""))
    return 0


def _embed(dataset, args) -> None:
    from curation.embeddings import compute_embeddings

    bar, update = _progress(f"embedding {dataset.name}")
    try:
        run = compute_embeddings(dataset, model=args.model, checkpoint=args.checkpoint, device=args.device,
                                 batch_size=args.batch_size, num_workers=args.workers,
                                 allow_fallback=not args.no_fallback, retry_failed=args.retry_failed,
                                 progress=update)
    finally:
        bar.close()
    if run.fallback_reason:
        print(f"note: {run.fallback_reason}", file=sys.stderr)
    for path, reason in run.failures:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    print(f"embedded {run.embedded} new samples with {run.model} on {run.device} into field {run.field!r} "
          f"({run.already_done} already done, {len(run.failures)} skipped)")


def cmd_embed(args) -> int:
    from curation.datasets import load_dataset

    _embed(load_dataset(args.dataset), args)
    return 0


def cmd_map(args) -> int:
    from curation.datasets import default_label_field, load_dataset
    from curation.embeddings import default_embedding_field
    from curation.mapview import map_frame
    from curation.projection import ProjectionConfig

    dataset = load_dataset(args.dataset)
    field = args.field or default_embedding_field(dataset)
    if not field:
        raise CommandError(f"dataset {args.dataset!r} has no embeddings yet; run `curation embed --dataset {args.dataset}`")
    config = ProjectionConfig(n_neighbors=args.n_neighbors, min_dist=args.min_dist)
    frame = map_frame(dataset, field, default_label_field(dataset), config)
    print(f"map of {len(frame)} samples from {field!r} is cached ({config})")
    return 0


def cmd_datasets(args) -> int:
    from curation.datasets import list_dataset_names, load_dataset, summarize

    names = list_dataset_names()
    if not names:
        print("no datasets yet; import one with `curation import SOURCE --name NAME`")
        return 0
    print(f"{'dataset':30} {'samples':>8}  embeddings")
    for name in names:
        summary = summarize(load_dataset(name))
        status = "; ".join(
            f"{s.model}: {s.embedded}/{s.total}" + (f" ({s.failed} failed)" if s.failed else "")
            for s in summary.embeddings
        ) or "none"
        print(f"{name:30} {summary.sample_count:>8}  {status}")
    return 0


def cmd_demo(args) -> int:
    from curation.importers import DEMO_DATASET, ensure_demo_dataset

    dataset = ensure_demo_dataset(DEMO_DATASET)
    print(f"demo dataset {DEMO_DATASET!r}: {len(dataset)} samples")
    _embed(dataset, args)
    args.dataset, args.field = DEMO_DATASET, None
    return cmd_map(args)


def cmd_calibrate(args) -> int:
    from curation.analysis import calibrate_dataset
    from curation.datasets import load_dataset

    calibration = calibrate_dataset(load_dataset(args.dataset), field=args.field, sample_size=args.sample_size,
                                    target_precision=args.target_precision)
    print(f"near-duplicate threshold {calibration.threshold:.3f}: precision {calibration.precision:.3f}, "
          f"recall {calibration.recall:.3f} on {calibration.sample_size} images x {len(calibration.recall_by_transform)} edits "
          f"({', '.join(f'{k} {v:.2f}' for k, v in calibration.recall_by_transform.items())})")
    return 0


def cmd_analyze(args) -> int:
    from curation.analysis import analyze
    from curation.datasets import load_dataset
    from tqdm import tqdm

    dataset = load_dataset(args.dataset)
    finders = [name.strip() for name in args.finders.split(",")] if args.finders else None
    bar = tqdm(total=None, desc="analyzing", unit="finder", file=sys.stderr, dynamic_ncols=True)

    def progress(name: str, done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name)
        bar.refresh()

    try:
        report = analyze(dataset, finders, field=args.field, label_field=args.label_field, split_field=args.split_field,
                         progress=progress)
    finally:
        bar.close()
    for name, result in report.results.items():
        print(f"{name}: {result.summary}")
    for name, reason in report.skipped.items():
        print(f"{name}: skipped: {reason}")
    for name, reason in report.errors.items():
        print(f"{name}: FAILED: {reason}", file=sys.stderr)
    return 1 if report.errors else 0


def cmd_findings(args) -> int:
    from curation.analysis import write_findings_csv
    from curation.datasets import load_dataset

    rows = write_findings_csv(load_dataset(args.dataset), args.out)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def cmd_doctor(args) -> int:
    from curation.database import check_database

    status = check_database()
    print(f"database: {'ok' if status.ok else 'NOT USABLE'}: {status.detail}")
    return 0 if status.ok else 1


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    from curation.models import DEFAULT_MODEL, MODEL_REGISTRY

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"one of: {', '.join(sorted(MODEL_REGISTRY))}")
    parser.add_argument("--checkpoint", help="local weights file for the model (air-gapped use)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then cpu), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: 256 GPU, 32 CPU)")
    parser.add_argument("--workers", type=int, help="image-decoding worker processes")
    parser.add_argument("--no-fallback", action="store_true", help="fail instead of using the offline model")
    parser.add_argument("--retry-failed", action="store_true", help="retry images that failed to decode before")


def _add_map_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-neighbors", type=int, default=15)
    parser.add_argument("--min-dist", type=float, default=0.1)


def build_parser() -> argparse.ArgumentParser:
    from curation.importers import FORMATS
    from curation.datasets import DEFAULT_LABEL_FIELD

    parser = argparse.ArgumentParser(prog="curation", description="Curate image datasets: import, embed, map.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    importing = commands.add_parser("import", help="import images from disk into a new FiftyOne dataset")
    importing.add_argument("source", help="folder or CSV file")
    importing.add_argument("--name", required=True, help="name of the new dataset")
    importing.add_argument("--format", default="auto", choices=FORMATS)
    importing.add_argument("--label-field", default=DEFAULT_LABEL_FIELD)
    importing.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    importing.add_argument("--csv-filepath-column", default="filepath")
    importing.add_argument("--csv-label-column", default="label")
    importing.set_defaults(handler=cmd_import)

    embedding = commands.add_parser("embed", help="compute image embeddings (resumable, cached)")
    embedding.add_argument("--dataset", required=True)
    _add_embed_options(embedding)
    embedding.set_defaults(handler=cmd_embed)

    mapping = commands.add_parser("map", help="compute and cache the 2-D UMAP map")
    mapping.add_argument("--dataset", required=True)
    mapping.add_argument("--field", help="embedding field (default: the dataset's latest)")
    _add_map_options(mapping)
    mapping.set_defaults(handler=cmd_map)

    listing = commands.add_parser("datasets", help="list datasets with sample counts and embedding status")
    listing.set_defaults(handler=cmd_datasets)

    demo = commands.add_parser("demo", help="import, embed and map the bundled demo dataset")
    _add_embed_options(demo)
    _add_map_options(demo)
    demo.set_defaults(handler=cmd_demo)

    calibrating = commands.add_parser("calibrate", help="choose the near-duplicate threshold on the dataset's own images")
    calibrating.add_argument("--dataset", required=True)
    calibrating.add_argument("--field", help="embedding field (default: the dataset's latest)")
    calibrating.add_argument("--sample-size", type=int, default=100)
    calibrating.add_argument("--target-precision", type=float, default=0.95)
    calibrating.set_defaults(handler=cmd_calibrate)

    analyzing = commands.add_parser("analyze", help="run the finders and store their results on the samples")
    analyzing.add_argument("--dataset", required=True)
    analyzing.add_argument("--finders", help="comma-separated subset (default: all)")
    analyzing.add_argument("--field", help="embedding field (default: the dataset's latest)")
    analyzing.add_argument("--label-field", help="classification field (default: the dataset's)")
    analyzing.add_argument("--split-field", help="field holding train/val/test (default: `split` or split tags)")
    analyzing.set_defaults(handler=cmd_analyze)

    finding = commands.add_parser("findings", help="write the per-sample findings as CSV")
    finding.add_argument("--dataset", required=True)
    finding.add_argument("--out", required=True, help="CSV file to write")
    finding.set_defaults(handler=cmd_findings)

    doctor = commands.add_parser("doctor", help="check that FiftyOne's database is usable")
    doctor.set_defaults(handler=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from curation.database import DatabaseUnavailable
    from curation.datasets import DatasetNotFoundError
    from curation.importers import ImportError_
    from curation.analysis import AnalysisError
    from curation.finders import UnknownFinderError
    from curation.finders.base import FinderInputError
    from curation.models import ModelUnavailableError, UnknownModelError

    expected = (CommandError, AnalysisError, UnknownFinderError, FinderInputError, DatabaseUnavailable, DatasetNotFoundError, ImportError_, ModelUnavailableError,
                UnknownModelError, FileNotFoundError, KeyError, ValueError)
    try:
        return args.handler(args)
    except expected as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"curation {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"curation {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
