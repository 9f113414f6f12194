# The README's two commands, each doing its own set-up (a virtual environment in $(VENV), torch, segdiff):
#   make demo          set up, then `segdiff demo --out segdiff-demo`
#   make test          set up with the dev extra, then `python -m pytest tests`
#   make wheel-check   build the wheel, install it into a clean temporary venv, run `segdiff --help`
#   make clean-env     remove $(VENV)
# Set-up is tools/setup-env.sh: a second run takes about a second; it reinstalls only when pyproject.toml
# (segdiff) or a TORCH_* setting (torch) changed. Any variable below can be set on the command line,
# e.g. `make test PYTHON=python3.12 PYTEST_ARGS="-x -q"`.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# auto: the CUDA build where `nvidia-smi -L` lists a GPU, else CPU; or cpu / cuda
TORCH_DEVICE ?= auto
# package indexes for torch (empty: pip's configured index) on CPU-only and on NVIDIA machines
TORCH_INDEX_URL ?=
TORCH_CUDA_INDEX_URL ?=
DEMO_OUT ?= segdiff-demo
PYTEST_ARGS ?=

SETUP = PYTHON='$(PYTHON)' VENV='$(VENV)' TORCH_SPEC='$(TORCH_SPEC)' TORCH_DEVICE='$(TORCH_DEVICE)' \
	TORCH_INDEX_URL='$(TORCH_INDEX_URL)' TORCH_CUDA_INDEX_URL='$(TORCH_CUDA_INDEX_URL)' bash tools/setup-env.sh

.PHONY: demo test wheel-check env env-dev clean-env

demo: env
	$(VENV)/bin/python -m segdiff demo --out '$(DEMO_OUT)'

test: env-dev
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

wheel-check: env-dev
	@VENV='$(VENV)' bash tools/wheel-check.sh

env:
	@$(SETUP)

env-dev:
	@$(SETUP) dev

clean-env:
	rm -rf '$(VENV)'
