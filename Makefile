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
	# Pinned for reproducible set-up (pyproject states the supported range).  Compiled at install
	# (no --no-compile): where PYTHONDONTWRITEBYTECODE is set, as here, nothing is compiled later,
	# and every process would compile every module it imports from source (.ci/run's suite took 329 s
	# that way, 161 s compiled, for 40 s saved in torch's install).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,demo]' $(foreach p,$(PLUGINS),-e ./$(dir $(p)))
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/tbhooks demo --logdir runs/demo

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs
