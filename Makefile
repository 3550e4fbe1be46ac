# hotpath: `make dev` runs the whole stack on embedded defaults; `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: dev test lint bench install install-test clean readme-settings

$(BIN)/python:
	$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "hotpath needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# The stamps make a second `make` skip the install; they are redone when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.runtime $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

dev: install
	$(BIN)/hotpath dev

test: install-test
	$(BIN)/pytest -p no:cacheprovider

lint: install-test
	$(BIN)/ruff check .

# Load comes from wrk in a separate process (Debian: apt-get install -y wrk).
bench: install-test
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python bench/json_bench.py
	$(BIN)/python bench/cache_bench.py
	$(BIN)/python bench/taskkit_bench.py

clean:
	rm -rf $(VENV) .hotpath

readme-settings: install
	$(BIN)/hotpath settings --update-readme README.md
