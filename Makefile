# Loupe: `make run` sets everything up and starts the app; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint install clean

run: $(INSTALLED)
	$(BIN)/python -m chat serve

test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

install: $(INSTALLED)

$(INSTALLED): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

clean:
	rm -rf $(VENV) .files .pytest_cache .ruff_cache test-artifacts
