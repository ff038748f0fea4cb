"""Dataset curation for image datasets: a library and CLI that never import streamlit.

Importing this package sets FiftyOne's environment defaults (no usage tracking) before
FiftyOne itself is imported anywhere in the process.
"""

from __future__ import annotations

import os

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
# The FiftyOne App's own server is not used; keep FiftyOne quiet about upgrades.
os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
# The ubuntu2204 mongod is 6.0; FiftyOne warns on every start that 6.0 is its oldest supported.
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

__version__ = "0.1.0"
