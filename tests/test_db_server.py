"""curation.db_server: FiftyOne's database service kept between commands.

Every test that starts a server uses a database dir of its own under ``tmp_path`` and kills
whatever runs on it in teardown. The session's own mongod (conftest, reached by URI) is
never touched: the URI is hidden only inside these tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from curation import db_server
from curation.cli import main
from curation.db_server import ServerState, ensure_server, fiftyone_settings, server_status

FOREIGN_SERVICE_ARGS = ["--51-service", "db", "--multi"]


def _processes_on(database_dir: Path) -> list[psutil.Process]:
    """Keeper, service and mongod processes whose command line names ``database_dir``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and str(database_dir) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def _mongods_on(database_dir: Path) -> list[psutil.Process]:
    return [p for p in _processes_on(database_dir) if Path((p.info["cmdline"] or [""])[0]).name == "mongod"]


def _wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture
def database_dir(tmp_path, monkeypatch) -> Path:
    """A database dir of the test's own, FiftyOne's URI hidden; everything on it killed afterwards."""
    if db_server.find_services():
        pytest.skip("a FiftyOne database service runs for this user: FiftyOne would attach to it")
    directory = tmp_path / "mongo"
    monkeypatch.delenv("FIFTYONE_DATABASE_URI", raising=False)
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(directory))
    monkeypatch.setenv("FIFTYONE_CONFIG_PATH", str(tmp_path / "no-config.json"))  # never the user's config.json
    monkeypatch.delenv(db_server.IDLE_ENV, raising=False)
    yield directory
    processes = _processes_on(directory)
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=30)
    assert not _processes_on(directory)


def _run_python(code: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ---- nothing is kept ------------------------------------------------------------------------


def test_the_test_suite_itself_keeps_nothing(session_database_uri):
    """conftest names its own mongod by URI: commands in tests never start a keeper."""
    assert os.environ["FIFTYONE_DATABASE_URI"] == session_database_uri
    session_dir = Path(os.environ["FIFTYONE_DATABASE_DIR"])
    assert ensure_server() is None
    assert main(["datasets"]) == 0
    assert not (session_dir / db_server.STATE_NAME).exists()
    assert not [p for p in _processes_on(session_dir) if "curation.db_server" in " ".join(p.info["cmdline"])]


def test_user_uri_is_never_touched(database_dir, monkeypatch, capsys):
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", "mongodb://curator:secret@127.0.0.1:9/")
    assert ensure_server() is None
    assert not database_dir.exists() and not _processes_on(database_dir)
    assert main(["db", "status"]) == 0
    out = capsys.readouterr().out
    assert "mongodb://curator:***@127.0.0.1:9/: nothing is kept" in out and "secret" not in out
    assert main(["db", "stop"]) == 0
    assert "FIFTYONE_DATABASE_URI is set: there is no kept server to stop" in capsys.readouterr().out


def test_uri_in_fiftyones_config_file_counts_as_set(database_dir, tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"database_uri": "mongodb://127.0.0.1:9", "database_name": "elsewhere"}))
    monkeypatch.setenv("FIFTYONE_CONFIG_PATH", str(config))
    settings = fiftyone_settings()
    assert settings.uri == "mongodb://127.0.0.1:9" and settings.database_dir == database_dir
    assert settings.database_name == os.environ["FIFTYONE_DATABASE_NAME"]  # the environment wins, as in FiftyOne
    assert ensure_server() is None and not database_dir.exists()


def test_zero_idle_minutes_keeps_nothing(database_dir, monkeypatch, capsys):
    monkeypatch.setenv(db_server.IDLE_ENV, "0")
    assert ensure_server() is None and not database_dir.exists()
    assert main(["db", "status"]) == 0
    assert f"{db_server.IDLE_ENV}=0: no server is kept" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_bad_idle_minutes_is_one_line_naming_the_value(database_dir, monkeypatch, capsys, value):
    monkeypatch.setenv(db_server.IDLE_ENV, value)
    assert main(["datasets"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("curation datasets: error: CURATION_DB_IDLE_MINUTES: expected a number")
    assert repr(value) in err[0]


def test_another_dirs_fiftyone_service_is_left_to_fiftyone(database_dir, tmp_path):
    """FiftyOne attaches to any running service of the user, whatever its dir: keep nothing then."""
    other = tmp_path / "other-mongo"
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *FOREIGN_SERVICE_ARGS, "mongod",
                             "--dbpath", str(other)])
    try:
        assert _wait_until(lambda: any(p.pid == fake.pid for p in db_server.find_services()), 10)
        assert ensure_server() is None
        assert not (database_dir / db_server.STATE_NAME).exists() and not _mongods_on(database_dir)
        assert server_status().mode == "fiftyone"
    finally:
        fake.kill()
        fake.wait()


