"""``curation snapshot create|list|diff|restore|undo|trend``: versions of a dataset's curation state.

``curation.cli.build_parser`` calls :func:`register` with its subcommands object.
"""

from __future__ import annotations

import json
import math


def register(commands) -> None:
    """Add ``snapshot`` with its subcommands to ``commands``."""
    snapshot = commands.add_parser("snapshot", help="record, list, compare and restore versions of the curation state")
    steps = snapshot.add_subparsers(dest="snapshot_command", required=True)

    create = steps.add_parser("create", help="record the labels, decisions, splits and tags of every sample")
    create.add_argument("--dataset", required=True)
    create.add_argument("--name", help="letters, digits, '.', '_', '-' (default: the next vN)")
    create.add_argument("--note", default="", help="why this version matters")
    create.set_defaults(handler=cmd_create)

    listing = steps.add_parser("list", help="the dataset's snapshots, oldest first")
    listing.add_argument("--dataset", required=True)
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--kind", choices=("manual", "auto", "export"), action="append",
                         help="only these kinds (repeatable; default: all)")
    listing.set_defaults(handler=cmd_list)

    diff = steps.add_parser("diff", help="what changed from snapshot A to snapshot B (default: the current state)")
    diff.add_argument("--dataset", required=True)
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B", nargs="?", default=None, help="a snapshot name, or 'current' (default)")
    diff.add_argument("--json", action="store_true")
    diff.add_argument("--limit", type=int, default=None, help="at most this many samples per list (JSON and text)")
    diff.set_defaults(handler=cmd_diff)

    restore = steps.add_parser("restore", help="bring back a snapshot's labels, decisions, splits and tags "
                                               "(one new, undoable change)")
    restore.add_argument("--dataset", required=True)
    restore.add_argument("snapshot", metavar="SNAPSHOT")
    restore.set_defaults(handler=cmd_restore)

    undo = steps.add_parser("undo", help="undo the latest restore (a second undo redoes it)")
    undo.add_argument("--dataset", required=True)
    undo.set_defaults(handler=cmd_undo)

    trending = steps.add_parser("trend", help="quality figures per snapshot, the current state last")
    trending.add_argument("--dataset", required=True)
    trending.add_argument("--json", action="store_true")
    trending.add_argument("--all", action="store_true", help="include the automatic snapshots taken before bulk changes")
    trending.set_defaults(handler=cmd_trend)


def _load(name: str):
    from curation.datasets import load_dataset

    return load_dataset(name)


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def cmd_create(args) -> int:
    from curation.snapshots import create_snapshot

    ref = create_snapshot(_load(args.dataset), args.name, note=args.note)
    quality = ref.quality
    print(f"snapshot {ref.name} of {args.dataset}: {ref.samples} samples, {quality.get('classes')} classes, "
          f"{quality.get('decisions_made')} decisions, {_size(ref.size_bytes)}")
    return 0


def cmd_list(args) -> int:
    from curation.snapshots import list_snapshots

    refs = list_snapshots(_load(args.dataset), kinds=tuple(args.kind) if args.kind else None)
    if args.json:
        print(json.dumps([ref.to_dict() for ref in refs], indent=2, default=str))
        return 0
    if not refs:
        print(f"no snapshots of {args.dataset} yet: curation snapshot create --dataset {args.dataset}")
        return 0
    for ref in refs:
        what = ref.note or ref.reason
        print(f"{ref.name:<32} {ref.created_at}  {ref.kind:<6} {ref.samples:>9} samples  {_size(ref.size_bytes):>9}"
              + (f"  {what}" if what else ""))
    return 0


def cmd_diff(args) -> int:
    from curation.snapshots import diff_snapshots

    diff = diff_snapshots(_load(args.dataset), args.a, args.b)
    if args.json:
        print(json.dumps(diff.to_dict(limit=args.limit), indent=2, default=str))
        return 0
    counts = diff.counts()
    print(f"{diff.a} -> {diff.b}: " + ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.items()))
    limit = args.limit if args.limit is not None else 20
    pairs = diff.transitions()
    if len(pairs):
        print("relabelled (from -> to: samples):")
        for row in pairs.head(limit).itertuples(index=False):
            print(f"  {row[0]} -> {row[1]}: {row[2]}")
    for title, frame, columns in (("relabelled", diff.relabelled, ("id", "from", "to", "filepath")),
                                  ("decisions changed", diff.decisions_changed, ("id", "from", "to", "filepath")),
                                  ("split moves", diff.split_moves, ("id", "field", "from", "to")),
                                  ("tag changes", diff.tag_changes, ("id", "added", "removed")),
                                  ("added", diff.added, ("id", "label", "filepath")),
                                  ("removed", diff.removed, ("id", "label", "filepath"))):
        if len(frame):
            print(f"{title}:")
            for row in frame.head(limit).itertuples(index=False):
                values = dict(zip(frame.columns, row))
                print("  " + "  ".join(f"{values[c]}" for c in columns))
            if len(frame) > limit:
                print(f"  ... and {len(frame) - limit} more (--limit, --json)")
    return 0


def cmd_restore(args) -> int:
    from curation.snapshots import restore_snapshot

    print(restore_snapshot(_load(args.dataset), args.snapshot).summary())
    return 0


def cmd_undo(args) -> int:
    from curation.snapshots import undo_restore

    print(undo_restore(_load(args.dataset)).summary())
    return 0


def _shown(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def cmd_trend(args) -> int:
    from curation.snapshots import trend

    table = trend(_load(args.dataset), include_auto=args.all)
    if args.json:
        print(table.to_json(orient="records", indent=2))
        return 0
    columns = ["name", "created_at", "samples", "classes", "imbalance_ratio", "suspected_mislabels",
               "duplicate_groups", "leaks", "audit_error_rate", "agreement_alpha", "decisions_made"]
    print("  ".join(columns))
    for row in table[columns].itertuples(index=False):
        print("  ".join(_shown(value) for value in row))
    return 0
