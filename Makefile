# preftune: `make demo` runs the pipeline on the built-in world, `make test` runs the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean chromium readme

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU wheel on this disk. A bare `torch` requirement would pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The labelling page's end-to-end test drives Debian's chromium (a test tool's own browser
# download fails offline). Installed when missing and possible; otherwise that test is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"

demo: $(STAMP)
	$(BIN)/preftune demo

test: $(STAMP) chromium
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## skip the slow end-to-end checks
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

readme: $(STAMP)  ## refill the README's generated blocks
	$(BIN)/python scripts/render_readme.py

bench: $(STAMP)
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
