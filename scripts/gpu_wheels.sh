#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh on a GPU machine that cannot reach a package registry but has
# Python 3.12 with PyTorch: the app's packages that such an image lacks (gradio and what it needs,
# plotly, umap-learn), downloaded here into .whl/ (kept out of git), plus MNIST's files gzipped into
# .gpu_data/. Carry both folders to the GPU machine; gpu_check.sh installs and unpacks them.
#   bash scripts/gpu_wheels.sh [DATA_ROOT]      # DATA_ROOT holds MNIST/raw (default $DD_DATA_ROOT)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
# The versions this project's own .venv runs (pinned so the GPU run tests the same app).
WHEELS="gradio==6.31.0 gradio_client==2.7.2 hf-gradio==0.4.1 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7
opentelemetry-api==1.45.2 orjson==3.13.0 python-multipart==0.0.34 pydub==0.25.1 brotli==1.2.1 groovy==0.1.2
safehttpx==0.1.7 semantic-version==2.10.0 tomlkit==0.14.0 plotly==7.1.0 umap-learn==0.5.12 pynndescent==0.7.0"
mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS
DATA=${1:-${DD_DATA_ROOT:-}}
if [ -n "$DATA" ] && [ -d "$DATA/MNIST/raw" ]; then
  mkdir -p .gpu_data/MNIST/raw
  for f in "$DATA"/MNIST/raw/*-ubyte; do gzip -9 -c "$f" > ".gpu_data/MNIST/raw/$(basename "$f").gz"; done
fi
du -sh .whl .gpu_data 2>/dev/null || true
