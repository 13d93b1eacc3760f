# Matryoshka Representation Learning: `make help` lists every target.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup data test test-readme test-multiprocess test-all test-fast lint format reproduce-table1 reproduce-paper \
	reproduce-interpolation reproduce-robustness reproduce-adaptive reproduce-novel reproduce-longtail reproduce-text reproduce-adaptor reproduce-align train aggregate clean-logs bench-retrieval mutation

help: ## list every target
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data ## create .venv with the pinned dependencies and fetch the data

WORDNET := /usr/share/wordnet/data.noun
data: ## install the embedded Fashion-MNIST and WordNet 3.0 (Debian's dataset-fashion-mnist, wordnet-base) when possible
	@for pair in "$(FMNIST) dataset-fashion-mnist" "$(WORDNET) wordnet-base"; do set -- $$pair; \
	  if [ -f $$1 ]; then echo "$$2: $$(dirname $$1)"; \
	  elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q $$2 >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q $$2 >/dev/null)) \
	    && echo "installed $$2"; \
	  else echo "$$2 not installed (apt-get install $$2): Fashion-MNIST falls back to torchvision's download; the WordNet tasks need it"; fi; \
	done

test: setup ## the test suite on 2 workers (unit + integration on real data; not the README replay, not multi-process)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not readme and not multiprocess"

test-multiprocess: setup ## DDP on 2 CPU processes, submitit sweeps, pre-emption + requeue (~7 min)
	$(PY) -m pytest -q -m multiprocess

test-all: test test-multiprocess test-readme ## all three, as CI runs them

test-readme: setup ## run every command of README.md as written (small sizes; a few minutes)
	$(PY) -m pytest -q -m readme

test-fast: $(STAMP) ## unit tests only (no training runs)
	$(PY) -m pytest -q -m "not slow and not readme and not multiprocess"

mutation: $(STAMP) ## mutation testing (mutmut) of core/nesting.py and eval/retrieval.py; survivors listed (~5 min)
	$(PY) -m pip install -q mutmut==3.8.1
	$(VENV)/bin/mutmut run --max-children 2; $(VENV)/bin/mutmut results

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

train: setup ## the default experiment: python train.py
	$(PY) train.py

DATA ?= fashion_mnist
PRESET ?=
EXPERIMENT ?= table1_$(DATA)$(if $(PRESET),_$(PRESET))
SEEDS ?= 0,1,2
ARGS ?=
reproduce-table1: setup ## Tables 1 + 2 on DATA (fashion_mnist), SEEDS (0,1,2), PRESET (full: ResNet-18, 3 epochs) -> results/
	$(PY) scripts/reproduce.py --experiment $(EXPERIMENT) --data $(DATA)$(if $(PRESET),_$(PRESET)) --seeds $(SEEDS) $(ARGS)

PAPER_ARGS ?=
reproduce-interpolation: setup ## untrained sizes 12..192 from the Table 1 runs -> results/interpolation_*
	$(PY) scripts/reproduce_paper.py --only interpolation --seeds $(SEEDS) $(PAPER_ARGS)

reproduce-robustness: setup ## Table 1 runs on a corrupted test set (5 kinds x 3 severities) -> results/robustness_*
	$(PY) scripts/reproduce_paper.py --only robustness --seeds $(SEEDS) $(PAPER_ARGS)

reproduce-adaptive: setup ## adaptive classification + funnel retrieval from the Table 1 MRL runs -> results/adaptive_*
	$(PY) scripts/reproduce_paper.py --only adaptive --seeds $(SEEDS) $(PAPER_ARGS)

reproduce-novel: setup ## trained on classes 0-4, 5-way few-shot on 5-9, MRL vs FF -> results/novel_*
	$(PY) scripts/reproduce_paper.py --only novel --seeds $(SEEDS) $(PAPER_ARGS)

reproduce-longtail: setup ## long-tailed training set (ratio 100), head/medium/tail top-1 -> results/longtail_*
	$(PY) scripts/reproduce_paper.py --only longtail --seeds $(SEEDS) $(PAPER_ARGS)

reproduce-text: setup ## MiniLM on WordNet (retrieval, classification, MLM): MRL vs FF vs truncation vs PCA, dims 12..384 -> results/text_wordnet.*
	$(PY) scripts/reproduce_text.py $(ARGS)

reproduce-adaptor: setup ## MiniLM (WordNet) + FF-512 vs MRL (Fashion-MNIST): truncation, PCA, adaptor, MRL at every prefix x precision -> results/adaptor_*
	$(PY) scripts/reproduce_adaptor.py $(ARGS)

reproduce-align: setup ## ALIGN row: MRL vs FF dual encoders (ResNet-18 + MiniLM) on Fashion-MNIST captions, + FF truncation -> results/align_fashion_mnist.*
	$(PY) scripts/reproduce_align.py $(ARGS)

reproduce-paper: reproduce-table1 ## Tables 1-2 and every experiment above, in order
	$(PY) scripts/reproduce_paper.py --seeds $(SEEDS) $(PAPER_ARGS)

aggregate: $(STAMP) ## rebuild the tables from results/runs/$(EXPERIMENT) (no training)
	$(PY) scripts/aggregate.py results/runs/$(EXPERIMENT) --data $(DATA)$(if $(PRESET),_$(PRESET)) --out results

clean-logs: ## remove logs/ (asks first)
	@read -p "delete logs/ ? [y/N] " a && [ "$$a" = y ] && rm -rf logs/ || echo kept

# ---- benchmarks (issue 5): python -m scripts.bench, rows -> results/bench.json -------------------
.PHONY: bench bench-quick bench-ddp
BENCH_ARGS ?=
bench: setup ## every benchmark (~10-20 min): measured ratios vs targets -> results/bench.json
	$(PY) -m scripts.bench --out results/bench.json $(BENCH_ARGS)

bench-quick: setup ## smaller benchmarks (< 2 min): same rows, small sizes -> results/bench.json
	$(PY) -m scripts.bench --quick --out results/bench.json $(BENCH_ARGS)
bench-retrieval: setup ## funnel retrieval Pareto (1M x 2048 synthetic + Fashion-MNIST; ~25 min the first time, ~6 min with its caches) -> results/bench.json, results/bench_retrieval.{md,png}
	$(PY) -m scripts.bench.pareto --n 1000000 $(BENCH_ARGS)

bench-ddp: setup ## 1 vs 2 CPU processes (trainer=ddp_cpu): wall-clock and metrics (~10 min)
	$(PY) -m scripts.bench --only ddp_cpu --out results/bench_ddp.json $(BENCH_ARGS)
# ---- end benchmarks ------------------------------------------------------------------------
