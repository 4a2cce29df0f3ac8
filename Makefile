# The README's commands. `make demo` and `make test` set everything up on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gazimed-setup
KERNEL := gazimed-lab
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` / `make test-fast` (0: one process). Each test file
# runs in one worker (the browser and notebook tests share one: tests/conftest.py), with one
# torch thread per worker.
TEST_WORKERS ?= 2
XDIST  := -n $(TEST_WORKERS) --dist loadfile
LAB_ARGS ?=

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
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not notebooks" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check gazimed_lab tests benchmarks

typecheck: setup
	$(BIN)/mypy gazimed_lab

# JupyterLab on 127.0.0.1 with a token (URL printed), --allow-root as root, the notebooks
# folder as root and kernel $(KERNEL) as default; LAB_ARGS e.g. "--port 8899 --no-browser".
lab: setup
	$(BIN)/python -m gazimed_lab.notebook --notebook-dir notebooks $(LAB_ARGS)

clean-cache:
	rm -rf .cache
