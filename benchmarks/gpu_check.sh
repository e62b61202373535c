#!/usr/bin/env bash
# The GPU checks in one command, for a CUDA machine (`make gpu-check`, or this script where
# `make setup` cannot install: a machine with no network, PYTHON naming a python that has torch and the
# project's dependencies). Each stage has its own time limit and the script goes on past a failed stage;
# everything lands in OUT_DIR (default results/scratch/gpu-check): env.txt, one log per stage (plan.log: the plan of
# the grid, measured on the device), perf.json and sd_loop.json (pytest-benchmark), run/ (the grid's run folder with
# its report), run-guided/ (the class-conditional grid's), stages.txt (one exit code and time per stage; kept across
# calls into one OUT_DIR, a stage run again replacing its line) and summary.md (each goal met or missed,
# benchmarks/gpu_check_summary.py); then the folder is packed into OUT_DIR.tgz beside it (reference solves left
# out). Exit status: the number of failed stages.
# The grids need the FID weights on the machine (make fid-weights; on a lent machine without network,
# benchmarks/gpu_lease.py carries them). Without CUDA the same stages are their CPU-sized twins: SPEC=bench/configs/
# gpu-fid-twin.toml, GUIDED_SPEC=bench/configs/gpu-fid-guided-twin.toml, and the benchmarks run their CPU cases (a
# tiny UNet for the SD-sized loop).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT_DIR=${OUT_DIR:-results/scratch/gpu-check}
SPEC=${SPEC:-bench/configs/gpu-fid.toml}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
failed=0

GUIDED_SPEC=${GUIDED_SPEC:-bench/configs/gpu-fid-guided.toml}
STAGES=${STAGES:-gpu_tests perf sd_loop plan grid report guided_grid guided_report summary}  # a subset: STAGES="grid report"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log, record the exit code
    local name=$1 limit=$2; shift 2
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    sed -i "/^$name rc=/d" "$OUT_DIR/stages.txt"  # a stage run again replaces its line; the others' stay
    echo "$name rc=$rc $((SECONDS - start))s" >>"$OUT_DIR/stages.txt"
    [ $rc -eq 0 ] || failed=$((failed + 1))
    tail -n 5 "$OUT_DIR/$name.log"
}

{ nvidia-smi; "$PYTHON" -c "import torch, diffusers, torch_fidelity; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device');
print('diffusers', diffusers.__version__, 'torch-fidelity', torch_fidelity.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null; } >"$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
touch "$OUT_DIR/stages.txt"  # kept across calls into one OUT_DIR: a lease may run the stages in two
# 1. Correct on CUDA: every gpu-marked test (the UNet on CUDA vs the CPU, every fixed-step solver captured, eager
# rows independent of the exec modes that ran before them); -rA lists each test's outcome for the summary.
stage gpu_tests "${GPU_TESTS_S:-240}" "$PYTHON" -m pytest -q -rA -m gpu -p no:cacheprovider tests
# 2. Against diffusers' own loop, side by side (CPU and CUDA cases, cuda_graph included).
stage perf "${PERF_S:-180}" "$PYTHON" -m pytest benchmarks/test_against_diffusers.py -q --benchmark-only \
    -p no:cacheprovider -o addopts="" --benchmark-json="$OUT_DIR/perf.json" --benchmark-columns=min,median,mean,rounds \
    ${PERF_ARGS:-}  # e.g. PERF_ARGS="-k cuda": the CUDA cases alone
# 3. A Stable-Diffusion-sized UNet (random weights), guidance 7.5, 20 steps, batch 1/4/16: the harness's loop (eager
# and cuda_graph) against diffusers' StableDiffusionPipeline on the same UNet, latents and embeddings.
stage sd_loop "${SD_LOOP_S:-240}" "$PYTHON" -m pytest benchmarks/test_sd_loop.py -q --benchmark-only \
    -p no:cacheprovider -o addopts="" --benchmark-json="$OUT_DIR/sd_loop.json" --benchmark-columns=min,median,mean,rounds
# 4. The grid (FID on 10,000 samples): its plan on this device first, then the sweep (rows are saved as they
# finish: a stage stopped at its limit still leaves its rows), then its report; the summary compares the two times.
stage plan "${PLAN_S:-180}" "$PYTHON" -m bench plan "$SPEC"
stage grid "${GRID_S:-600}" "$PYTHON" -m bench run "$SPEC" --out "$OUT_DIR/run" --no-progress \
    ${GRID_ARGS:-}  # e.g. GRID_ARGS="--max-minutes 7": n_samples cut to fit when the plan says more (printed in grid.log)
stage report 120 "$PYTHON" -m bench report "$OUT_DIR/run"
# 5. The class-conditional model at guidance scales 1 and 3 (FID on 10,000 samples), its own spec and run folder.
stage guided_grid "${GUIDED_S:-300}" "$PYTHON" -m bench run "$GUIDED_SPEC" --out "$OUT_DIR/run-guided" --no-progress \
    ${GUIDED_ARGS:-}  # e.g. GUIDED_ARGS="--max-minutes 3", as GRID_ARGS
stage guided_report 120 "$PYTHON" -m bench report "$OUT_DIR/run-guided"
stage summary 60 "$PYTHON" benchmarks/gpu_check_summary.py "$OUT_DIR"
# One archive of the folder to bring back (a lease returns few files): all but the reference solves' samples (82 MB
# each at 10,000 samples of 32x32 in float64; their records stay, and the rows hold what came of them).
tar czf "$OUT_DIR.tgz" --exclude='references/*.pt' -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
cat "$OUT_DIR/stages.txt"
exit $failed
