# Two commands do all the set-up on a fresh machine:
#   make run    the main job (today: the 2-D Gaussian-mixture sampler demo)
#   make test   the whole default test suite
# Both create .venv and install the project into it first; the install is skipped
# when pyproject.toml and constraints.txt have not changed since the last one.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Tests: 2 pytest workers by default (CI has 2 cores); `make test PYTEST_WORKERS=` runs in
# one process. Extra pytest arguments: `make test PYTEST_ARGS="-m slow"`.
PYTEST_WORKERS ?= -n 2
PYTEST_ARGS ?=

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[torch,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m scorediff.demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
