# Two commands set up a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install the CPU build of PyTorch first, so pip never pulls CUDA wheels here.
# On a GPU machine, install the torch you want first, or run e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cmkit-installed

.PHONY: test demo install bench gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

# For iteration: everything except the tests marked slow (make test, which CI runs, includes them).
.PHONY: test-fast
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow"

demo: $(STAMP)
	$(PY) -m cmkit demo --out out/demo.png

bench: $(STAMP)
	$(PY) benchmarks/sampling_speed.py

# On a CUDA machine (with a CUDA build of torch, e.g. `make gpu-check TORCH_SPEC=torch`): parity with diffusers,
# bf16/fp16 training, torchrun + NCCL, torch.compile and sampling speed as one markdown table (sized for ~6 min on
# one H200; see docs/speed.md). Without CUDA it prints "skipped: no CUDA device" and exits 2.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache
