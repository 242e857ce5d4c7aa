#!/usr/bin/env bash
# The CIFAR-10 rows that issues 15, 20 and 18 lack, on one GPU, in priority order, inside about 8.5
# minutes; one JSON line per result, appended to $OUT/gpu_cifar.jsonl as it comes (else to
# benchmarks/results/gpu_cifar.jsonl):
#   0. unpack .gpu_data/cifar10 (CIFAR-10's JPEGs, packed here by `python -m benchmarks.gpu_pack pack <data root>`)
#      into a temporary data root; decode it once; bytes and pixels against the pack's manifest;
#   a. issue 15: RDED IPC 10 with the Conv3 observer (convnet_bn_128), soft protocol, BN ConvNet-3 evaluator,
#      against the random subset with the same teacher's labels (published 50.2; observer 82.2);
#   b. issue 20: MTT IPC 1 (budgeted experts, then iterations until its share of the step) against DM and
#      random IPC 1 under the paper protocol, and MTT at its learned lr (published 46.3, DM 26.0);
#   b'. issue 20: one MTT iteration against the official-style loop, and TESLA's, timed on the GPU;
#   c. issue 15: SRe2L IPC 10, soft protocol, against the random subset with the same labels;
#   d. the whole training set on ConvNet-3 for the epochs that fit (published 84.8);
#   e. issue 18, if time is left: DQ beside random, herding and k-center, IPC 10, 1, 50, dc protocol;
#   more (named only: a call of its own): issue 15's rows over the observer, RDED at IPC 50 and 10 first
#      (GPU_CIFAR_RUNS='rded:50 sre2l:10' to choose; benchmarks/gpu_cifar.py's MORE_RUNS is the default).
# Each step runs under `timeout` at min(its cap, what is left of the total); it is told 15 s less,
# and ends itself inside that. Sizing: benchmarks/gpu_cifar.py's docstring.
#   bash scripts/gpu_cifar.sh                        # all steps (on the GPU machine)
#   bash scripts/gpu_cifar.sh mtt                    # chosen steps only (0 always runs), e.g. a longer MTT:
#   GPU_CIFAR_TOTAL=540 GPU_CIFAR_CAP_MTT=530 bash scripts/gpu_cifar.sh mtt
#   DD_DATA_ROOT=<data> bash scripts/gpu_cifar.sh --device cpu --tiny   # smoke run: a tiny pack, tiny settings
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICE=cuda TINY="" STEPS=""
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=--tiny; shift ;;
    *) STEPS="$STEPS $1"; shift ;;
  esac
done
STEPS=${STEPS:-rded mtt speed sre2l whole coresets}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_cifar${TINY:+_smoke}.jsonl
WORK=${GPU_CIFAR_DIR:-$(mktemp -d -t dd_gpu_cifar.XXXXXX)}
mkdir -p "$WORK"
PACK=.gpu_data/cifar10
ERRS=${OUT:-$WORK}  # each step's stderr: under $OUT on the GPU machine, so it comes back (7 files in all)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SOURCE=${DD_DATA_ROOT:-}  # the smoke run packs its tiny pack from here
export DD_DATA_ROOT=$WORK/data DD_CACHE_DIR=$WORK/cache  # a fresh root and cache: nothing of this machine's own
TOTAL=${GPU_CIFAR_TOTAL:-510}  # seconds for everything below; the device call's timeout_s leaves a minute more
START=$SECONDS

note() {  # one JSON line for a step that did not end cleanly: note CHECK STATUS DETAIL
  "$PY" -c 'import json, sys; print(json.dumps({"check": sys.argv[1], "status": sys.argv[2], "detail": sys.argv[3]}))' \
    "$1" "$2" "$3" | tee -a "$LOG"
}

step() {  # step NAME CAP: run `benchmarks.gpu_cifar NAME` under min(CAP, time left) seconds
  local name=$1 cap=$2
  local left=$((TOTAL - (SECONDS - START)))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 30 ]; then
    note "$name" "skipped" "$left s of the $TOTAL s left; a step needs 30 at least"
    return
  fi
  local t0=$SECONDS
  timeout -k 5 "$limit" "$PY" -m benchmarks.gpu_cifar "$name" --seconds $((limit - 15)) --device "$DEVICE" $TINY \
    --work "$WORK" --out "$LOG" $THREADS ${GPU_CIFAR_RUNS:+--runs "$GPU_CIFAR_RUNS"} 2> "$ERRS/gpu_cifar_$name.err"
  local rc=$?
  if [ $rc -ne 0 ]; then
    note "$name" "failed" "exit $rc after $((SECONDS - t0)) s of $limit: $(tail -c 600 "$ERRS/gpu_cifar_$name.err" | tr '\n' ' ')"
  fi
}

THREADS=""
if [ -n "$TINY" ]; then  # the smoke run: a tiny pack of the real files (30 train + 10 test images a class), one thread
  THREADS="--threads 1"
  PACK=$WORK/tiny_pack
  "$PY" -m benchmarks.gpu_pack pack "${SOURCE:-.}" --out "$PACK" --per-class 30 --test-per-class 10 > /dev/null \
    || { note data failed "the smoke run packs a tiny pack from \$DD_DATA_ROOT/cifar10-jpeg: set DD_DATA_ROOT"; exit 1; }
fi

"$PY" -c 'import json, torch; print(json.dumps({"check": "machine", "torch": torch.__version__, "cuda": torch.cuda.is_available(),
  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none", "cpus": __import__("os").cpu_count()}))' | tee -a "$LOG"
if [ ! -f "$PACK/cifar10-jpeg.tar.gz" ]; then
  note data failed "no $PACK/cifar10-jpeg.tar.gz: pack it (python -m benchmarks.gpu_pack pack <data root>) and carry .gpu_data/cifar10"
  exit 1
fi
"$PY" -m benchmarks.gpu_pack unpack "$DD_DATA_ROOT" --pack "$PACK" | tee -a "$LOG"
timeout 120 "$PY" -m benchmarks.gpu_cifar prepare --pack "$PACK" --device "$DEVICE" $TINY --out "$LOG" $THREADS \
  2> "$ERRS/gpu_cifar_prepare.err" || note prepare failed "$(tail -c 600 "$ERRS/gpu_cifar_prepare.err" | tr '\n' ' ')"

for name in $STEPS; do
  cap_var=GPU_CIFAR_CAP_$(echo "$name" | tr '[:lower:]' '[:upper:]')
  case $name in  # caps in seconds: the GPU's, and the smoke run's (where MTT and DM stop at their shares)
    rded) step rded "${!cap_var:-$([ -n "$TINY" ] && echo 60 || echo 165)}" ;;
    mtt) step mtt "${!cap_var:-$([ -n "$TINY" ] && echo 75 || echo 240)}" ;;
    speed) step speed "${!cap_var:-60}" ;;
    sre2l) step sre2l "${!cap_var:-$([ -n "$TINY" ] && echo 90 || echo 75)}" ;;
    whole) step whole "${!cap_var:-$([ -n "$TINY" ] && echo 45 || echo 120)}" ;;
    more) step more "${!cap_var:-500}" ;;  # not in the default list: a second call names it
    coresets) step coresets "${!cap_var:-$([ -n "$TINY" ] && echo 60 || echo 120)}" ;;
    *) note "$name" "unknown" "steps are: rded mtt speed sre2l whole coresets more" ;;
  esac
done
echo "results: $LOG ($((SECONDS - START)) s)"
