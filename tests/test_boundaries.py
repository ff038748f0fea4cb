"""The library never imports the UI; pages hold no numerical code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_in_curation_imports_streamlit():
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "curation").rglob("*.py"))
                 if "streamlit" in _imported_modules(path)]
    assert offenders == []


def test_importing_the_whole_library_does_not_load_streamlit():
    code = ("import sys, pkgutil, importlib, curation\n"
            "for m in pkgutil.walk_packages(curation.__path__, 'curation.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('streamlit' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


def test_pages_do_no_numerical_work():
    numerical = {"numpy", "sklearn", "umap", "scipy", "torch", "cleanlab", "hdbscan"}
    for path in sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]:
        assert not (_imported_modules(path) & numerical), f"{path.name} imports {_imported_modules(path) & numerical}"


def test_importing_curation_turns_fiftyone_tracking_off():
    code = "import os; os.environ.pop('FIFTYONE_DO_NOT_TRACK', None); import curation; print(os.environ['FIFTYONE_DO_NOT_TRACK'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "true"
