"""``curation audit start|answer|report``: estimate the share of wrong labels from a reviewed sample.

``curation.cli.build_parser`` calls :func:`register` with its subcommands object.
"""

from __future__ import annotations

import csv
import json
import sys


def register(commands) -> None:
    """Add ``audit`` with its ``start``, ``answer`` and ``report`` subcommands to ``commands``."""
    from curation.audit import DESIGNS
    from curation.cli import _number_in, _whole_number

    audit = commands.add_parser("audit", help="estimate the share of wrong labels from a reviewed random sample")
    steps = audit.add_subparsers(dest="audit_command", required=True)

    start = steps.add_parser("start", help="draw the samples to review (known inclusion probabilities)")
    start.add_argument("--dataset", required=True)
    start.add_argument("--size", required=True, type=_whole_number(1), help="samples to draw")
    start.add_argument("--design", choices=DESIGNS, default="uniform",
                       help="uniform; stratified by class; or stratified by mislabel score (oversamples high scores)")
    start.add_argument("--seed", type=_whole_number(0), default=0)
    start.add_argument("--out", help="write the drawn ids as CSV (column id)")
    start.add_argument("--replace", action="store_true", help="discard an open audit and draw a new one")
    start.set_defaults(handler=cmd_audit_start)

    answering = steps.add_parser("answer", help="record verdicts from a CSV with columns id, verdict, label")
    answering.add_argument("--dataset", required=True)
    answering.add_argument("--from", dest="source", required=True, help="CSV: id, verdict (correct|wrong|unsure), "
                           "label (the right class when wrong; optional)")
    answering.add_argument("--no-relabel", action="store_true", help="record wrong verdicts without relabelling")
    answering.set_defaults(handler=cmd_audit_answer)

    report = steps.add_parser("report", help="estimated error rate with 95%% intervals, overall and per class")
    report.add_argument("--dataset", required=True)
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--margin", type=_number_in(0, 1, low_open=True), default=0.02,
                        help="target half-width of the interval, for the verdicts-needed estimate")
    report.set_defaults(handler=cmd_audit_report)


def cmd_audit_start(args) -> int:
    from curation.audit import start_audit
    from curation.datasets import load_dataset
    from curation.files import atomic_file

    dataset = load_dataset(args.dataset)
    if args.out:  # fail on a bad --out before drawing
        from pathlib import Path

        target = Path(args.out).expanduser()
        if target.is_dir():
            from curation.cli import CommandError

            raise CommandError(f"--out {args.out}: is a folder, expected a CSV file path")
        if not target.parent.is_dir():
            raise FileNotFoundError(2, "folder does not exist", str(target.parent))
    started = start_audit(dataset, args.size, args.design, args.seed, replace=args.replace)
    if args.out:
        with atomic_file(args.out) as partial:
            with open(partial, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id"])
                writer.writerows([sample_id] for sample_id in started.ids)
    strata = ", ".join(f"{s['name']}: {s['drawn']}/{s['size']}" for s in started.strata)
    print(f"audit {started.audit_id}: drew {len(started.ids)} samples ({started.design}; {strata})"
          + (f"; ids written to {args.out}" if args.out else ""))
    return 0


def _read_verdicts(path: str) -> list[dict]:
    from curation.cli import CommandError

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.DictReader(handle)
        columns = [str(name).strip().lower() for name in (reader.fieldnames or [])]
        if "id" not in columns or "verdict" not in columns:
            shown = ", ".join(columns[:10]) or "none"
            raise CommandError(f"{path}: expected columns id, verdict (and optional label); got {shown}")
        rows = []
        for row in reader:
            rows.append({str(k).strip().lower(): v for k, v in row.items() if k is not None})
            if len(rows) > 1_000_000:
                raise CommandError(f"{path}: more than 1,000,000 rows")
    return rows


def cmd_audit_answer(args) -> int:
    from curation.audit import answer
    from curation.datasets import load_dataset

    dataset = load_dataset(args.dataset)
    rows = _read_verdicts(args.source)
    result = answer(dataset, rows, relabel=not args.no_relabel)
    print(f"recorded {result.recorded} verdicts; relabelled {result.relabeled} samples; "
          f"rejected {len(result.rejected)} rows")
    for message in result.rejected[:50]:
        print(f"curation audit answer: rejected {message}", file=sys.stderr)
    if len(result.rejected) > 50:
        print(f"curation audit answer: ... and {len(result.rejected) - 50} more rejected rows", file=sys.stderr)
    return 1 if result.rejected else 0


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def cmd_audit_report(args) -> int:
    from curation.audit import audit_report
    from curation.datasets import load_dataset

    report = audit_report(load_dataset(args.dataset), margin=args.margin)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"audit {report['audit_id']} ({report['design']}, {report['n_drawn']} drawn of {report['population']}): "
          f"{report['n_answered']} answered, {report['n_unsure']} unsure (excluded), {report['n_pending']} pending")
    if report["error_rate"] is None:
        print("no correct/wrong verdicts yet")
    else:
        print(f"wrong labels: {_percent(report['error_rate'])} (95% CI {_percent(report['ci_low'])}"
              f"-{_percent(report['ci_high'])}); about {report['projected_wrong']} of {report['population']} "
              f"({report['projected_wrong_low']}-{report['projected_wrong_high']})")
    if report["more_verdicts_for_margin"] is not None:
        print(f"about {report['more_verdicts_for_margin']} more verdicts (same design) for a margin of "
              f"+/-{_percent(report['margin'])}")
    for name, part in report["per_class"].items():
        print(f"  {name}: {_percent(part['error_rate'])} ({_percent(part['ci_low'])}-{_percent(part['ci_high'])}), "
              f"{part['n_wrong']} wrong of {part['n_answered']}")
    return 0
