#!/usr/bin/env bash
# Set up, prepare the bundled demo dataset (import, embed, map, analyze: cached after the first run),
# and start the app on http://localhost:8501. Extra arguments go to `streamlit run`,
# for example `--server.port 8600` or `--server.address 0.0.0.0` to listen on the network.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FIFTYONE_DO_NOT_TRACK=true
.venv/bin/curation demo
exec .venv/bin/streamlit run app.py "$@"
