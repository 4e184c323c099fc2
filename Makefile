# Two entry points (README): `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export NUMBA_CACHE_DIR := $(CURDIR)/.tmp/numba
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo lint test test-all system-tools

$(VENV)/.runtime: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt $(wildcard requirements-test-nodeps.txt)
	$(VENV)/bin/pip install -q -r requirements-test.txt
	if [ -f requirements-test-nodeps.txt ]; then $(VENV)/bin/pip install -q --no-deps -r requirements-test-nodeps.txt; fi
	touch $@

# ffprobe, espeak-ng, Chromium and Prometheus are optional (tests fall back to imageio-ffmpeg's binary; the browser
# tests of the review page and the preview, and the Prometheus scrape of a job, skip without them); install them
# where we can.
system-tools:
	@{ command -v ffprobe && command -v chromium && command -v prometheus; } >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg espeak-ng chromium prometheus >/dev/null; } || \
	  echo "note: no system ffprobe, chromium or prometheus; tests use imageio-ffmpeg's ffmpeg and skip the browser and Prometheus tests"

demo: $(VENV)/.runtime
	$(PY) cli.py run manifests/demo.parquet --output out/demo --preset tiny

# Static checks first: an undefined name on a CUDA-only line fails here, not on a user's GPU.
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

test: lint system-tools
	$(VENV)/bin/pytest -q --durations=15

test-all: lint system-tools
	$(VENV)/bin/pytest -q --durations=15 -m ""
