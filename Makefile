# Two commands: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs what it needs (torch 2.13.0 is the CPU wheel here).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m tilevl.cli demo

test: install
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
