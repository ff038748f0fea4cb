"""Finders: one module per detector, one registry (name -> "module:function").

Every finder takes a :class:`~curation.finders.base.FinderContext` and returns a
:class:`~curation.finders.base.FinderResult`. Adding a finder is a new module plus one line
here.
"""

from __future__ import annotations

import importlib
from typing import Callable

from curation.errors import CurationError

FINDER_REGISTRY: dict[str, str] = {
    "duplicates": "curation.finders.duplicates:find_duplicates",
    "leakage": "curation.finders.duplicates:find_leaks",
    "mislabels": "curation.finders.mislabels:find_mislabels",
    "outliers": "curation.finders.outliers:find_outliers",
    "label_next": "curation.finders.label_next:find_label_next",
}


class UnknownFinderError(CurationError, ValueError):
    pass


def get_finder(name: str) -> Callable:
    """The finder function registered as ``name``.

    Raises:
        UnknownFinderError: not registered (the message lists the valid names).
    """
    if name not in FINDER_REGISTRY:
        raise UnknownFinderError(f"unknown finder {name!r}. Available: {', '.join(FINDER_REGISTRY)}")
    module, function = FINDER_REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), function)
