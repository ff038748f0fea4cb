"""Finders: one module per detector, one registry (name -> module that exports ``SPEC``).

Every finder module exports ``SPEC``, a :class:`~curation.finders.base.FinderSpec`: its
function (which takes a :class:`~curation.finders.base.FinderContext` and returns a
:class:`~curation.finders.base.FinderResult`), the sample fields it writes, its flag, how
the review queue ranks and explains it, and what it needs. The analysis, the findings CSV,
the review queue and the pages iterate :func:`finder_specs`. Adding a finder is a new
module plus one line here; the order here is the order of the findings CSV columns, of the
queue's finders and of a default run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from curation.errors import CurationError

if TYPE_CHECKING:
    from curation.finders.base import FinderSpec

# name -> module exporting SPEC (imported on first use: some finders load heavy libraries).
# A FinderSpec object may stand in for the module path (tests, plug-ins).
FINDER_REGISTRY: dict[str, "str | FinderSpec"] = {
    "mislabels": "curation.finders.mislabels",
    "duplicates": "curation.finders.duplicates",
    "leakage": "curation.finders.leakage",
    "outliers": "curation.finders.outliers",
    "label_next": "curation.finders.label_next",
    "image_quality": "curation.finders.image_quality",
    "disagreement": "curation.finders.disagreement",
}


class UnknownFinderError(CurationError, ValueError):
    pass


def get_spec(name: str) -> "FinderSpec":
    """The spec of the finder registered as ``name``.

    Raises:
        UnknownFinderError: not registered (the message lists the valid names).
    """
    if name not in FINDER_REGISTRY:
        raise UnknownFinderError(f"unknown finder {name!r}. Available: {', '.join(FINDER_REGISTRY)}")
    entry = FINDER_REGISTRY[name]
    spec = importlib.import_module(entry).SPEC if isinstance(entry, str) else entry
    if spec.name != name:
        raise UnknownFinderError(f"finder registered as {name!r} calls itself {spec.name!r}")
    return spec


def finder_specs() -> list["FinderSpec"]:
    """Every registered spec, in registry order (read at call time, so a finder registered
    later is included)."""
    return [get_spec(name) for name in FINDER_REGISTRY]


def get_finder(name: str) -> Callable:
    """The finder function registered as ``name``.

    Raises:
        UnknownFinderError: not registered (the message lists the valid names).
    """
    return get_spec(name).function
