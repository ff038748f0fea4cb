"""The wheel built from pyproject.toml holds the whole library and its data files.

A wheel is what a user gets from ``pip install``: a subpackage missing from it (as
``curation/finders/`` once was) breaks the installed CLI while every test of the editable
checkout passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "curation").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ROOT)], check=True, capture_output=True, text=True)
    (built,) = out.glob("curation-*.whl")
    return built


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {name[:-3].replace("/", ".").removesuffix(".__init__") for name in names if name.endswith(".py")}
    assert _source_modules() - modules == set()
    assert "curation/models.json" in names
    assert not any(name.startswith(("tests/", "pages/", "benchmarks/")) for name in names)


def test_installed_wheel_imports_every_module_and_runs_the_cli(wheel, tmp_path):
    """Install the wheel alone into a fresh venv; its dependencies come from this
    interpreter's site-packages (no download), the checkout itself is out of reach."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with zipfile.ZipFile(wheel) as archive:  # what pip does for a pure-Python wheel, without pip
        archive.extractall(purelib)
    # Dependencies from the test interpreter's site-packages, appended after the fresh venv's
    # own (PYTHONPATH skips .pth files, so the editable install of the checkout stays invisible).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    code = ("import importlib, pkgutil, curation\n"
            "assert curation.__file__.startswith(%r), curation.__file__\n"
            "names = [m.name for m in pkgutil.walk_packages(curation.__path__, 'curation.')]\n"
            "for name in names: importlib.import_module(name)\n"
            "from curation.models import MODEL_REGISTRY; assert MODEL_REGISTRY\n"
            "print(len(names))") % purelib
    result = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip()) == len(_source_modules()) - 1  # walk_packages omits the top package
    cli = subprocess.run([str(python), "-m", "curation.cli", "--help"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "analyze" in cli.stdout, cli.stderr[-2000:]
