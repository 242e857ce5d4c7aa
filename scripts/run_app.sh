#!/usr/bin/env bash
# Set up a virtual environment (once) and start the app on the offline default dataset.
# DISTILLERY_CPU_TORCH=1 installs PyTorch's CPU-only wheels (about 1 GB instead of several with CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "Creating a virtual environment in .venv…"
  python3 -m venv .venv
fi
# Install only when requirements.txt changed since the last install (a stamp holds its checksum).
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing packages (the first time takes a few minutes: torch, gradio, umap-learn)…"
  .venv/bin/python -m pip install --upgrade pip --progress-bar on
  if [ "${DISTILLERY_CPU_TORCH:-0}" = "1" ]; then
    echo "Installing the CPU-only PyTorch wheels…"
    .venv/bin/python -m pip install --progress-bar on --index-url https://download.pytorch.org/whl/cpu \
      "$(grep '^torch==' requirements.txt)" "$(grep '^torchvision==' requirements.txt)"
  fi
  .venv/bin/python -m pip install --progress-bar on -r requirements.txt
  echo "$want" > "$stamp"
  echo "Packages installed."
fi
# Gradio reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT; without a port it takes the first free one from 7860.
where="http://${GRADIO_SERVER_NAME:-127.0.0.1}:${GRADIO_SERVER_PORT:-7860}"
[ -n "${GRADIO_SERVER_PORT:-}" ] || where="$where (or the next free port)"
echo "Starting Distillery at $where; it prints its address when ready (the first start compiles a few things: about half a minute)…"
exec .venv/bin/python app.py "$@"
