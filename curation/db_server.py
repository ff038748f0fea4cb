"""Keeps FiftyOne's database service running between commands, so a command connects in milliseconds.

Without this, every ``curation`` command starts FiftyOne's database service (a Python
process that imports fiftyone and starts ``mongod``, about 3 s) and the service stops again
when the command's process exits: FiftyOne stops ``mongod`` when its last client goes.

Design: a small *keeper* process (this module, ``python -m curation.db_server keep``; it
imports pymongo and psutil, not fiftyone) holds FiftyOne's **own** database service open,
exactly as a FiftyOne process would: it either starts the service with FiftyOne's command
line (``service/main.py --51-service db --multi mongod --dbpath <database_dir> ...``) and
stays its parent, or, when a FiftyOne process started the service already, registers
itself as one more client over the service's own IPC message (``("register", pid)``).
Commands then reach the database the way FiftyOne always does: ``fiftyone`` finds the
running service by its command line, registers, and connects to its ``mongod`` port, so
no ``FIFTYONE_DATABASE_URI`` is set and FiftyOne's settings are untouched. The keeper lets
go after ``CURATION_DB_IDLE_MINUTES`` (default 30) minutes without a client connection
(``$currentOp`` with idle connections, its own left out); the service then stops ``mongod``
as soon as its other clients (an open app, a notebook) have exited, as it always does.

Why not a ``mongod`` of our own reached through ``FIFTYONE_DATABASE_URI``: only one
``mongod`` can open a database directory. With our own ``mongod`` on FiftyOne's directory,
every plain FiftyOne script of the user (a notebook, a Datalab script) would start FiftyOne's
service, whose ``mongod`` cannot open the locked directory, and the script would fail.
Holding FiftyOne's own service keeps those scripts working, and makes them fast too.

State: ``curation-db-server.json`` (mode 0600; keeper, service and ``mongod`` pids, port,
database dir) and ``curation-db-server.lock`` (``flock``; two commands starting at once
start one keeper) in the database dir. A state file is trusted only when it is ours
(owner, not group- or world-writable), names this database dir, and its keeper and
service are alive with the expected command lines and the service's ``mongod`` listens on
the recorded port; otherwise it is stale and removed.

Nothing is kept when ``FIFTYONE_DATABASE_URI`` (or ``database_uri`` in FiftyOne's config)
names a server, when ``CURATION_DB_IDLE_MINUTES=0``, or when FiftyOne's services are
disabled; nor when FiftyOne's service already runs for *another* database dir (FiftyOne
attaches to any running service of the user whatever its directory, so it would use that
one anyway). Library imports never start a keeper: only the CLI and the app call
:func:`ensure_server`.

Command line: ``python -m curation.db_server status|stop`` (``curation db status|stop``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from curation.errors import CurationError, CurationInputError

logger = logging.getLogger(__name__)

IDLE_ENV = "CURATION_DB_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
STATE_NAME = "curation-db-server.json"
LOCK_NAME = "curation-db-server.lock"
KEEPER_LOG = "curation-db-server.log"  # in <database_dir>/log, beside FiftyOne's mongo.log
KEEPER_APPNAME = "curation-db-keeper"
SERVICE_ARGS = ["--51-service", "db", "--multi"]  # how FiftyOne finds its database service
START_TIMEOUT_S = 60.0  # FiftyOne itself waits 60 s for its mongod to listen
LOCK_TIMEOUT_S = 90.0  # longer than a start, which runs under the lock
_DEFAULT_DATABASE_DIR = Path("~/.fiftyone/var/lib/mongo")  # fiftyone.constants.DEFAULT_DB_DIR


class ServerError(CurationError, RuntimeError):
    """The kept database server could not be started, reached or stopped."""


@dataclass(frozen=True)
class DatabaseSettings:
    """FiftyOne's database settings as FiftyOne reads them (environment, then its
    config.json, then its defaults), read without importing fiftyone."""

    uri: str | None
    database_dir: Path
    database_name: str


@dataclass(frozen=True)
class ServerState:
    """What the state file records about a kept server."""

    keeper_pid: int
    service_pid: int
    mongod_pid: int
    port: int
    database_dir: str
    idle_minutes: float
    started_at: float
    adopted: bool  # True: FiftyOne's service was running already; the keeper only registered with it

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class ServerStatus:
    """What :func:`server_status` found; ``mode`` is one of ``uri``, ``kept``, ``fiftyone``,
    ``none`` or ``off``."""

    mode: str
    detail: str
    state: ServerState | None = None
    clients: int | None = None


def fiftyone_settings() -> DatabaseSettings:
    """FiftyOne's ``database_uri``, ``database_dir`` and ``database_name``, resolved like
    ``fiftyone.core.config.load_config`` (environment variable, then ``config.json`` at
    ``FIFTYONE_CONFIG_PATH`` or ``~/.fiftyone/config.json``, then the default).

    Raises:
        ServerError: FiftyOne's config.json cannot be read (FiftyOne would fail on it too).
    """
    config_path = Path(os.environ.get("FIFTYONE_CONFIG_PATH") or "~/.fiftyone/config.json").expanduser()
    config: dict = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            raise ServerError(f"cannot read FiftyOne's config {config_path}: {error}") from None

    def setting(name: str, env: str):
        value = os.environ.get(env)
        return value if value is not None else config.get(name)

    directory = setting("database_dir", "FIFTYONE_DATABASE_DIR") or _DEFAULT_DATABASE_DIR
    return DatabaseSettings(
        uri=setting("database_uri", "FIFTYONE_DATABASE_URI") or None,
        database_dir=Path(os.path.abspath(Path(directory).expanduser())),
        database_name=setting("database_name", "FIFTYONE_DATABASE_NAME") or "fiftyone",
    )


def idle_minutes() -> float:
    """``CURATION_DB_IDLE_MINUTES``: minutes without a client before the kept server stops
    (default 30; 0 turns keeping off; fractions allowed).

    Raises:
        CurationInputError: the variable is not a finite number >= 0.
    """
    text = os.environ.get(IDLE_ENV, "").strip()
    if not text:
        return DEFAULT_IDLE_MINUTES
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value != float("inf")):
        raise CurationInputError(f"{IDLE_ENV}: expected a number of minutes >= 0 (0 turns the kept database "
                                 f"server off), got {text!r}")
    return value


# ---- processes -------------------------------------------------------------------------


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _option(cmdline: list[str], name: str) -> str | None:
    """The value after ``name`` in a command line (``--dbpath /x``), or None."""
    for index, part in enumerate(cmdline[:-1]):
        if part == name:
            return cmdline[index + 1]
    return None


def _same_dir(a: str | Path | None, b: str | Path) -> bool:
    return a is not None and os.path.abspath(a) == os.path.abspath(b)


def find_services() -> list:
    """FiftyOne database services of this user (``psutil.Process``), as FiftyOne finds them."""
    import psutil

    user = psutil.Process().username()
    found = []
    for process in psutil.process_iter(["cmdline", "username"]):
        cmdline = process.info["cmdline"] or []
        if process.info["username"] != user or process.pid == os.getpid():
            continue
        if any(cmdline[i:i + len(SERVICE_ARGS)] == SERVICE_ARGS for i in range(len(cmdline))):
            found.append(process)
    return found


def _service_dir(service) -> str | None:
    return _option(_cmdline(service), "--dbpath")


def _mongod_of(service):
    """The ``mongod`` child of a service process and the TCP ports it listens on."""
    import psutil

    try:
        children = service.children(recursive=True)
    except psutil.Error:
        return None, []
    for child in children:
        cmdline = _cmdline(child)
        if cmdline and Path(cmdline[0]).name.startswith("mongod"):
            try:
                ports = [c.laddr[1] for c in child.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                ports = []
            return child, ports
    return None, []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- state file and lock ---------------------------------------------------------------


def _state_path(database_dir: Path) -> Path:
    return Path(database_dir) / STATE_NAME


@contextlib.contextmanager
def _locked(database_dir: Path, timeout: float = LOCK_TIMEOUT_S):
    """An exclusive ``flock`` on the database dir's lock file (created 0600)."""
    import fcntl

    database_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(database_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise ServerError(f"another command holds {database_dir / LOCK_NAME} for over {timeout:.0f} s; "
                                      "try again, or stop it with `curation db stop`") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _write_state(state: ServerState) -> None:
    path = _state_path(Path(state.database_dir))
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(asdict(state), handle)
    os.replace(partial, path)


def _remove_state(database_dir: Path, keeper_pid: int | None = None) -> None:
    """Remove the state file (only if it names ``keeper_pid``, when given)."""
    path = _state_path(database_dir)
    if keeper_pid is not None:
        state = _read_state_file(path)
        if state is not None and state.keeper_pid != keeper_pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _read_state_file(path: Path) -> ServerState | None:
    """The state recorded in ``path`` if the file is ours and well formed, else None."""
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            logger.warning("ignoring %s: not owned by this user or writable by others", path)
            return None
        return ServerState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        return None


def _verified_state(database_dir: Path, *, remove_stale: bool = False) -> ServerState | None:
    """The recorded server if it is alive and is what the file says, else None. With
    ``remove_stale`` (callers that hold the lock: a keeper may be writing a new file) a
    stale file of ours is removed."""
    path = _state_path(database_dir)
    if not path.exists():
        return None
    state = _read_state_file(path)
    problem = _state_problem(state, database_dir)
    if problem is None:
        return state
    logger.info("stale %s: %s", path, problem)
    if remove_stale:
        with contextlib.suppress(OSError):
            if path.stat().st_uid == os.getuid():
                _remove_state(database_dir)
    return None


def _state_problem(state: ServerState | None, database_dir: Path) -> str | None:
    if state is None:
        return "unreadable"
    if not _same_dir(state.database_dir, database_dir):
        return f"it names another database dir, {state.database_dir}"
    keeper = _process(state.keeper_pid)
    cmdline = _cmdline(keeper) if keeper else []
    if "curation.db_server" not in " ".join(cmdline) or not _same_dir(_option(cmdline, "--dbpath"), database_dir):
        return f"keeper {state.keeper_pid} is not running"
    service = _process(state.service_pid)
    cmdline = _cmdline(service) if service else []
    if not any(cmdline[i:i + 3] == SERVICE_ARGS for i in range(len(cmdline))) or \
            not _same_dir(_option(cmdline, "--dbpath"), database_dir):
        return f"FiftyOne's database service {state.service_pid} is not running"
    mongod, ports = _mongod_of(service)
    if mongod is None or mongod.pid != state.mongod_pid or state.port not in ports:
        return f"no mongod of that service listens on port {state.port}"
    return None


def _process(pid: int):
    import psutil

    try:
        process = psutil.Process(pid)
        return process if process.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


# ---- starting ---------------------------------------------------------------------------

_ensured: dict[Path, ServerState | None] = {}


def ensure_server(*, timeout: float = START_TIMEOUT_S) -> ServerState | None:
    """Make sure FiftyOne's database service for this user's database dir is kept running.

    Call before the process first uses the database (FiftyOne attaches to the service on its
    first connection). Cheap when a server is kept already (a lock, a state file, a few
    ``/proc`` reads): it then only marks the server as used. Returns the kept server, or None
    when nothing is kept (a URI is set, keeping is off, FiftyOne's service of another
    database dir runs, or the start failed: then FiftyOne starts its service as it always
    did, and the reason is logged).

    Raises:
        CurationInputError: ``CURATION_DB_IDLE_MINUTES`` is not a number >= 0.
        ServerError: FiftyOne's config.json cannot be read.
    """
    minutes = idle_minutes()
    settings = fiftyone_settings()
    if settings.uri or minutes == 0 or os.environ.get("FIFTYONE_DISABLE_SERVICES"):
        return None
    if not hasattr(signal, "sigtimedwait"):  # the keeper waits with it (not on macOS or Windows)
        return None
    database_dir = settings.database_dir
    try:
        with _locked(database_dir):
            state = _verified_state(database_dir, remove_stale=True)
            if state is not None:
                os.utime(_state_path(database_dir))  # "used now": the keeper counts idle time from here
                return state
            return _start_keeper(database_dir, minutes, timeout)
    except (ServerError, OSError) as error:
        logger.warning("the database server is not kept between commands: %s", error)
        return None


def ensure_server_once() -> ServerState | None:
    """:func:`ensure_server` once per process and database dir, for the app (its script reruns
    on every interaction). Never raises: a bad setting is logged, and FiftyOne does as before."""
    try:
        database_dir = fiftyone_settings().database_dir
        if database_dir not in _ensured:
            _ensured[database_dir] = ensure_server()
    except CurationError as error:
        logger.warning("the database server is not kept between commands: %s", error)
        return None
    return _ensured[database_dir]


def _keeper_command(database_dir: Path, minutes: float, adopt: int | None) -> list[str]:
    command = [sys.executable, "-m", "curation.db_server", "keep", "--dbpath", str(database_dir),
               "--idle-minutes", repr(minutes)]
    return command + (["--adopt", str(adopt)] if adopt else [])


def _start_keeper(database_dir: Path, minutes: float, timeout: float) -> ServerState | None:
    services = find_services()
    ours = [service for service in services if _same_dir(_service_dir(service), database_dir)]
    adopt = ours[0].pid if ours else None
    if services and not ours:
        logger.info("FiftyOne's database service %d (database dir %s) is running; FiftyOne uses it, so nothing "
                    "is kept for %s", services[0].pid, _service_dir(services[0]), database_dir)
        return None
    if adopt is None and _foreign_mongod(database_dir):
        raise ServerError(f"a mongod that is not FiftyOne's service already has {database_dir} open")
    (database_dir / "log").mkdir(parents=True, exist_ok=True)
    log_path = database_dir / "log" / KEEPER_LOG
    package_parent = str(Path(__file__).resolve().parents[1])  # the same `curation` for the keeper
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "ab") as log:
        keeper = subprocess.Popen(_keeper_command(database_dir, minutes, adopt), cwd=database_dir, env=env,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    # Reaped whenever it exits, so that a long-lived caller (the app) keeps no zombie; a
    # daemon thread never delays this process's exit.
    threading.Thread(target=keeper.wait, name="curation-db-keeper-reaper", daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _read_state_file(_state_path(database_dir))
        if state is not None and state.keeper_pid == keeper.pid:
            logger.info("kept FiftyOne's database service for %s: mongod on port %d", database_dir, state.port)
            return state
        if keeper.poll() is not None:
            raise ServerError(f"the keeper exited with code {keeper.returncode}; see {log_path}: {_tail(log_path)}")
        time.sleep(0.05)
    keeper.terminate()
    raise ServerError(f"the database did not start within {timeout:.0f} s; see {log_path}")


def _foreign_mongod(database_dir: Path) -> bool:
    import psutil

    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        is_mongod = bool(cmdline) and Path(cmdline[0]).name.startswith("mongod")
        if is_mongod and _same_dir(_option(cmdline, "--dbpath"), database_dir):
            return True
    return False


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# ---- status and stop --------------------------------------------------------------------


def count_clients(client) -> int:
    """Client connections to the ``mongod`` behind ``client``, the keeper's own left out.

    ``$currentOp`` with idle connections lists one row per open connection; rows without a
    ``client`` address are the server's own threads. This process's connections are known
    by their local addresses (a new connection has no ``appName`` until its handshake), the
    keeper's by its ``appName``.
    """
    import psutil

    operations = list(client.admin.aggregate([{"$currentOp": {"allUsers": True, "idleConnections": True}},
                                              {"$project": {"client": 1, "appName": 1}}]))
    # Read after the query, so that the connections this process opened for it are known.
    own = {f"{c.laddr[0]}:{c.laddr[1]}" for c in psutil.Process().net_connections(kind="tcp") if c.laddr}
    return sum(1 for op in operations
               if op.get("client") and op["client"] not in own and op.get("appName") != KEEPER_APPNAME)


def _client(port: int, appname: str | None = None, timeout_ms: int = 2000):
    import pymongo

    return pymongo.MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=timeout_ms,
                               appname=appname)


def server_status() -> ServerStatus:
    """What serves FiftyOne's database for this process's settings, without starting anything."""
    settings = fiftyone_settings()
    if settings.uri:
        from curation.database import redact_uri

        return ServerStatus("uri", f"FIFTYONE_DATABASE_URI (or FiftyOne's database_uri) names "
                                   f"{redact_uri(settings.uri)}: nothing is kept")
    database_dir = settings.database_dir
    state = None
    if database_dir.is_dir():
        try:
            with _locked(database_dir, timeout=2.0):  # removes a stale file unless a start is under way
                state = _verified_state(database_dir, remove_stale=True)
        except ServerError:
            state = _verified_state(database_dir)
    if state is not None:
        clients = None
        with contextlib.suppress(Exception):
            client = _client(state.port, KEEPER_APPNAME)
            try:
                clients = count_clients(client)
            finally:
                client.close()
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started_at))
        how = "kept registered with FiftyOne's service" if state.adopted else "kept"
        detail = (f"{how}: mongod on 127.0.0.1:{state.port} (pid {state.mongod_pid}), database dir {database_dir}, "
                  f"since {since}; keeper pid {state.keeper_pid} lets go after {state.idle_minutes:g} idle minutes")
        return ServerStatus("kept", detail, state, clients)
    for service in find_services():
        return ServerStatus("fiftyone", f"FiftyOne's own database service (pid {service.pid}, database dir "
                                        f"{_service_dir(service)}) is running; it stops when its clients exit")
    if idle_minutes() == 0:
        return ServerStatus("off", f"{IDLE_ENV}=0: no server is kept; each command starts FiftyOne's database "
                                   f"service for {database_dir}")
    return ServerStatus("none", f"no server is running for {database_dir}; the next command starts one and keeps "
                                f"it for {idle_minutes():g} idle minutes")


