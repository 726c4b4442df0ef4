# The book's single entry point. `make book` builds the HTML book, `make test` runs the test suite;
# both create the virtual environment .venv (Python 3.11) and install everything on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test test-fast install bless bench lab clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/ptm build

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)  # the unit tests only: no chapter execution, book build or browser
	$(BIN)/python -m pytest -m "not slow"

bless: $(STAMP)
	$(BIN)/ptm bless

bench: $(STAMP)
	$(BIN)/ptm bench

lab: $(STAMP)  # JupyterLab at the repository root, chapters open as notebooks; e.g. make lab LAB_ARGS="--no-browser"
	$(BIN)/ptm lab $(LAB_ARGS)

clean:
	rm -rf _build .cache
