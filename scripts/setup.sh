#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv. Idempotent: a rerun with an
# unchanged pyproject.toml only checks the database.
#   PYTHON=python3.11 scripts/setup.sh      choose the interpreter (3.10+; 3.11 finds local torch wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first and pinned: the CUDA build runs on CPU too, and pinning keeps pip from
  # resolving a different multi-GB build through another package's looser requirement.
  "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
# FiftyOne needs a runnable mongod (or FIFTYONE_DATABASE_URI); repair the install if pip left none.
"$VENV/bin/python" -m curation.database --ensure