def connect_without_fiftyone(timeout_ms: int = 3000):
    """``(pymongo client, FiftyOne's database)`` when the database can be read without
    importing fiftyone or starting anything: the server ``FIFTYONE_DATABASE_URI`` names, or
    the kept server. None otherwise. The caller closes the client.
    """
    import pymongo

    settings = fiftyone_settings()
    if settings.uri:
        client = pymongo.MongoClient(settings.uri, serverSelectionTimeoutMS=timeout_ms)
    else:
        state = _verified_state(settings.database_dir) if _state_path(settings.database_dir).exists() else None
        if state is None:
            return None
        client = _client(state.port, timeout_ms=timeout_ms)
    return client, client[settings.database_name]


def stop_server(*, timeout: float = 30.0) -> str:
    """Stop the kept server for this process's settings: the keeper lets go, and FiftyOne's
    service stops ``mongod`` once its other clients (an open app) have exited.

    Returns:
        What was done, in one line.
    """
    import psutil

    settings = fiftyone_settings()
    if settings.uri:
        return "FIFTYONE_DATABASE_URI is set: there is no kept server to stop (the server at that URI is untouched)"
    database_dir = settings.database_dir
    if not database_dir.is_dir():
        return f"no kept server for {database_dir}"
    with _locked(database_dir):
        state = _verified_state(database_dir, remove_stale=True)
        if state is None:
            return f"no kept server for {database_dir}"
        with contextlib.suppress(psutil.Error):
            psutil.Process(state.keeper_pid).terminate()
        _remove_state(database_dir)
    deadline = time.monotonic() + timeout
    while _alive(state.keeper_pid):  # it waits up to 10 s for the service to stop mongod
        if time.monotonic() > deadline:
            raise ServerError(f"the keeper (pid {state.keeper_pid}) did not exit within {timeout:.0f} s")
        time.sleep(0.1)
    mongod_deadline = time.monotonic() + 10  # the service stops mongod once its last client has gone
    while _alive(state.mongod_pid) and time.monotonic() < mongod_deadline:
        time.sleep(0.1)
    if not _alive(state.mongod_pid):
        return f"stopped the kept server for {database_dir} (mongod on port {state.port})"
    return (f"let go of the server for {database_dir}; FiftyOne's service keeps mongod (port {state.port}) running "
            "until its other clients exit")


