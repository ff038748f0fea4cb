"""Writing files safely: atomic files and directories, stale leftovers, and paths that stay
inside the folder the user chose.

- :func:`atomic_file` and :func:`atomic_directory` build the result under a hidden sibling
  name (``.NAME.partial-PID-XXXXXXXX``) and rename it into place only when it is complete,
  so a reader sees the old result or the new one, never half of one; a failure (or Ctrl-C)
  removes what was built. An existing target is refused unless ``overwrite``; a replaced
  directory is restored if the final rename fails.
- A process killed with ``kill -9`` cannot clean up: :func:`clean_stale_partials` removes
  leftovers whose process is gone, and the writers call it before they start.
- :func:`safe_component` maps a name that came from data (a class, a split) to a folder
  name that cannot leave its parent; :class:`SafeNames` keeps distinct names distinct;
  :func:`ensure_inside` checks a final path against its root.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import unicodedata
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from curation.errors import CurationError, CurationInputError

logger = logging.getLogger(__name__)

PARTIAL_MARKER = ".partial-"
_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.partial-(?:(?P<pid>\d+)-)?[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?$")


class UnsafePathError(CurationError, ValueError):
    """A path built from data would resolve outside the folder it must stay in."""


def _partial_name(target: Path, suffix: str = "") -> Path:
    return target.with_name(f".{target.name}{PARTIAL_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_partials(target: Path | str, *, log: bool = True) -> list[Path]:
    """Remove leftovers of interrupted writes of ``target`` whose writing process is gone.

    Leftovers of a live process (another export running right now) are kept. Names without
    a process id (written by older versions) count as stale. Returns what was removed;
    ``log=False`` leaves the warning about them to a caller that reports them itself.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    removed = []
    for entry in parent.iterdir():
        match = _PARTIAL_RE.match(entry.name)
        if not match or match.group("name") != target.name:
            continue
        pid = match.group("pid")
        if pid is not None and _pid_alive(int(pid)):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as error:
            logger.warning("could not remove the leftover %s of an interrupted write: %s", entry, error)
            continue
        removed.append(entry)
    if removed and log:
        logger.warning("removed %d leftover(s) of an interrupted write of %s: %s", len(removed), target,
                       ", ".join(p.name for p in removed))
    return removed


def _check_target(target: Path, *, overwrite: bool, kind: str) -> None:
    if target.is_dir() and kind == "file":
        raise CurationInputError(f"{target} is a directory; expected a file name to write")
    if target.exists() and kind == "directory" and not target.is_dir():
        raise CurationInputError(f"{target} is a file; expected a directory to create")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(f"{target} already exists; choose a new name or pass overwrite")


def _check_parent(target: Path, make_parents: bool) -> None:
    if target.parent.is_dir():
        return
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        raise FileNotFoundError(f"{target.parent} does not exist; create the folder first or choose another path")


@contextmanager
def atomic_file(path: Path | str, *, overwrite: bool = True, make_parents: bool = False,
                clean_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    ``clean_stale=False`` skips :func:`clean_stale_partials` (it lists the folder): for
    caches that write many small files into one folder, such as thumbnails.

    Raises:
        CurationInputError: ``path`` is a directory.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: the parent folder does not exist and ``make_parents`` is False.
    """
    target = Path(path).expanduser()
    _check_target(target, overwrite=overwrite, kind="file")
    _check_parent(target, make_parents)
    if clean_stale:
        clean_stale_partials(target)
    partial = _partial_name(target, target.suffix)
    try:
        yield partial
        os.replace(partial, target)
    finally:
        if partial.exists() or partial.is_symlink():
            partial.unlink()


def write_text_atomic(path: Path | str, text: str, **options) -> Path:
    """Write ``text`` to ``path`` with :func:`atomic_file`; returns the path."""
    with atomic_file(path, **options) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_directory(path: Path | str, *, overwrite: bool = False, make_parents: bool = True,
                     mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty hidden sibling directory; on success it becomes ``path``.

    With ``overwrite`` an existing ``path`` is replaced only once the new one is complete
    (moved aside, the new one renamed in, the old one deleted; restored if the rename fails).

    Raises:
        FileExistsError: ``path`` exists (or appears meanwhile) and ``overwrite`` is False.
        CurationInputError: ``path`` is a file.
    """
    target = Path(path).expanduser().absolute()
    _check_target(target, overwrite=overwrite, kind="directory")
    _check_parent(target, make_parents)
    clean_stale_partials(target)
    staging = _partial_name(target)
    staging.mkdir(mode=mode)
    try:
        yield staging
        _move_into_place(staging, target, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, target: Path, overwrite: bool) -> None:
    if not target.exists() and not target.is_symlink():
        try:
            os.rename(staging, target)  # an empty directory appearing meanwhile would be replaced: checked below
            return
        except OSError:
            if not target.exists():
                raise
    if not overwrite:
        raise FileExistsError(f"{target} appeared while writing; the new result was not moved there")
    retired = _partial_name(target, ".replaced")
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(retired, target)
        raise
    try:
        if retired.is_dir() and not retired.is_symlink():
            shutil.rmtree(retired)
        else:
            retired.unlink()
    except OSError as error:
        logger.warning("the replaced %s was moved to %s but could not be deleted: %s", target, retired, error)


_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_component(name: object, *, max_length: int = 120) -> str:
    """A single folder or file name made from ``name`` that cannot leave its parent folder.

    Separators, control characters and characters Windows forbids become ``_``; leading
    dots and spaces are dropped (no ``..``, no hidden names); an empty result becomes ``_``.
    Readable names pass unchanged: ``"T-shirt/top"`` -> ``"T-shirt_top"``, ``"cat"`` -> ``"cat"``.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = _UNSAFE_CHARS.sub("_", text).strip().lstrip(". ").rstrip(". ")
    if text.split(".")[0].upper() in _RESERVED:
        text = f"_{text}"
    text = text[:max_length] or "_"
    return text


class SafeNames:
    """Distinct names -> distinct safe folder names (``a/b`` and ``a_b`` -> ``a_b``, ``a_b-2``).

    ``mapping`` keeps every name that changed, for the labels file and the manifest.
    ``reserved`` names are never handed out (e.g. a file the writer puts beside the folders).
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._by_name: dict[str, str] = {}
        self._used: set[str] = {name.lower() for name in reserved}

    def __call__(self, name: object) -> str:
        key = str(name)
        if key in self._by_name:
            return self._by_name[key]
        base = candidate = safe_component(key)
        count = 1
        while candidate.lower() in self._used:  # case-insensitive file systems would merge them
            count += 1
            candidate = f"{base}-{count}"
        self._used.add(candidate.lower())
        self._by_name[key] = candidate
        return candidate

    @property
    def mapping(self) -> dict[str, str]:
        """``{original: folder}`` for the names that had to change."""
        return {name: safe for name, safe in self._by_name.items() if name != safe}


def ensure_inside(root: Path | str, path: Path | str) -> Path:
    """``path`` resolved; raises :class:`UnsafePathError` if it is not inside ``root``."""
    root_resolved = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise UnsafePathError(f"refusing to write {path}: it resolves to {resolved}, outside {root_resolved}")
    return resolved


def files_outside(root: Path | str, paths) -> list[Path]:
    """The paths among ``paths`` that resolve outside ``root`` (for checks after a third-party writer)."""
    root_resolved = Path(root).resolve()
    outside = []
    for path in paths:
        resolved = Path(path).resolve()
        if resolved != root_resolved and root_resolved not in resolved.parents:
            outside.append(resolved)
    return outside
