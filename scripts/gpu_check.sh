#!/usr/bin/env bash
# The GPU check, under 8 minutes on one H100/H200-class GPU; one JSON line per result, printed and
# appended to $OUT/gpu_check.jsonl (else benchmarks/results/gpu_check.jsonl):
#   1. the CUDA tests (pytest -m cuda over the test files that have them);
#   2. DM on CIFAR-10 IPC 10 at the paper's settings (batch_real 256, DSA, ConvNet-3 width 128):
#      seconds per step against a loop built like the original code, same draws: fp32, bf16, and
#      fp32 without cuDNN autotuning;
#   3. 2,000 DM steps on MNIST IPC 10, then the paper's evaluation (5 networks, 1000 epochs, DSA),
#      and one evaluation network on that set without and with torch.compile;
#   4. the app driven headless through gradio_client on CUDA: one short /distill and one /evaluate.
# Each step has its own time limit (90 + 80 + 170 + 60 + 80 s: 8 minutes at most).
# A machine that cannot reach a registry: first run `bash scripts/gpu_wheels.sh <data root>` where
# pip works, and carry .whl/ (the app's packages) and .gpu_data/ (MNIST, gzipped) with the code.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.jsonl
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False DISTILLERY_WARMUP=0
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ -d .whl ] && ! "$PY" -c "import gradio, gradio_client, plotly, umap" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dd_site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/dd_site
fi
if [ -d .gpu_data/MNIST/raw ] && [ ! -d "${DD_DATA_ROOT:-/nonexistent}/MNIST/raw" ]; then
  mkdir -p /tmp/dd_data/MNIST/raw
  for f in .gpu_data/MNIST/raw/*.gz; do gunzip -c "$f" > "/tmp/dd_data/MNIST/raw/$(basename "$f" .gz)"; done
  export DD_DATA_ROOT=/tmp/dd_data
fi

note() {  # one JSON line for a step that did not print its own: note CHECK STATUS DETAIL
  "$PY" -c 'import json, sys; print(json.dumps({"check": sys.argv[1], "status": sys.argv[2], "detail": sys.argv[3]}))' \
    "$1" "$2" "$3" | tee -a "$LOG"
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit; its JSON lines go to the log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > >(tee /tmp/dd_gpu_step.out) 2> /tmp/dd_gpu_step.err
  local rc=$?
  grep '^{' /tmp/dd_gpu_step.out >> "$LOG"
  if [ $rc -ne 0 ]; then
    note "$name" "failed" "exit $rc after $((SECONDS - t0)) s: $(tail -c 600 /tmp/dd_gpu_step.err | tr '\n' ' ')"
  fi
}

"$PY" -c 'import json, torch; print(json.dumps({"check": "machine", "torch": torch.__version__, "cuda": torch.cuda.is_available(),
  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}))' | tee -a "$LOG"

CUDA_TESTS=$(grep -l "mark.cuda" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
timeout 90 "$PY" -m pytest -q -m cuda -p no:cacheprovider --junitxml=/tmp/dd_cuda_tests.xml $CUDA_TESTS > /tmp/dd_cuda_tests.out 2>&1
rc=$?
"$PY" - "$rc" <<'PYEOF' | tee -a "$LOG"
import json, sys, xml.etree.ElementTree as ET
rc = int(sys.argv[1])
try:
    suite = ET.parse("/tmp/dd_cuda_tests.xml").getroot().iter("testsuite").__next__()
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None]
except Exception as err:  # noqa: BLE001 - no report: say so
    counts, failed = {"report": f"unreadable ({err})"}, []
tail = open("/tmp/dd_cuda_tests.out").read()[-800:]
print(json.dumps({"check": "cuda_tests", "exit_code": rc, **counts, "failed": failed, "tail": tail if rc else ""}))
PYEOF

step dm_speed 80 "$PY" -m benchmarks.gpu_check speed --steps 30
step mnist_dm_ipc10 170 "$PY" -m benchmarks.gpu_check mnist --steps 2000
step evaluator_compile 60 "$PY" -m benchmarks.gpu_check compile
step app_gradio_client 80 "$PY" -m benchmarks.gpu_check app --steps 200
echo "results: $LOG"
