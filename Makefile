# hotpath: `make dev` runs the whole stack on embedded defaults; `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

LOCK := requirements.lock

.PHONY: dev test lint bench install install-test clean readme-settings lock promtool loadtest

$(BIN)/python:
	$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "hotpath needs Python >= 3.11, found " + sys.version.split()[0]'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# Every install takes the exact versions of $(LOCK) (a pip constraints file), so a fresh machine gets what CI
# tested. The stamps make a second `make` skip the install; they are redone when pyproject.toml or the lock changes.
$(VENV)/.runtime: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e .
	touch $@

# The test environment takes the bench extra too (Pillow, the thumbnail bench's baseline) and the loadtest extra
# (Locust, matplotlib: tests/test_loadtest.py runs the short profile), so it is exactly the lock.
$(VENV)/.test: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[test,bench,loadtest]'
	touch $(VENV)/.runtime $@

# Re-resolve $(LOCK) from pyproject.toml (newest releases its ranges admit) in a throwaway venv holding only
# pip-tools, never from .venv. torch's `+cpu` label is dropped: PyPI has no such file, and `==2.13.0` still admits
# the CPU build that pip finds on this machine's disk or the Dockerfile takes from the CPU index.
# `make lock LOCK_UPGRADE=` keeps every existing pin and only adds what a new dependency needs.
PIP_TOOLS := pip==26.3 pip-tools==7.6.2
LOCK_UPGRADE ?= --upgrade
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PY) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet $(PIP_TOOLS); \
	CUSTOM_COMPILE_COMMAND="make lock" "$$tmp/venv/bin/pip-compile" --quiet $(LOCK_UPGRADE) --extra test --extra bench --extra loadtest \
	  --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  -o $(LOCK) pyproject.toml; \
	sed -i -E 's/^(torch==[^+]+)\+cpu$$/\1/' $(LOCK); \
	echo "$(LOCK) re-resolved: run make test, then commit it"

install: $(VENV)/.runtime
install-test: $(VENV)/.test

dev: install
	$(BIN)/hotpath dev

test: install-test
	$(BIN)/pytest -p no:cacheprovider

# promtool, for tests/test_monitoring.py (promtool check / test rules): Debian's prometheus package is downloaded
# and only its promtool binary unpacked into $(PROMTOOL_DIR), so nothing is installed and no Prometheus daemon starts.
# apt-get needs the package lists: as root it refreshes them when the download fails. `.ci/run` runs this target.
PROMTOOL_DIR := $(VENV)/promtool
PROMTOOL := $(PROMTOOL_DIR)/usr/bin/promtool
promtool: $(PROMTOOL)

$(PROMTOOL):
	@command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "make promtool needs apt-get and \
	dpkg-deb (Debian/Ubuntu); elsewhere set HOTPATH_PROMTOOL to a promtool binary"; exit 1; }
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if ! (cd "$$tmp" && apt-get download -q prometheus >/dev/null 2>&1); then \
	  [ "$$(id -u)" = 0 ] || { echo "apt-get download prometheus failed: run apt-get update as root, then make promtool"; exit 1; }; \
	  apt-get update -q >/dev/null; (cd "$$tmp" && apt-get download -q prometheus >/dev/null 2>&1); \
	fi; \
	mkdir -p $(PROMTOOL_DIR); \
	dpkg-deb --fsys-tarfile "$$tmp"/prometheus_*.deb | tar -x -C $(PROMTOOL_DIR) ./usr/bin/promtool; \
	echo "$$($(PROMTOOL) --version 2>&1 | head -1) in $(PROMTOOL)"

lint: install-test
	$(BIN)/ruff check .

# Load comes from wrk in a separate process (Debian: apt-get install -y wrk).
bench: install-test
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install -y wrk"; exit 1; }
	$(BIN)/python bench/json_bench.py
	$(BIN)/python bench/cache_bench.py
	$(BIN)/python bench/taskkit_bench.py
	$(BIN)/python bench/thumb_bench.py
	$(BIN)/python bench/index_bench.py

# The load and fault-injection suite (hotpath/loadtest/slo.yaml): LOADTEST_PROFILE=short (what `make test` runs) or long.
LOADTEST_PROFILE ?= long
LOADTEST_OUT ?= .hotpath/loadtest
loadtest: install-test
	$(BIN)/hotpath loadtest --profile $(LOADTEST_PROFILE) --out $(LOADTEST_OUT)

clean:
	rm -rf $(VENV) .hotpath

readme-settings: install
	$(BIN)/hotpath settings --update-readme README.md
