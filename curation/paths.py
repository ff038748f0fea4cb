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
