# One command to set everything up and run the main job (`make demo`), one to
# set everything up and run the tests (`make test`). Both install into $(VENV).
PYTHON ?= python3
VENV ?= .venv
# torch is pinned to the CPU build the reference machines carry; override with
# e.g. `make TORCH=torch test` to take whatever pip resolves.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install lint test test-fast demo clean

install: $(VENV)/.installed

# fairseq's C extensions must be built against the torch in the environment,
# so torch and the build tools go in first and fairseq is built without
# build isolation (otherwise pip builds it against a second, downloaded torch).
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" cython numpy setuptools wheel
	$(BIN)/pip install --quiet --no-build-isolation -e '.[test,bench]'
	# fairseq pulls a torchaudio built for another torch; fairseq's text code
	# never imports it, but transformers (the tests' oracle) does, and fails.
	$(BIN)/pip uninstall --quiet --yes torchaudio
	$(BIN)/python -c "import fairseq, fairseq_hashee"
	touch $@

# ruff.toml: pyflakes, pycodestyle, import order and the formatter's layout.
# .importlinter: the package's layers (the core never imports tooling), checked on this
# checkout's sources whatever the environment has installed.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PYTHONPATH="$(CURDIR)" $(BIN)/lint-imports --no-cache

# Test files run side by side (pytest-xdist), one process per core up to 4; a file's tests stay
# in one process, so its module fixtures (a trained model, a comparison run) are built once.
# Files are handed out longest first (tests/conftest.py), not by their number of tests.
# Most of the suite's time is fairseq-train/-generate subprocesses, which leave a core idle.
PYTEST := $(BIN)/python -m pytest tests -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test: install lint
	$(PYTEST) --durations=20

test-fast: install
	$(PYTEST) -m "not slow"

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/sample/run.sh

clean:
	rm -rf $(VENV) build *.egg-info
