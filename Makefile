# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Train, evaluate and predict on the bundled hymenoptera sample (a few minutes on 2 CPU cores).
demo: install
	$(BIN)/imgcls demo --out runs

# The import contracts (layers point one way, no cycles) first: a broken one fails in seconds.
test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