# ---- state file ------------------------------------------------------------------------------


def _write_state(directory: Path, **fields) -> Path:
    state = {"keeper_pid": 1, "service_pid": 1, "mongod_pid": 1, "port": 9, "database_dir": str(directory),
             "idle_minutes": 30.0, "started_at": time.time(), "adopted": False, **fields}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / db_server.STATE_NAME
    path.write_text(json.dumps(state))
    path.chmod(0o600)
    return path


def test_stale_state_file_of_dead_processes_is_removed(database_dir):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    path = _write_state(database_dir, keeper_pid=finished.pid, service_pid=finished.pid, mongod_pid=finished.pid)
    status = server_status()
    assert status.mode == "none" and "the next command starts one" in status.detail
    assert not path.exists()


def test_state_file_naming_live_processes_that_are_not_ours_is_stale(database_dir, session_database_uri):
    """Live pids and a listening port (this test process, the session's mongod) are not enough."""
    port = int(session_database_uri.rsplit(":", 1)[1])
    path = _write_state(database_dir, keeper_pid=os.getpid(), service_pid=os.getpid(), mongod_pid=os.getpid(),
                        port=port)
    assert db_server.connect_without_fiftyone() is None
    assert server_status().mode == "none"
    assert not path.exists()


def test_state_file_writable_by_others_is_not_trusted(database_dir):
    path = _write_state(database_dir)
    path.chmod(0o666)
    assert db_server._read_state_file(path) is None


# ---- a kept server ----------------------------------------------------------------------------


def test_start_reuse_list_status_and_stop(database_dir, capsys):
    state = ensure_server()
    assert state is not None and not state.adopted and state.database_dir == str(database_dir)
    recorded = database_dir / db_server.STATE_NAME
    assert recorded.stat().st_mode & 0o077 == 0
    [mongod] = _mongods_on(database_dir)
    assert mongod.pid == state.mongod_pid

    # A second process reuses it: no new mongod; FiftyOne attaches to the kept service's port.
    again = _run_python("from curation.db_server import ensure_server; print(ensure_server().keeper_pid)")
    assert int(again) == state.keeper_pid
    port = _run_python("import curation, fiftyone as fo, fiftyone.core.odm.database as d; fo.list_datasets(); "
                       "print(d._connection_kwargs['port'])")
    assert int(port) == state.port
    assert [p.pid for p in _mongods_on(database_dir)] == [mongod.pid]

    # `curation datasets` reads the kept server without importing fiftyone.
    listing = _run_python("import sys; from curation.cli import main; assert main(['datasets']) == 0; "
                          "assert 'fiftyone' not in sys.modules, 'fiftyone imported'")
    assert listing.startswith("no datasets yet")

    assert main(["db", "status"]) == 0
    out = capsys.readouterr().out
    assert f"kept: mongod on 127.0.0.1:{state.port} (pid {mongod.pid}), database dir {database_dir}" in out
    assert "client connections: 0" in out

    assert main(["db", "stop"]) == 0
    assert f"stopped the kept server for {database_dir} (mongod on port {state.port})" in capsys.readouterr().out
    assert not recorded.exists()
    assert _wait_until(lambda: not _processes_on(database_dir), 30)
    assert main(["db", "stop"]) == 0
    assert f"no kept server for {database_dir}" in capsys.readouterr().out


def test_recorded_port_of_something_else_is_stale_and_the_running_service_is_adopted(database_dir,
                                                                                     session_database_uri):
    first = ensure_server()
    other_port = int(session_database_uri.rsplit(":", 1)[1])  # a mongod, but not this service's
    _write_state(database_dir, **{**dataclasses.asdict(first), "port": other_port})
    second = ensure_server()
    # FiftyOne's service for this dir still runs (the first keeper holds it): registered with, not restarted.
    assert second.adopted and second.keeper_pid != first.keeper_pid
    assert (second.service_pid, second.mongod_pid, second.port) == (first.service_pid, first.mongod_pid, first.port)
    assert len(_mongods_on(database_dir)) == 1
    # The first keeper lets go; the service stays for the second one.
    psutil.Process(first.keeper_pid).send_signal(signal.SIGTERM)
    assert _wait_until(lambda: not psutil.pid_exists(first.keeper_pid) or
                       psutil.Process(first.keeper_pid).status() == psutil.STATUS_ZOMBIE, 30)
    time.sleep(1)
    assert psutil.pid_exists(first.mongod_pid)
    assert ensure_server() == second


