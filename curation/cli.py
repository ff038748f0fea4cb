"""Command-line entry point: ``curation <command> ...``; every step runs without the UI.

Exit code 0 on success; on failure, non-zero and one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

import curation  # noqa: F401  (environment defaults before fiftyone)
from curation.errors import CurationError


class CommandError(CurationError):
    """A failure with a one-line reason for the user."""


def _one_line(error: BaseException) -> str:
    """The error's message on one line (OSError gives its file name too)."""
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error.strerror or ""):
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(text.split())
    return text if len(text) <= 2000 else text[:2000] + " ..."


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, like every other failure:
    ``curation map: error: argument --min-dist: expected ... (see `curation map --help`)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _whole_number(minimum: int):
    """argparse ``type=``: an int >= ``minimum``; the message says what arrived."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def _number_in(low: float, high: float, *, low_open: bool = False):
    """argparse ``type=``: a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return value

    return parse


def _finite_at_least(minimum: float):
    """argparse ``type=``: a finite float >= ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a finite number >= {minimum:g}, got {text!r}")
        return value

    return parse


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
                                 image_size=args.image_size, flip_tta=args.flip_tta or None, progress=update)
    finally:
        bar.close()
    _report_embedding(run, f"on {run.device}")


def _report_embedding(run, where: str) -> None:
    if run.fallback_reason:
        print(f"note: {run.fallback_reason}", file=sys.stderr)
    for path, reason in run.failures:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    size = f" at {run.image_size} px" + (" with flip TTA" if run.flip_tta else "") if run.image_size else ""
    print(f"embedded {run.embedded} new samples with {run.model}{size} {where} into field {run.field!r} "
          f"({run.already_done} already done, {len(run.failures)} skipped)")


def _embed_patches(dataset, args) -> None:
    from curation.patches import DEFAULT_CONTEXT, DEFAULT_MIN_SIDE, check_detections_field, compute_patch_embeddings

    check_detections_field(dataset, args.patches)
    bar, update = _progress(f"embedding objects of {dataset.name}.{args.patches}")
    bar.unit = "obj"
    try:
        run = compute_patch_embeddings(
            dataset, args.patches, model=args.model, checkpoint=args.checkpoint, device=args.device,
            context=DEFAULT_CONTEXT if args.context is None else args.context,
            min_side=DEFAULT_MIN_SIDE if args.min_side is None else args.min_side, batch_size=args.batch_size,
            num_workers=args.workers, allow_fallback=not args.no_fallback, retry_failed=args.retry_failed,
            image_size=args.image_size, flip_tta=args.flip_tta or None, progress=update)
    finally:
        bar.close()
    if run.fallback_reason:
        print(f"note: {run.fallback_reason}", file=sys.stderr)
    for path, reason in run.failures:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    for path, detection_id, reason in run.skipped:
        print(f"skipped: {path}: detection {detection_id}: {reason}", file=sys.stderr)
    size = f" at {run.image_size} px" + (" with flip TTA" if run.flip_tta else "") if run.image_size else ""
    print(f"embedded {run.embedded} objects of {run.field!r} with {run.model}{size}, context {run.context:g}, on "
          f"{run.device} into {run.field}.detections.embedding ({run.already_done} already done, "
          f"{len(run.skipped)} boxes skipped, {run.failed} on unreadable images)")


def cmd_embed(args) -> int:
    from curation.datasets import load_dataset

    if args.patches is None and (args.context is not None or args.min_side is not None):
        raise CommandError("--context and --min-side apply to object embeddings: add --patches FIELD")
    if args.engine == "ray":
        if args.patches is not None:
            raise CommandError("--patches runs in-process only: leave out --engine ray")
        if args.workers is not None:
            raise CommandError("--workers sets in-process decode workers; with --engine ray use --actors")
        from curation.ray_engine import import_ray

        import_ray()  # before loading anything: says which extra to install
    elif args.address is not None or args.actors is not None:
        raise CommandError("--address and --actors apply to --engine ray")
    dataset = load_dataset(args.dataset)
    if args.patches is not None:
        _embed_patches(dataset, args)
    elif args.engine == "ray":
        _embed_with_ray(dataset, args)
    else:
        _embed(dataset, args)
    return 0


def _embed_with_ray(dataset, args) -> None:
    from curation.ray_engine import embed_with_ray

    bar, update = _progress(f"embedding {dataset.name} on Ray")
    try:
        run = embed_with_ray(dataset, model=args.model, checkpoint=args.checkpoint, address=args.address,
                             batch_size=args.batch_size, num_actors=args.actors, device=args.device,
                             allow_fallback=not args.no_fallback, retry_failed=args.retry_failed,
                             image_size=args.image_size, flip_tta=args.flip_tta or None, progress=update)
    finally:
        bar.close()
    _report_embedding(run, f"on Ray ({run.num_actors} {run.device} actors; {run.shards_computed} shards computed, "
                           f"{run.shards_reused} reused from a stopped run)")


def cmd_map(args) -> int:
    from curation.analysis import check_embedding_field
    from curation.datasets import default_label_field, load_dataset
    from curation.embeddings import default_embedding_field
    from curation.mapview import map_frame
    from curation.projection import ProjectionConfig

    dataset = load_dataset(args.dataset)
    field = args.field or default_embedding_field(dataset)
    if not field:
        raise CommandError(f"dataset {args.dataset!r} has no embeddings yet; run `curation embed --dataset {args.dataset}`")
    check_embedding_field(dataset, field)
    embedded = dataset.exists(field).count()
    if embedded < 2:
        raise CommandError(f"a map needs at least 2 embedded samples; dataset {args.dataset!r} has {embedded} in {field!r}")
    config = ProjectionConfig(n_neighbors=args.n_neighbors, min_dist=args.min_dist)
    frame = map_frame(dataset, field, default_label_field(dataset), config)
    print(f"map of {len(frame)} samples from {field!r} is cached ({config})")
    return 0


def _dataset_rows():
    """``(name, samples, embedding statuses)`` per dataset: read with pymongo when the database
    is reachable without fiftyone (a URI, or the kept server), else through fiftyone."""
    from curation.db_server import connect_without_fiftyone

    connection = None
    try:
        connection = connect_without_fiftyone()
        if connection is not None:
            from curation.datasets import listing_from_database

            rows = listing_from_database(connection[1])
            if rows is not None:
                return rows
    except Exception as error:  # noqa: BLE001  (pymongo raises many types; fiftyone below says what is wrong)
        logging.getLogger(__name__).info("listing datasets through fiftyone: %s", error)
    finally:
        if connection is not None:
            connection[0].close()
    from curation.datasets import list_dataset_names, load_dataset, summarize

    summaries = (summarize(load_dataset(name)) for name in list_dataset_names())
    return [(summary.name, summary.sample_count, summary.embeddings) for summary in summaries]


def cmd_datasets(args) -> int:
    rows = _dataset_rows()
    if not rows:
        print("no datasets yet; import one with `curation import SOURCE --name NAME`")
        return 0
    print(f"{'dataset':30} {'samples':>8}  embeddings")
    for name, sample_count, embeddings in rows:
        status = "; ".join(
            f"{s.model}: {s.embedded}/{s.total}" + (f" ({s.failed} failed)" if s.failed else "")
            for s in embeddings
        ) or "none"
        print(f"{name:30} {sample_count:>8}  {status}")
    return 0


def cmd_db(args) -> int:
    from curation.db_server import server_status, stop_server

    if args.action == "stop":
        print(stop_server())
        return 0
    status = server_status()
    print(f"database server: {status.detail}")
    if status.clients is not None:
        print(f"client connections: {status.clients}")
    return 0


def cmd_demo(args) -> int:
    from curation.importers import DEMO_DATASET, ensure_demo_dataset

    dataset = ensure_demo_dataset(DEMO_DATASET)
    print(f"demo dataset {DEMO_DATASET!r}: {len(dataset)} samples")
    _embed(dataset, args)
    args.dataset, args.field = DEMO_DATASET, None
    status = cmd_map(args)
    if status:
        return status
    # A new user's first view has findings, a review queue and duplicate groups, not "no analysis yet".
    from curation.analysis import analyze
    from curation.datasets import curation_info
    from curation.embeddings import default_embedding_field

    analysis = curation_info(dataset).get("analysis", {})
    if analysis.get("runs") and analysis.get("embedding_field") == default_embedding_field(dataset):
        print(f"findings are up to date; rerun them with `curation analyze --dataset {DEMO_DATASET}`")
        return 0
    report = analyze(dataset)
    for name, result in report.results.items():
        print(f"{name}: {result.summary}")
    for name, reason in {**report.skipped, **report.errors}.items():
        print(f"{name}: not run: {reason}", file=sys.stderr)
    return 0


def cmd_calibrate(args) -> int:
    from curation.analysis import calibrate_dataset
    from curation.datasets import load_dataset

    record = calibrate_dataset(load_dataset(args.dataset), field=args.field, sample_size=args.sample_size,
                               target_precision=args.target_precision)
    print(f"near-duplicate verifier: verified probability >= {record['threshold']:.3f}, expected precision "
          f"{record['precision']:.2f} at {record['duplicate_rate']:g} duplicate pairs per image; recall "
          f"{record['recall']:.2f} of edited copies of {record['sample_size']} images x {record['copies_per_image']} "
          f"({', '.join(f'{k} {v:.2f}' for k, v in record['recall_by_edit'].items())}); "
          "`curation analyze` uses it from now on")
    return 0


def cmd_analyze(args) -> int:
    from curation.analysis import analyze
    from curation.datasets import load_dataset
    from tqdm import tqdm

    if args.engine == "ray":
        if args.patches or args.predictions:
            raise CommandError("--patches runs in-process only: leave out --engine ray")
        from curation.ray_engine import import_ray

        import_ray()  # before loading anything: says which extra to install
    elif args.address is not None:
        raise CommandError("--address applies to --engine ray")
    dataset = load_dataset(args.dataset)
    if args.patches or args.predictions:
        return _analyze_objects(dataset, args)
    if args.engine == "ray":
        from curation.ray_engine import cache_neighbors_with_ray

        graph = cache_neighbors_with_ray(dataset, field=args.field, address=args.address)
        if graph is not None:
            print(f"neighbour graph: {len(graph)} samples, k={graph.k}, {graph.method} via {graph.backend}",
                  file=sys.stderr)
    finders = None
    if args.finders is not None:
        finders = list(_names(args.finders))
        if not finders:
            raise CommandError(f"--finders: expected comma-separated finder names, got {args.finders!r}")
    label_field = _label_field(dataset, args)
    bar = None  # started by the first finder, so that a refused option prints nothing but its reason

    def progress(name: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="analyzing", unit="finder", file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name)
        bar.refresh()

    try:
        report = analyze(dataset, finders, field=args.field, label_field=label_field, split_field=args.split_field,
                         progress=progress)
    finally:
        if bar is not None:
            bar.close()
    for name, result in report.results.items():
        print(f"{name}: {result.summary}")
    for name, reason in report.skipped.items():
        print(f"{name}: skipped: {reason}")
    for name, reason in report.errors.items():
        print(f"{name}: FAILED: {reason}", file=sys.stderr)
    return 1 if report.errors else 0


def _analyze_objects(dataset, args) -> int:
    """``analyze --patches FIELD [--predictions FIELD]``: the object finders (curation.objects)."""
    from curation.objects import analyze_objects, write_object_findings

    if not args.patches:
        raise CommandError("--predictions: needs --patches FIELD, the annotated boxes the predictions are checked against")
    if args.finders is not None:
        raise CommandError("--finders: the image finders do not run with --patches; run them without --patches")
    analysis = analyze_objects(dataset, args.patches, args.predictions)
    write_object_findings(dataset, args.patches, analysis)
    print(f"objects ({args.patches}): {analysis.summary()}")
    skipped = analysis.info.get("mislabels", {}).get("skipped")
    if skipped:
        print(f"wrong classes not checked: {skipped}", file=sys.stderr)
    return 0


def cmd_findings(args) -> int:
    from curation.analysis import write_findings_csv
    from curation.datasets import load_dataset

    if args.patches:
        from curation.files import atomic_file
        from curation.objects import object_findings

        table = object_findings(load_dataset(args.dataset), args.patches)
        table["bounding_box"] = table["bounding_box"].map(lambda box: " ".join(f"{v:.6g}" for v in box or []))
        with atomic_file(args.out) as partial:
            table.to_csv(partial, index=False)
        print(f"wrote {len(table)} rows to {args.out}")
        return 0
    rows = write_findings_csv(load_dataset(args.dataset), args.out, split_field=args.split_field)
    print(f"wrote {rows} rows to {args.out}")
    return 0


def cmd_doctor(args) -> int:
    from curation.database import check_database

    status = check_database()
    print(f"database: {'ok' if status.ok else 'NOT USABLE'}: {status.detail}")
    return 0 if status.ok else 1


# The kinds of label field a command accepts for --label-field (default: classification only).
_LABEL_KINDS = {"export": ("Classification", "Detections"), "split": ("Classification", "Detections"),
                "relabel-export": ("Classification", "Detections"), "relabel-import": ("Classification", "Detections")}


def _label_field(dataset, args, *, may_create: bool = False) -> str | None:
    """The field named by ``--label-field`` after checking that it holds labels the command
    can use (or, with ``may_create``, does not exist yet: a relabel creates it); without the
    option, the dataset's default classification field (or None)."""
    import fiftyone as fo

    from curation.datasets import default_label_field

    name = getattr(args, "label_field", None)
    if not name:
        return default_label_field(dataset)
    if may_create and not dataset.has_sample_field(name):
        return name
    kinds = _LABEL_KINDS.get(args.command, ("Classification",))
    types = tuple(getattr(fo, kind) for kind in kinds)
    fields = sorted(field_name for field_name, field in dataset.get_field_schema().items()
                    if isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, types))
    if name not in fields:
        words = " or ".join(kind.lower() for kind in kinds)
        raise CommandError(f"--label-field {name!r} is not a {words} field of dataset {dataset.name!r}; "
                           f"{words} fields: {', '.join(fields) or 'none'}")
    return name


