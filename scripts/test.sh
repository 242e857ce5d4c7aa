#!/usr/bin/env bash
# Set up a virtual environment (once) and run the test suite. Used by the README and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
# Real benchmark data for the loader tests, when a copy sits beside the repository.
if [ -z "${DD_DATA_ROOT:-}" ] && [ -d ../shared/data ]; then
  export DD_DATA_ROOT="$(cd ../shared/data && pwd)"
fi
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest "$@"
