#!/usr/bin/env bash
# The GPU checks in one command, for a CUDA machine (`make gpu-check`, or this script where
# `make setup` cannot install: a machine with no network, PYTHON naming a python that has torch and the
# project's dependencies). Each stage has its own time limit and the script goes on past a failed stage;
# everything lands in OUT_DIR (default results/scratch/gpu-check): env.txt, one log per stage,
# perf.json (pytest-benchmark), run.tgz (the gpu-slice run folder with its report) and stages.txt, one exit
# code per stage. Exit status: the number of failed stages.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT_DIR=${OUT_DIR:-results/scratch/gpu-check}
SPEC=${SPEC:-bench/configs/gpu-slice.toml}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
failed=0

STAGES=${STAGES:-gpu_tests perf grid report}  # a subset reruns some: STAGES="perf grid report"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log, record the exit code
    local name=$1 limit=$2; shift 2
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s" >>"$OUT_DIR/stages.txt"
    [ $rc -eq 0 ] || failed=$((failed + 1))
    tail -n 5 "$OUT_DIR/$name.log"
}

{ nvidia-smi; "$PYTHON" -c "import torch, diffusers, torch_fidelity; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(0)); print('diffusers', diffusers.__version__, 'torch-fidelity', torch_fidelity.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null; } >"$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
: >"$OUT_DIR/stages.txt"
# 1. Correct on CUDA: every gpu-marked test (the UNet on CUDA vs the CPU, every fixed-step solver captured).
stage gpu_tests "${GPU_TESTS_S:-240}" "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests
# 2. Against diffusers' own loop, side by side (CPU and CUDA cases, cuda_graph included).
stage perf "${PERF_S:-180}" "$PYTHON" -m pytest benchmarks/test_against_diffusers.py -q --benchmark-only \
    -p no:cacheprovider -o addopts="" --benchmark-json="$OUT_DIR/perf.json" --benchmark-columns=min,median,mean,rounds \
    ${PERF_ARGS:-}  # e.g. PERF_ARGS="-k cuda": the CUDA cases alone
# 3. The grid slice (rows are saved as they finish: a stage stopped at its limit still leaves its rows).
stage grid "${GRID_S:-300}" "$PYTHON" -m bench run "$SPEC" --out "$OUT_DIR/run" --no-progress
stage report 120 "$PYTHON" -m bench report "$OUT_DIR/run"
[ -d "$OUT_DIR/run" ] && tar czf "$OUT_DIR/run.tgz" -C "$OUT_DIR" run
cat "$OUT_DIR/stages.txt"
exit $failed