def _names(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None or empty -> ``()``."""
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _read_ids(args) -> tuple[str, ...]:
    """The ids of ``--ids`` and ``--ids-file``, in order, without repeats.

    Raises:
        CommandError: a value that is not a sample id (24 hex digits), named with where it came from.
        FileNotFoundError: ``--ids-file`` does not exist.
    """
    from curation.decisions import is_sample_id

    found = [(sample_id, "--ids") for sample_id in _names(args.ids)]
    if getattr(args, "ids_file", None):
        from pathlib import Path

        path = Path(args.ids_file)
        if not path.exists():
            raise FileNotFoundError(f"--ids-file {path}: no such file")
        lines = [(number, line.strip()) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        if lines and lines[0][1].split(",")[0].strip().lower() == "id":  # a CSV whose first column is id
            lines = lines[1:]
        found += [(line.split(",")[0].strip(), f"--ids-file {path} line {number}") for number, line in lines]
    for sample_id, origin in found:
        if not is_sample_id(sample_id):
            raise CommandError(f"{origin}: {sample_id!r} is not a sample id (expected 24 hex digits)")
    return tuple(dict.fromkeys(sample_id for sample_id, _ in found))


def _check_known_ids(dataset, ids) -> None:
    """Raise :class:`CommandError` naming the ids that are not samples of ``dataset``."""
    if not ids:
        return
    found = set(dataset.select(list(ids)).values("id"))
    missing = [sample_id for sample_id in ids if sample_id not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CommandError(f"{len(missing)} of {len(ids)} ids are not in dataset {dataset.name!r}: {shown}")


# VIEW OPTIONS in the order :func:`_describe_view` names them.
_VIEW_OPTIONS = (("ids", "--ids"), ("ids_file", "--ids-file"), ("tags", "--tags"), ("exclude_tags", "--exclude-tags"),
                 ("decisions", "--decisions"), ("classes", "--classes"), ("max_score", "--max-score"),
                 ("split_field", "--split-field"), ("splits", "--splits"))


def _describe_view(args) -> str:
    """The view options given, as typed: ``--classes nope and --tags x``."""
    parts = []
    for attribute, option in _VIEW_OPTIONS:
        value = getattr(args, attribute, None)
        if not value:
            continue
        if attribute == "ids" and len(_names(value)) > 3:
            value = f"({len(_names(value))} ids)"
        elif isinstance(value, list):
            value = " ".join(value)
        parts.append(f"{option} {value}")
    return " and ".join(parts) or "the options given"


def _view_spec(args):
    from curation.export import ViewSpec

    max_scores = []
    for item in args.max_score or []:
        name, _, value = item.partition("=")
        try:
            limit = float(value)
        except ValueError:
            limit = math.nan
        if not name.strip() or not math.isfinite(limit):
            raise CommandError(f"--max-score: expected FIELD=VALUE with a finite number, like mislabel_score=0.9, "
                               f"got {item!r}")
        max_scores.append((name.strip(), limit))
    return ViewSpec(tags=_names(args.tags), exclude_tags=_names(args.exclude_tags), decisions=_names(args.decisions),
                    classes=_names(args.classes), ids=_read_ids(args), max_scores=tuple(max_scores),
                    split_field=args.split_field, splits=_names(args.splits), exclude_removed=not args.include_removed)


def cmd_queue(args) -> int:
    from curation.datasets import load_dataset
    from curation.review import QueueFilter, review_queue

    dataset = load_dataset(args.dataset)
    label_field = _label_field(dataset, args)

    def build():
        return review_queue(dataset, label_field, QueueFilter(
            finders=_names(args.finders), classes=_names(args.classes), tags=_names(args.tags),
            min_priority=args.min_priority, include_decided=args.include_decided))

    if args.out:
        from curation.files import atomic_file

        with atomic_file(args.out) as partial:  # a bad path fails before the queue is built
            queue = build()
            queue.assign(finders=queue["finders"].map(",".join)).to_csv(partial, index=False)
        print(f"wrote {len(queue)} rows to {args.out}")
        return 0
    queue = build()
    print(f"{len(queue)} samples to review")
    for row in queue.head(args.limit).itertuples():
        print(f"{row.priority:.3f}  {row.id}  {row.label}  [{','.join(row.finders)}]  {row.reason}")
    return 0


def cmd_decide(args) -> int:
    from curation.datasets import load_dataset
    from curation.decisions import accept_suggestions, apply_relabel, record_decision
    from curation.export import build_view

    dataset = load_dataset(args.dataset)
    label_field = _label_field(dataset, args, may_create=args.decision == "relabel")
    spec = _view_spec(args)
    if spec == type(spec)():
        raise CommandError("decide: name the samples with --ids, --ids-file, --tags, --classes or another view option")
    if args.decision == "relabel" and not args.label and not args.accept_suggestion:
        raise CommandError("decide relabel: expected --label CLASS or --accept-suggestion")
    if (spec.classes or args.decision == "relabel") and not label_field:
        option = "--classes" if spec.classes else "relabel"
        raise CommandError(f"{option} needs a label field; dataset {dataset.name!r} has no classification field")
    _check_known_ids(dataset, spec.ids)
    from dataclasses import replace

    ids = build_view(dataset, label_field, replace(spec, exclude_removed=False)).values("id")
    if not ids:
        raise CommandError(f"no sample matches {_describe_view(args)}; nothing was decided")
    if args.decision == "relabel" and args.accept_suggestion:
        count = accept_suggestions(dataset, ids, label_field=label_field, source="cli")
    elif args.decision == "relabel":
        count = apply_relabel(dataset, ids, args.label, label_field=label_field, reason=args.reason, source="cli")
    else:
        count = record_decision(dataset, ids, args.decision, reason=args.reason, source="cli")
    print(f"{args.decision}: {count} samples")
    return 0


def cmd_undo(args) -> int:
    from curation.datasets import load_dataset
    from curation.decisions import clear_decision, samples_with_history, undo_decision

    dataset = load_dataset(args.dataset)
    ids = list(_read_ids(args))
    if not ids:
        raise CommandError("undo: name the samples with --ids or --ids-file")
    _check_known_ids(dataset, ids)
    idle = len(ids) - len(samples_with_history(dataset, ids))
    count = clear_decision(dataset, ids) if args.all else undo_decision(dataset, ids)
    print(f"undid {count} decision(s)" + (f"; nothing to undo for {idle} sample{'s' if idle != 1 else ''}" if idle else ""))
    return 0


def cmd_split(args) -> int:
    from curation.datasets import load_dataset
    from curation.splits import SplitConfig, check_split_field, make_splits, parse_ratios, write_splits

    dataset = load_dataset(args.dataset)
    check_split_field(dataset, args.field)  # before the work, and in a dry run too
    config = SplitConfig(ratios=parse_ratios(args.ratios), seed=args.seed, group_field=args.group_field,
                         use_duplicate_groups=not args.no_duplicate_groups, balance=args.balance, cap=args.cap,
                         target=args.target, balance_splits=_names(args.balance_splits),
                         exclude_removed=not args.include_removed)
    result = make_splits(dataset, _label_field(dataset, args), config)
    if not args.dry_run:
        write_splits(dataset, result, field=args.field, tags=args.tags)
    print(result.distribution.to_string())
    if result.image_distribution is not None:  # a Detections field: boxes above, images containing each class here
        print(result.image_distribution.to_string())
    counts = ", ".join(f"{name} {count}" for name, count in result.counts().items())
    excluded = result.excluded_count()
    print(f"{'would write' if args.dry_run else 'wrote'} split to field {args.field!r}: {counts}; excluded {excluded}; "
          f"{result.n_groups} groups (largest {result.largest_group})")
    if result.class_weights:
        print("class weights: " + ", ".join(f"{k}={v:.4f}" for k, v in result.class_weights.items()))
    return 0


def cmd_export(args) -> int:
    from curation.datasets import load_dataset
    from curation.export import export_dataset

    dataset = load_dataset(args.dataset)
    embeddings_field = None
    if args.embeddings:
        from curation.embeddings import default_embedding_field

        embeddings_field = args.embeddings_field or default_embedding_field(dataset)
        if not embeddings_field:
            raise CommandError(f"export --embeddings: dataset {args.dataset!r} has no embeddings yet; run "
                               f"`curation embed --dataset {args.dataset}` or leave out --embeddings")
    report = export_dataset(dataset, args.out, format=args.format, label_field=_label_field(dataset, args),
                            spec=_view_spec(args), embeddings_field=embeddings_field, overwrite=args.overwrite,
                            snapshot=args.snapshot)
    if report.removed_leftovers:
        print(f"removed {len(report.removed_leftovers)} leftover(s) of an interrupted export: "
              + ", ".join(str(path) for path in report.removed_leftovers), file=sys.stderr)
    splits = ", ".join(f"{name} {count}" for name, count in report.per_split.items())
    print(f"exported {report.samples} samples ({splits}) as {report.format} to {report.out_dir} from snapshot "
          f"{report.snapshot}; provenance in {report.out_dir / 'provenance.json'}")
    for line in report.left_out_lines():
        print(f"left out {line}", file=sys.stderr)
    return 0


def cmd_relabel_export(args) -> int:
    from curation.datasets import load_dataset
    from curation.export import build_view
    from curation.relabel import export_annotation_task

    dataset = load_dataset(args.dataset)
    label_field = _label_field(dataset, args)
    spec = _view_spec(args)
    ids = None if spec == type(spec)() else build_view(dataset, label_field, spec).values("id")
    task = export_annotation_task(dataset, args.out, format=args.tool, label_field=label_field, sample_ids=ids,
                                  overwrite=args.overwrite)
    boxes = f", {task.n_boxes} boxes" if task.n_boxes else ""
    print(f"wrote a {task.format} task with {task.n_samples} images{boxes} and {len(task.classes)} classes to "
          f"{task.out_dir}")
    return 0


def cmd_relabel_import(args) -> int:
    from curation.datasets import load_dataset
    from curation.relabel import import_annotations

    dataset = load_dataset(args.dataset)
    result = import_annotations(dataset, args.source, label_field=_label_field(dataset, args), format=args.tool,
                                dry_run=args.dry_run)
    for sample_id, old, new in result.changed:
        print(f"{sample_id}: {old} -> {new}")
    for line in result.box_change_lines():
        print(line)
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if result.n_problems > len(result.problems):  # the library lists the first few; the summary counts all
        print(f"problem: ... and {result.n_problems - len(result.problems):,} more problem(s) like these", file=sys.stderr)
    print(result.summary())
    return 0


def _add_view_options(parser: argparse.ArgumentParser) -> None:
    view = parser.add_argument_group("which samples (all options combine)")
    view.add_argument("--ids", help="comma-separated sample ids")
    view.add_argument("--ids-file", help="file with one sample id per line (or a CSV whose first column is id)")
    view.add_argument("--tags", help="samples with any of these tags")
    view.add_argument("--exclude-tags", help="leave out samples with any of these tags")
    view.add_argument("--decisions", help="only these decisions (keep, relabel, annotate, dismiss, none)")
    view.add_argument("--classes", help="only these classes")
    view.add_argument("--max-score", action="append", metavar="FIELD=VALUE",
                      help="leave out samples scoring at or above VALUE, e.g. mislabel_score=0.9 (repeatable)")
    view.add_argument("--split-field", help="field with the split (e.g. curation_split); lays the export out per split")
    view.add_argument("--splits", help="only these splits")
    view.add_argument("--include-removed", action="store_true", help="keep samples decided 'remove'")
    view.add_argument("--label-field", help="classification field (default: the dataset's)")


def _image_size(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels from 32 to 1024 or 'auto', got {text!r}") from None
    if not 32 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels from 32 to 1024 or 'auto', got {text!r}")
    return value


def _add_embed_options(parser: argparse.ArgumentParser) -> None:
    from curation.models import DEFAULT_MODEL, MODEL_REGISTRY

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"one of: {', '.join(sorted(MODEL_REGISTRY))}")
    parser.add_argument("--checkpoint", help="local weights file for the model (air-gapped use)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then cpu), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=_whole_number(1), help="images per forward pass (default: 256 GPU, 32 CPU)")
    parser.add_argument("--workers", type=_whole_number(0), help="image-decoding worker processes (0: in the main process)")
    parser.add_argument("--no-fallback", action="store_true", help="fail instead of using the offline model")
    parser.add_argument("--retry-failed", action="store_true", help="retry images that failed to decode before")
    parser.add_argument("--image-size", type=_image_size, default="auto",
                        help="input size in px for EfficientNet models, or auto (default: 160 for images of 40 px or "
                             "less, else up to 4x the typical side, at most the model's own size); CLIP keeps 224")
    parser.add_argument("--flip-tta", action="store_true",
                        help="average each image's embedding with its mirror's (EfficientNet; twice the cost)")


def _add_map_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-neighbors", type=_whole_number(2), default=15, help="UMAP neighbours, >= 2 (5-50 work well)")
    parser.add_argument("--min-dist", type=_finite_at_least(0), default=0.1, help="UMAP minimum distance, >= 0")


def build_parser() -> argparse.ArgumentParser:
    from curation.datasets import DEFAULT_LABEL_FIELD
    from curation.export import EXPORT_FORMATS
    from curation.importers import FORMATS
    from curation.relabel import EXPORT_FORMATS as RELABEL_TOOLS

    parser = _Parser(prog="curation", description="Curate image datasets: import, embed, map.")
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

    embedding = commands.add_parser("embed", help="compute image (or object) embeddings (resumable, cached)")
    embedding.add_argument("--dataset", required=True)
    _add_embed_options(embedding)
    embedding.add_argument("--patches", metavar="FIELD",
                           help="embed the objects of this Detections field (each box cropped with some context) "
                                "instead of whole images; default model: the field's earlier one, else the images'")
    embedding.add_argument("--context", type=_number_in(0, 1),
                           help="with --patches: margin around each box, a fraction of its size per side (default 0.1)")
    embedding.add_argument("--min-side", type=_whole_number(1),
                           help="with --patches: skip boxes under this many pixels a side (default 2)")
    embedding.add_argument("--engine", choices=("local", "ray"), default="local",
                           help="local: in this process (default); ray: a pool of model actors on a Ray cluster "
                                "(needs `pip install 'curation[ray]'`; see docs/ray.md)")
    embedding.add_argument("--address", help="with --engine ray: the cluster's head (host:port, auto, ray://...); "
                                             "default: RAY_ADDRESS, a cluster started here, else a local one")
    embedding.add_argument("--actors", type=_whole_number(1),
                           help="with --engine ray: model actors (default: one per GPU, else one per 4 CPUs)")
    # No --model given: None, so --patches can default to the model the dataset already uses.
    embedding.set_defaults(handler=cmd_embed, model=None)

    mapping = commands.add_parser("map", help="compute and cache the 2-D UMAP map")
    mapping.add_argument("--dataset", required=True)
    mapping.add_argument("--field", help="embedding field (default: the dataset's latest)")
    _add_map_options(mapping)
    mapping.set_defaults(handler=cmd_map)

    listing = commands.add_parser("datasets", help="list datasets with sample counts and embedding status")
    listing.set_defaults(handler=cmd_datasets)

    demo = commands.add_parser("demo", help="import, embed, map and analyze the bundled demo dataset")
    _add_embed_options(demo)
    _add_map_options(demo)
    demo.set_defaults(handler=cmd_demo)

    calibrating = commands.add_parser("calibrate", help="calibrate the near-duplicate verifier on the dataset's own "
                                      "images again (analyze does it the first time)")
    calibrating.add_argument("--dataset", required=True)
    calibrating.add_argument("--field", help="embedding field (default: the dataset's latest)")
    calibrating.add_argument("--sample-size", type=_whole_number(1), default=None,
                             help="images to edit and look for (default: a tenth of the dataset, 20 to 200)")
    calibrating.add_argument("--target-precision", type=_number_in(0, 1, low_open=True), default=0.9,
                             help="precision expected on the dataset at the chosen threshold, in (0, 1]")
    calibrating.set_defaults(handler=cmd_calibrate)

    analyzing = commands.add_parser("analyze", help="run the finders and store their results on the samples")
    analyzing.add_argument("--dataset", required=True)
    analyzing.add_argument("--finders", help="comma-separated subset (default: all)")
    analyzing.add_argument("--field", help="embedding field (default: the dataset's latest)")
    analyzing.add_argument("--label-field", help="classification field (default: the dataset's)")
    analyzing.add_argument("--split-field", help="field holding train/val/test (default: `split` or split tags)")
    analyzing.add_argument("--patches", metavar="FIELD", help="check the boxes of this Detections field instead of the "
                                                              "images (wrong classes, duplicate boxes, ...)")
    analyzing.add_argument("--predictions", metavar="FIELD", help="with --patches: a model's Detections, for missing, "
                                                                  "spurious and badly located boxes")
    analyzing.add_argument("--engine", choices=("local", "ray"), default="local",
                           help="ray: build the neighbour graph in blocks on a Ray cluster, then run the finders "
                                "here on it (needs `pip install 'curation[ray]'`; see docs/ray.md)")
    analyzing.add_argument("--address", help="with --engine ray: the cluster's head (host:port, auto, ray://...)")
    analyzing.set_defaults(handler=cmd_analyze)

    finding = commands.add_parser("findings", help="write the per-sample findings as CSV")
    finding.add_argument("--dataset", required=True)
    finding.add_argument("--out", required=True, help="CSV file to write (its folder must exist)")
    finding.add_argument("--split-field", help="field for the `split` column (default: the field `curation split` "
                                               "wrote last, else `split`, else train/val/test tags)")
    finding.add_argument("--patches", metavar="FIELD", help="one row per box of this Detections field (after "
                                                            "`analyze --patches FIELD`)")
    finding.set_defaults(handler=cmd_findings)

    queueing = commands.add_parser("queue", help="print or save the ranked review queue of every finder's flags")
    queueing.add_argument("--dataset", required=True)
    queueing.add_argument("--finders", help="comma-separated finders (default: all)")
    queueing.add_argument("--classes", help="only these classes")
    queueing.add_argument("--tags", help="only samples with these tags")
    queueing.add_argument("--min-priority", type=_number_in(0, 1), default=0.0, help="in [0, 1]")
    queueing.add_argument("--include-decided", action="store_true")
    queueing.add_argument("--label-field")
    queueing.add_argument("--limit", type=_whole_number(0), default=20, help="rows to print")
    queueing.add_argument("--out", help="write the whole queue as CSV instead (its folder must exist)")
    queueing.set_defaults(handler=cmd_queue)

    deciding = commands.add_parser("decide", help="record a decision (keep, remove, relabel, annotate, dismiss)")
    deciding.add_argument("--dataset", required=True)
    deciding.add_argument("--decision", required=True, choices=("keep", "remove", "relabel", "annotate", "dismiss"))
    deciding.add_argument("--label", help="the new class, for relabel")
    deciding.add_argument("--accept-suggestion", action="store_true", help="relabel each sample to its suggested label")
    deciding.add_argument("--reason", default="", help="free text stored with the decision")
    _add_view_options(deciding)
    deciding.set_defaults(handler=cmd_decide)

    undoing = commands.add_parser("undo", help="undo the latest decision of samples (--all: every decision)")
    undoing.add_argument("--dataset", required=True)
    undoing.add_argument("--ids", help="comma-separated sample ids")
    undoing.add_argument("--ids-file", help="file with one sample id per line")
    undoing.add_argument("--all", action="store_true", help="undo every decision, back to the original state")
    undoing.set_defaults(handler=cmd_undo)

    splitting = commands.add_parser("split", help="stratified, leakage-free, optionally balanced train/val/test splits")
    splitting.add_argument("--dataset", required=True)
    splitting.add_argument("--ratios", default="0.8,0.1,0.1", help="train,val,test shares, or name=share,...")
    splitting.add_argument("--seed", type=int, default=0)
    splitting.add_argument("--group-field", help="samples sharing this field's value stay in one split (patient, video)")
    splitting.add_argument("--no-duplicate-groups", action="store_true",
                           help="do not keep near-duplicate groups and leak pairs together")
    splitting.add_argument("--balance", default="none", choices=("none", "cap", "undersample", "weights"))
    splitting.add_argument("--cap", type=_whole_number(1), help="samples per class at most (--balance cap)")
    splitting.add_argument("--target", type=_whole_number(1),
                           help="samples per class (--balance undersample; default: smallest class)")
    splitting.add_argument("--balance-splits", default="train", help="splits that balancing applies to")
    splitting.add_argument("--include-removed", action="store_true", help="give samples decided 'remove' a split too")
    splitting.add_argument("--field", default="curation_split", help="sample field to write the split to")
    splitting.add_argument("--tags", action="store_true", help="also tag samples with their split name")
    splitting.add_argument("--label-field", help="a classification field, or a detections field (stratified by the "
                                                 "classes of the boxes)")
    splitting.add_argument("--dry-run", action="store_true", help="print the split without writing it")
    splitting.set_defaults(handler=cmd_split)

    exporting = commands.add_parser("export", help="export a curated subset with a provenance manifest")
    exporting.add_argument("--dataset", required=True)
    exporting.add_argument("--format", required=True, choices=tuple(EXPORT_FORMATS))
    exporting.add_argument("--out", required=True, help="directory to create (never silently replaced)")
    exporting.add_argument("--overwrite", action="store_true", help="replace an existing export directory")
    exporting.add_argument("--embeddings", action="store_true", help="include embeddings (csv, parquet)")
    exporting.add_argument("--embeddings-field", help="which embeddings (default: the dataset's latest)")
    exporting.add_argument("--snapshot", help="export this snapshot's labels, decisions, splits and tags "
                                              "(default: the current state, recorded as a snapshot)")
    _add_view_options(exporting)
    exporting.set_defaults(handler=cmd_export)

    task = commands.add_parser("relabel-export", help="write samples sent to annotation as a CVAT or Label Studio task")
    task.add_argument("--dataset", required=True)
    task.add_argument("--tool", required=True, choices=RELABEL_TOOLS)
    task.add_argument("--out", required=True)
    task.add_argument("--overwrite", action="store_true")
    _add_view_options(task)
    task.set_defaults(handler=cmd_relabel_export)

    corrections = commands.add_parser("relabel-import", help="apply corrected labels from a CVAT or Label Studio export")
    corrections.add_argument("--dataset", required=True)
    corrections.add_argument("--from", dest="source", required=True, help="annotations.xml, a CVAT zip, or Label Studio JSON")
    corrections.add_argument("--tool", choices=RELABEL_TOOLS, help="default: detected from the file")
    corrections.add_argument("--label-field")
    corrections.add_argument("--dry-run", action="store_true", help="show the changes without writing them")
    corrections.set_defaults(handler=cmd_relabel_import)

    doctor = commands.add_parser("doctor", help="check that FiftyOne's database is usable")
    doctor.set_defaults(handler=cmd_doctor)

    server = commands.add_parser("db", help="the database server kept between commands: status, stop")
    server.add_argument("action", choices=("status", "stop"))
    server.set_defaults(handler=cmd_db)
    # Command groups that live in their own modules (imported here: they import this one).
    from curation.cli_annotators import register as register_annotators
    from curation.cli_audit import register as register_audit
    from curation.cli_snapshots import register as register_snapshots

    register_annotators(commands)
    register_audit(commands)
    from curation.cli_compare import register as register_compare
    register_compare(commands)
    register_snapshots(commands)
    return parser


# Commands that do not start the kept database server (curation.db_server): `db` manages it,
# `doctor` checks the bundled mongod itself.
_NO_KEPT_SERVER = {"db", "doctor"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command not in _NO_KEPT_SERVER:
            from curation.db_server import ensure_server

            ensure_server()  # before fiftyone connects: it then attaches to the kept service in milliseconds
        return args.handler(args)
    except (CurationError, OSError) as error:
        print(f"curation {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"curation {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
