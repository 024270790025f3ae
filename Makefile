# `make demo` and `make test` each do all set-up on a fresh machine: a virtual environment in .venv,
# the project installed into it with its test extra, then the run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH_SPEC= (empty) on a machine that already has the torch it wants.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,compare,hf
STAMP := $(VENV)/.installed

.PHONY: demo warmup test test-cpu test-interpret test-gpu gpu-check install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmds demo

# Compile the numba search loops into the user's cache once (`llmds demo` does it by itself).
warmup: $(STAMP)
	$(BIN)/llmds warmup

# The CPU suite, then the Triton kernels under the interpreter in a process of their own
# (TRITON_INTERPRET must be set before triton is imported).
test: test-cpu test-interpret

test-cpu: $(STAMP)
	$(BIN)/python -m pytest -q tests --ignore=tests/interpret

test-interpret: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q tests/interpret

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu tests --ignore=tests/interpret

# One prepared script for a GPU machine: gpu tests, kernel bandwidth, attention timings, HNSW on CUDA.
gpu-check: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check

clean:
	rm -rf $(VENV) build *.egg-info
