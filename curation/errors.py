"""The one exception base of the library.

Every failure the library reports to a person (a missing dataset, a bad file, an option
value out of range) is a :class:`CurationError`; the CLI turns those, and ``OSError``,
into one line on stderr. Anything else is a programming error and keeps its traceback.

Subclasses keep a second, standard base where callers already catch it (``ValueError``
for bad input, ``LookupError`` for a missing dataset, ``RuntimeError`` for an unusable
service), so ``except ValueError`` around a library call still works.
"""

from __future__ import annotations


class CurationError(Exception):
    """A failure with a one-line reason for the user: what was expected and what arrived."""


class CurationInputError(CurationError, ValueError):
    """An argument, option value or file content that the library cannot use."""


class MissingFieldError(CurationError, KeyError):
    """A sample field (or other named thing) the operation needs does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