def test_service_started_by_a_plain_fiftyone_process_is_adopted_and_outlives_it(database_dir):
    """FiftyOne's own service for this dir runs already: register with it, never a second mongod."""
    fiftyone_user = subprocess.Popen(
        [sys.executable, "-c", "import sys, fiftyone as fo; fo.list_datasets(); print('connected', flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert fiftyone_user.stdout.readline().strip() == "connected"
        [mongod] = _mongods_on(database_dir)
        state = ensure_server()
        assert state.adopted and state.mongod_pid == mongod.pid
    finally:
        fiftyone_user.stdin.close()
        fiftyone_user.wait(timeout=60)
    time.sleep(2)  # the service would stop mongod now if the keeper were not registered with it
    assert psutil.pid_exists(mongod.pid) and ensure_server() == state
    assert main(["db", "stop"]) == 0
    assert _wait_until(lambda: not _processes_on(database_dir), 30)


def test_concurrent_starts_start_one_server(database_dir):
    code = "from curation.db_server import ensure_server; s = ensure_server(); print(s.keeper_pid, s.mongod_pid)"
    starts = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
              for _ in range(3)]
    outputs = {start.communicate(timeout=180)[0].strip() for start in starts}
    assert all(start.returncode == 0 for start in starts)
    assert len(outputs) == 1
    assert len(_mongods_on(database_dir)) == 1
    assert len([p for p in _processes_on(database_dir) if "curation.db_server" in " ".join(p.info["cmdline"])]) == 1


def test_idle_server_stops_and_a_connected_client_holds_it(database_dir, monkeypatch):
    monkeypatch.setenv(db_server.IDLE_ENV, "0.05")  # 3 s
    state = ensure_server()
    assert state.idle_minutes == 0.05
    import pymongo

    client = pymongo.MongoClient("127.0.0.1", state.port, directConnection=True, serverSelectionTimeoutMS=5000)
    client.admin.command("ping")
    time.sleep(6)
    assert psutil.pid_exists(state.mongod_pid) and (database_dir / db_server.STATE_NAME).exists()
    client.close()
    assert _wait_until(lambda: not _processes_on(database_dir), 60)
    assert not (database_dir / db_server.STATE_NAME).exists()


# ---- `curation datasets` without fiftyone --------------------------------------------------


def test_listing_without_fiftyone_matches_fiftyone(fresh_name, monkeypatch, capsys):
    """Same rows through pymongo (the session's mongod, by URI) as through fiftyone."""
    import fiftyone as fo
    import numpy as np

    dataset = fo.Dataset(fresh_name)
    samples = [fo.Sample(filepath=f"/nowhere/{i}.png", label=fo.Classification(label=str(i % 3))) for i in range(12)]
    for index, sample in enumerate(samples):
        if index < 9:
            sample["vectors"] = np.full(4, index, dtype=np.float32)
        elif index < 11:
            sample["vectors_error"] = "cannot decode"
    samples[0]["older"] = np.zeros(4, dtype=np.float32)
    dataset.add_samples(samples)
    dataset.info = {"curation": {"embeddings": {
        "vectors": {"model": "model-a", "updated_at": "2026-02-01T00:00:00+00:00"},
        "older": {"model": "model-b", "updated_at": "2026-01-01T00:00:00+00:00"},
        "deleted_field": {"model": "model-c"}}}}
    dataset.save()

    from curation import datasets

    rows = datasets.listing_from_database(fo.core.odm.get_db_conn())
    assert rows is not None
    row = next(row for row in rows if row[0] == fresh_name)
    assert row[1] == 12 and [(s.model, s.embedded, s.failed) for s in row[2]] == [("model-a", 9, 2), ("model-b", 1, 0)]

    assert main(["datasets"]) == 0
    fast = capsys.readouterr().out
    monkeypatch.setattr(db_server, "connect_without_fiftyone", lambda: None)
    assert main(["datasets"]) == 0
    assert capsys.readouterr().out == fast
    assert f"{fresh_name:30} {12:>8}  model-a: 9/12 (2 failed); model-b: 1/12" in fast


def test_listing_without_fiftyone_declines_a_database_of_another_version(monkeypatch):
    class Collection:
        def __init__(self, documents):
            self.documents = documents

        def find(self, *args, **kwargs):
            documents = self.documents

            class Cursor(list):
                def limit(self, count):
                    return documents[:count]

            return Cursor(documents)

    class Database(dict):
        config = Collection([{"version": "0.1.0", "type": "fiftyone"}])
        datasets = Collection([])

    from curation import datasets

    assert datasets.listing_from_database(Database()) is None
