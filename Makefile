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
	# (no --no-compile): where PYTHONDONTWRITEBYTECODE is set, nothing is compiled later, and every
	# process would compile every module it imports from source.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# The framework adapters' extras, pinned to the versions the adapters are tested with.
	$(PY) -m pip install -q -e '.[dev,demo,lightning,ignite,transformers]' $(foreach p,$(PLUGINS),-e ./$(dir $(p))) \
		pytorch-lightning==2.6.6 pytorch-ignite==0.5.5 transformers==5.25.0 accelerate==1.16.0
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/tbhooks demo --logdir runs/demo

bench: $(STAMP)
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs
