"""Where the library keeps its own files (caches that can always be rebuilt)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of rebuildable caches: thumbnails and map projections.

    ``CURATION_CACHE_DIR`` overrides the default ``~/.cache/curation``.
    """
    root = Path(os.environ.get("CURATION_CACHE_DIR") or Path.home() / ".cache" / "curation")
    root.mkdir(parents=True, exist_ok=True)
    return root


def export_root() -> Path:
    """Where the app proposes to write exports: ``CURATION_EXPORT_DIR``, else ``./exports``."""
    return Path(os.environ.get("CURATION_EXPORT_DIR") or Path.cwd() / "exports").expanduser()


def default_export_dir(dataset_name: str, kind: str) -> Path:
    """A new, timestamped directory name for an export of ``dataset_name`` (not created)."""
    import datetime as dt
    import re

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name).strip("-") or "dataset"
    return export_root() / safe / f"{kind}-{stamp}"
