# The README's commands. `make demo` and `make test` set everything up on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gazimed-setup
KERNEL := gazimed-lab
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint typecheck lab clean-cache

setup: $(STAMP)

$(STAMP): requirements-lock.txt pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "gazimed-lab needs Python >= 3.10, got " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (gazimed-lab)" >/dev/null
	touch $(STAMP)
	@echo "setup done: $(VENV) with kernel '$(KERNEL)'"

demo: setup
	$(BIN)/gazimed-lab demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not notebooks" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check gazimed_lab tests benchmarks

typecheck: setup
	$(BIN)/mypy gazimed_lab

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean-cache:
	rm -rf .cache
