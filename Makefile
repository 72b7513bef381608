# One command runs the service, one runs the tests; both install what they need first.
# The virtual environment lives outside the clone, keyed by the lock file's hash, and .venv links
# to it: a fresh clone re-uses an earlier install (CI), a changed lock builds a new one.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.8
CACHE_DIR ?= $(HOME)/.cache/chatterbox-serve
LOCK_HASH := $(shell sha256sum uv.lock | cut -c1-16)
VENV_DIR := $(CACHE_DIR)/venv-$(LOCK_HASH)
UV := $(CACHE_DIR)/uv-$(UV_VERSION)/bin/uv
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_DISABLE_TELEMETRY := 1
export PYTHONPATH := $(CURDIR)

.PHONY: install run test test-fast lint manifests bench bench-batching load-test load-table clean-outputs

install: .venv/.installed-$(LOCK_HASH)

.venv/.installed-$(LOCK_HASH): uv.lock
	@mkdir -p $(CACHE_DIR)
	@test -x $(UV) || { $(PYTHON) -m venv $(CACHE_DIR)/uv-$(UV_VERSION) && $(CACHE_DIR)/uv-$(UV_VERSION)/bin/pip install -q uv==$(UV_VERSION); }
	UV_PROJECT_ENVIRONMENT=$(VENV_DIR) UV_PYTHON=$(PYTHON) $(UV) sync --frozen
	ln -sfn $(VENV_DIR) .venv
	@find $(CACHE_DIR) -maxdepth 1 -name 'venv-*' ! -name 'venv-$(LOCK_HASH)' -mtime +1 -exec rm -rf {} + 2>/dev/null || true
	touch $@

run: install  ## serve on http://127.0.0.1:$(PORT) (default 8000) with serve_config.yaml
	.venv/bin/python -m deployments.launcher $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))

test: install  ## the whole suite: unit tests, real models, the real Serve app over HTTP
	.venv/bin/python -m pytest

test-fast: install  ## unit tests only (no real models, no Ray)
	.venv/bin/python -m pytest -m "not slow"

lint: install
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

manifests: install  ## write cluster/'s Serve configs from serve_config.yaml (cluster/render_manifests.py --check compares)
	.venv/bin/python cluster/render_manifests.py

bench: install  ## benchmark tables (printed, and JSON under load_tests/reports/)
	.venv/bin/python -m load_tests.benchmark

bench-batching: install  ## batched vs unbatched Chatterbox (random checkpoint): T3 tokens/s, RTF, first audio, 8 over HTTP (~10 min)
	.venv/bin/python -m load_tests.batching_bench --http $(BENCH_ARGS)

load-test: install  ## bounded headless Locust mix against a running `make run` (127.0.0.1 only; reports in load_tests/reports/)
	.venv/bin/python -m load_tests.run_locust $(if $(PORT),--port $(PORT)) $(LOCUST_ARGS)

load-table: install  ## README load tables: deploys Piper itself, 1/2 TTS replicas x 1-8 users, then a 503 burst (~10 min)
	.venv/bin/python -m load_tests.load_table $(LOAD_TABLE_ARGS)
