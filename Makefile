# Targets are verbs; `bench` and `results` are also folder names, hence .PHONY.
.PHONY: setup test test-all bench clean

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a usable system torch (the CPU machines) setup installs this pair, which imports together
# (torch-fidelity needs torchvision); pip takes both from the local wheel cache where there is one.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

setup: $(VENV)/.installed

# A system torch (e.g. a GPU image's CUDA build) is reused through --system-site-packages.
$(VENV)/.installed: pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "setup: reusing the system torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q $(TORCH_PIN); \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

# The main job: the default grid on the analytic presets -> results/scratch/<time>-<commit>-default/
SPEC ?= bench/configs/default.toml
bench: setup
	$(PY) -m bench run $(SPEC) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
