# The two commands a new user needs: `make run` (the app) and `make test` (the whole suite).
# Both create or reuse .venv in the project root and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup run test test-fast lint bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	# Node + @tensorflow/tfjs: the TF.js runtime that verifies exported graph models
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# The optional Ray backend's extra: `make test` installs it, since CI runs the Ray contract tests.
RAY_STAMP := $(VENV)/.installed-ray-stamp
$(RAY_STAMP): $(STAMP) requirements-ray.txt
	$(PY) -m pip install --quiet -r requirements-ray.txt -c constraints.txt
	touch $(RAY_STAMP)

setup: $(STAMP)

# The app, on the embedded sample set by default (no network needed): app_server.py serves the pages
# (streamlit_app.py) plus the route large uploads stream to disk through.
run: $(STAMP)
	$(PY) -m streamlit run app_server.py $(STREAMLIT_ARGS)

# Whole suite: fast tests plus the slow real-photo / real-weights ones.
# Debian's chromium for the end-to-end browser test (Playwright drives it; no browser download).
BROWSER_STAMP := $(VENV)/.installed-browser-stamp
$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $(BROWSER_STAMP)

test: $(STAMP) $(RAY_STAMP) $(BROWSER_STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# Fast tests only (the default while developing).
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) bench/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
