# Set-up is part of every target: `make test` and `make demo` build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml $(PLUGINS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned for reproducible set-up (pyproject states the supported range).  --no-compile: the
	# modules a run imports are compiled when first imported; compiling all of torch's at install
	# took about 40 of the 90 seconds its install takes here.
	$(PY) -m pip install -q --no-compile torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-compile -e '.[dev,demo]' $(foreach p,$(PLUGINS),-e ./$(dir $(p)))
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/tbhooks demo --logdir runs/demo

bench: $(STAMP)
	$(PY) -m pip install -q --no-compile -e '.[bench]'
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs
