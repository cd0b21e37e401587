# Quick start: `make demo` (offline CPU demo), `make test` (the test suite) and `make test-slow` (forgetting checks).
# Both create the virtual environment .venv from requirements.txt when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow install clean-venv

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps open-clip-torch==3.3.0  # CLIP's BPE vocabulary (random-pipeline)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m erasediff demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" tests

# the slow checks (minutes): does each method actually forget on digits? do two processes train as one?
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

clean-venv:
	rm -rf $(VENV)
