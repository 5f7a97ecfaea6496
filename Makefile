# Two commands do all the set-up on a fresh machine:
#   make run    the main job: train a model on the built-in digits with JAX (about 4 minutes
#               on 2 CPU cores), sample it, judge it against real digits and noise, and
#               compare it with the PyTorch reference on the same weights and noise
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
# The main job: which preset, and where its run directory goes (a second `make run` resumes
# it: training is skipped when finished, the rest runs again).
PRESET  ?= digits/improved-ddpm
RUN_DIR ?= outputs/main
SCOREDIFF := $(VENV)/bin/scorediff

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[torch,dev,onednn]"
	$(PY) -m jax_impl.onednn build || echo "(JAX keeps XLA's own CPU convolutions)"
	touch $(STAMP)

run: $(STAMP)
	$(SCOREDIFF) train --preset $(PRESET) --workdir $(RUN_DIR)
	$(SCOREDIFF) sample --workdir $(RUN_DIR) --num 64 --trajectory
	$(SCOREDIFF) evaluate --workdir $(RUN_DIR)
	$(SCOREDIFF) compare --workdir $(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