# ---- the keeper -------------------------------------------------------------------------


def _service_command(database_dir: Path) -> list[str]:
    """FiftyOne's own service command line (``fiftyone.core.service.DatabaseService``)."""
    from curation.database import mongod_path

    main_path = mongod_path().parents[2] / "service" / "main.py"  # fiftyone/db/bin/mongod -> fiftyone/service
    return [sys.executable, str(main_path), *SERVICE_ARGS, str(mongod_path()), "--dbpath", str(database_dir),
            "--logpath", str(database_dir / "log" / "mongo.log"), "--port", "0", "--nounixsocket"]


def _register(service, pid: int) -> None:
    """FiftyOne's IPC message ``("register", pid)``: the service now waits for ``pid`` to exit
    too (``fiftyone/service/main.py``; pickles over a localhost socket, as FiftyOne sends)."""
    import psutil

    ports = [c.laddr[1] for c in service.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    if not ports:
        raise ServerError(f"FiftyOne's database service {service.pid} has no listening IPC port")
    with socket.create_connection(("localhost", ports[0]), timeout=10) as connection:
        pickle.dump(("register", pid), connection.makefile("wb"))
        reply = pickle.load(connection.makefile("rb"))  # our own message's reply from a process of this user
    if reply is not True:
        raise ServerError(f"FiftyOne's database service {service.pid} refused the keeper: {reply!r}")


def run_keeper(database_dir: Path, minutes: float, adopt: int | None = None) -> int:
    """The keeper's life: start (or register with) the service, record it, wait for idleness."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal that started it is not for us
    service_child = None
    if adopt is not None:
        service = psutil.Process(adopt)
        _register(service, os.getpid())
    else:
        env = {**os.environ, "FIFTYONE_DISABLE_SERVICES": "1"}
        service_child = psutil.Popen(_service_command(database_dir), stdin=subprocess.PIPE, cwd=database_dir, env=env)
        service = service_child
    # SIGTERM (`curation db stop`) is taken synchronously: it ends the wait between polls at once.
    # Blocked only now: a child started later would inherit the mask, and mongod must stay stoppable.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    deadline = time.monotonic() + START_TIMEOUT_S
    mongod, ports = _mongod_of(service)
    while not ports:
        if not service.is_running() or (service_child is not None and service_child.poll() is not None):
            logger.error("FiftyOne's database service exited before its mongod listened (see %s)",
                         database_dir / "log" / "mongo.log")
            return 1
        if time.monotonic() > deadline:
            logger.error("mongod did not listen within %.0f s", START_TIMEOUT_S)
            return 1
        time.sleep(0.1)
        mongod, ports = _mongod_of(service)
    client = _client(ports[0], KEEPER_APPNAME, timeout_ms=int(max(1.0, deadline - time.monotonic()) * 1000))
    client.admin.command("ping")  # waits until mongod answers (or the start deadline)
    client.close()
    client = _client(ports[0], KEEPER_APPNAME)  # 2 s server selection from now on
    state = ServerState(keeper_pid=os.getpid(), service_pid=service.pid, mongod_pid=mongod.pid, port=ports[0],
                        database_dir=str(database_dir), idle_minutes=minutes, started_at=time.time(),
                        adopted=adopt is not None)
    _write_state(state)
    logger.info("keeping %s: service %d, mongod %d on port %d", database_dir, service.pid, mongod.pid, ports[0])
    try:
        _wait_until_idle(client, state, service, lambda: _let_go(state, service_child, client))
    finally:
        client.close()
    return 0


def _let_go(state: ServerState, service_child, client) -> None:
    """Remove the state file and release the service (call under the lock)."""
    import psutil

    client.close()  # while mongod still answers: closing ends the client's sessions on the server
    _remove_state(Path(state.database_dir), state.keeper_pid)
    if service_child is not None:
        service_child.stdin.close()  # as FiftyOne's parent process does on exit: mongod stops once no client is left
        try:
            service_child.wait(timeout=10)
        except psutil.TimeoutExpired:
            logger.info("FiftyOne's database service stays up for its other clients")
    logger.info("let go of %s", state.database_dir)


def _wait_until_idle(client, state: ServerState, service, let_go) -> None:
    """Call ``let_go`` under the lock (commands then wait until the service is gone, so none
    attaches to a stopping one) on SIGTERM, when the service has exited, or after
    ``idle_minutes`` without a client connection or a command marking the state file used."""
    idle_s = state.idle_minutes * 60
    poll_s = min(30.0, max(0.2, idle_s / 10))
    database_dir = Path(state.database_dir)
    last_busy = time.time()
    while True:
        if signal.sigtimedwait({signal.SIGTERM}, poll_s) is not None:
            logger.info("asked to stop")
            break
        if _process(service.pid) is None:
            logger.info("FiftyOne's database service exited")
            break
        try:
            if count_clients(client):
                last_busy = time.time()
        except Exception as error:  # noqa: BLE001  (pymongo raises many types; all mean "not answering")
            logger.warning("mongod does not answer: %s", error)
            continue
        with contextlib.suppress(OSError):
            last_busy = max(last_busy, _state_path(database_dir).stat().st_mtime)  # a command marked it used
        if time.time() - last_busy < idle_s:
            continue
        with _locked(database_dir):  # again under the lock: a command may have marked it used meanwhile
            path = _state_path(database_dir)
            used = path.stat().st_mtime if path.exists() else 0
            if time.time() - used >= idle_s and not count_clients(client):
                logger.info("no client for %g minutes", state.idle_minutes)
                let_go()
                return
    with _locked(database_dir):
        let_go()


# ---- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curation.db_server", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="say what serves FiftyOne's database")
    commands.add_parser("stop", help="stop the kept server")
    keep = commands.add_parser("keep", help="(internal) the keeper process")
    keep.add_argument("--dbpath", required=True)
    keep.add_argument("--idle-minutes", type=float, required=True)
    keep.add_argument("--adopt", type=int, help="pid of a running FiftyOne database service to register with")
    args = parser.parse_args(argv)
    if args.command == "keep":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s keeper %(process)d: %(message)s")
        return run_keeper(Path(args.dbpath), args.idle_minutes, args.adopt)
    try:
        print(server_status().detail if args.command == "status" else stop_server())
    except CurationError as error:
        print(f"database server: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
