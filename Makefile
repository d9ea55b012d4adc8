# Two commands on a fresh machine: `make demo` (the main job on the toy default) and `make test` (all tests).
# Both build .venv on first use; later runs only reinstall when setup.py or settings.ini changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs venv clean-venv browser

$(STAMP): setup.py settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# -qq: errors only, no flood of pip/setuptools warnings (index folders this machine lacks, editable-install notes)
	$(BIN)/python -m pip install -qq --upgrade pip
	# torch first and pinned: a looser spec would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -qq torch==2.13.0
	$(BIN)/python -m pip install -qq -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/fastvideo demo --output_dir outputs/demo

# The browser tests drive Debian's Chromium through its chromedriver: installed here when run as root (CI is), else
# the browser tests skip (and fail under CI, where CI is set).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "make: chromium and chromium-driver are missing (apt-get install them as root); the browser tests will skip"; fi; \
	fi

# The docs site into _docs/: nbdev_docs (Quarto) where Quarto is installed; else nbdev's doc processing rendered by
# nbconvert (tools/build_docs.py's fallback: the same pages in the sidebar's order, README.md as the home page).
docs: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/build_docs.py

test: $(STAMP) browser
	PATH="$(CURDIR)/$(BIN):$$PATH" bash tools/run_tests.sh

clean-venv:
	rm -rf $(VENV)
