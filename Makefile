# Two commands: `make run` (the full local pipeline on sample data) and `make test`.
# Both create .venv when it is missing or when constraints.txt / pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS := --ignore-requires-python --disable-pip-version-check -c constraints.txt

.PHONY: run test venv clean

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev]"
	# stardist ships the nuclei sample image; --no-deps keeps its training stack out.
	$(BIN)/pip install $(PIP_FLAGS) --no-deps stardist==0.9.2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/segbalance run

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
