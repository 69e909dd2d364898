# quantlm: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STORE ?= data/store
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: demo test test-slow lint bench install install-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned, so that pip takes the local CPU wheel instead of a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e ".[all]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/quantlm run configs/demo.yaml --store $(STORE) --out runs/demo
	$(VENV)/bin/quantlm live replay --config configs/live.yaml --store $(STORE) --from-run runs/demo \
		--start 2024-07-01 --end 2024-12-31 --out runs/demo-live

test: install-dev
	$(PY) -m pytest -n 2 -q

test-slow: install-dev
	$(PY) -m pytest -q -m slow

lint: install-dev
	$(VENV)/bin/ruff check quantlm tests benchmarks

bench: install-dev
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf data/store runs .pytest_cache
